//! The `hsmca.v1.CertificateAuthority` service: identifies the peer, hands
//! the request to the issuer, and shapes the reply.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, transport::server::UdsConnectInfo};

use super::{bounds::ConnInfo, replies};
pub use crate::peer::Peer;
use crate::{
    audit::AuditEntry,
    crl::CrlPublisher,
    issue::{
        IssueRequest, Issued, Issuer, RequestedLifetime, SERIAL_ATTEMPTS, check_description,
        check_request_id, check_tags,
    },
    keyed_locks::KeyedLocks,
    peer::identity::Identity,
    policy::{Authorizer, over_quota},
    proto::{
        ClientCertificate, DeleteClientCertificateRequest, GenerateClientCertificateRequest,
        GetCaCertificatesRequest, GetCaCertificatesResponse, GetClientCertificateRequest,
        GetCrlRequest, GetCrlResponse, ListClientCertificatesRequest,
        ListClientCertificatesResponse, UpdateClientCertificateRequest,
        certificate_authority_server::CertificateAuthority,
    },
    revocation::reason_code,
    store::{ListQuery, Record, Revocation, Store, StoreError},
    time::{unix_now, unix_us},
};

pub fn peer<T>(req: &Request<T>) -> Result<Peer, Status> {
    let ext = req.extensions();
    ext.get::<ConnInfo>()
        .map(|c| &c.uds)
        .or_else(|| ext.get::<UdsConnectInfo>())
        .and_then(|info| info.peer_cred)
        .map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        })
        .ok_or_else(|| {
            Status::unauthenticated("the caller's credentials could not be read from the socket")
        })
}

pub struct CaService {
    issuer: Arc<Issuer>,
    store: Arc<dyn Store>,
    crl: Arc<CrlPublisher>,
    retention: Duration,
    auth: Arc<Authorizer>,
    /// Serialises requests that share one (caller, request_id), so two
    /// concurrent retries produce one certificate.
    locks: KeyedLocks<(u32, String)>,
}

impl CaService {
    pub fn new(
        issuer: Arc<Issuer>,
        store: Arc<dyn Store>,
        crl: Arc<CrlPublisher>,
        retention: Duration,
        auth: Arc<Authorizer>,
    ) -> Self {
        Self {
            issuer,
            store,
            crl,
            retention,
            auth,
            locks: KeyedLocks::default(),
        }
    }
}

/// The names a one-shot request asks for, as given (a CSR's are inside it).
fn request_names(req: &GenerateClientCertificateRequest) -> Vec<String> {
    let mut names = Vec::new();
    if !req.common_name.is_empty() {
        names.push(format!("CN:{}", req.common_name));
    }
    names.extend(req.dns_names.iter().map(|n| format!("DNS:{n}")));
    names.extend(req.uri_sans.iter().map(|n| format!("URI:{n}")));
    names.extend(req.ip_addresses.iter().map(|n| format!("IP:{n}")));
    names.truncate(100);
    names
}

/// The wire request in the issuer's terms.
pub fn issue_request(req: GenerateClientCertificateRequest) -> IssueRequest {
    IssueRequest {
        profile: req.profile,
        public_key: req.public_key,
        pem_csr: req.pem_csr,
        common_name: req.common_name,
        dns_names: req.dns_names,
        uri_sans: req.uri_sans,
        ip_addresses: req.ip_addresses,
        lifetime: req.cert_duration.map(|d| RequestedLifetime {
            seconds: d.seconds,
            nanos: d.nanos,
        }),
        description: req.description,
        tags: req.tags,
        request_id: req.request_id,
    }
}

/// Records a refused request in the audit log (best effort: a refusal is
/// never turned into a different error by a store that is down, and a
/// caller refused many times a second gets a few records and a count).
pub async fn audit_refusal(
    store: &dyn Store,
    auth: &Authorizer,
    who: &Identity,
    operation: &str,
    profile: &str,
    names: Vec<String>,
    status: &Status,
) {
    let Some(skipped) = auth.audit_refusal_of(who.uid) else {
        return;
    };
    let mut e = AuditEntry::by(Some(who), operation);
    e.profile = profile.chars().take(64).collect();
    e.names = names
        .into_iter()
        .map(|n| n.chars().take(300).collect())
        .collect();
    let message: String = status.message().chars().take(500).collect();
    e.outcome = format!(
        "refused: {}: {message}",
        super::errors::code_name(status.code())
    );
    if skipped > 0 {
        e.outcome.push_str(&format!(
            " ({skipped} earlier refusals were not recorded: over the audit rate)"
        ));
    }
    if let Err(err) = store.audit(e).await {
        tracing::warn!(error = %err, "could not record a refusal in the audit log");
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("no certificate {id:?}"))
}

impl CaService {
    /// The caller's record `id` (an administrator's: anyone's); another
    /// caller's record is NOT_FOUND too, so ids cannot be probed.
    async fn owned(&self, peer: Peer, id: &str) -> Result<Record, Status> {
        match self.store.get(id).await? {
            Some(rec) if rec.owner_uid == peer.uid || self.auth.is_admin(&peer).await => Ok(rec),
            _ => Err(not_found(id)),
        }
    }

    async fn generate(
        &self,
        peer: Peer,
        req: GenerateClientCertificateRequest,
    ) -> Result<ClientCertificate, Status> {
        let who = self.auth.identify(&peer).await;
        self.auth.current().require_known(&who)?;
        let request_id = check_request_id(&req.request_id).map_err(Status::from)?;
        if request_id.is_empty() {
            return self.issue_and_record(peer, req, String::new()).await;
        }
        let fingerprint = hex::encode(Sha256::digest(req.encode_to_vec()));
        let _one_at_a_time = self.locks.lock((peer.uid, request_id.clone())).await;
        // Daemons sharing the store take turns too: the second one to get
        // here replays what the first recorded (one certificate, one signature).
        let _one_node_at_a_time = self
            .store
            .lock_across_nodes(&format!("request_id {} {request_id}", peer.uid), true)
            .await?;
        let since = unix_us(SystemTime::now() - self.retention);
        if let Some(rec) = self
            .store
            .by_request_id(peer.uid, &request_id, since)
            .await?
        {
            if rec.fingerprint != fingerprint {
                return Err(Status::already_exists(format!(
                    "request_id {request_id} was already used for a different request; use a new request_id"
                )));
            }
            tracing::info!(uid = peer.uid, request_id = %request_id, id = %rec.id, "replayed reply");
            return replies::replayed(&rec, self.issuer.ca())
                .ok_or_else(|| Status::internal("the stored reply could not be read"));
        }
        self.issue_and_record(peer, req, fingerprint).await
    }

    /// The request path: check → authorize → build and sign → record →
    /// reply. The certificate leaves only once its record is durable.
    async fn issue_and_record(
        &self,
        peer: Peer,
        req: GenerateClientCertificateRequest,
        fingerprint: String,
    ) -> Result<ClientCertificate, Status> {
        let who = self.auth.identify(&peer).await;
        let policy = self.auth.current();
        let checked = self.issuer.check_off_runtime(issue_request(req)).await?;
        let grant = policy.authorize(&who, checked.profile(), &checked.raw_names())?;
        let decided = self.issuer.decide(checked, grant.limits())?;
        policy.check_rate(&grant, &who)?;
        let _reserved = self.auth.reserve(peer.uid);
        if grant.max_live.is_some() {
            let live =
                self.store.count_live(peer.uid, unix_now()).await? + self.auth.in_flight(peer.uid);
            if let Some(e) = over_quota(&who, &grant, live) {
                return Err(e.into());
            }
        }
        // Held until the record is committed (or the request fails).
        let _announced = self.store.announce_insert();
        let mut decided = decided;
        let mut attempt = 1;
        let (issued, reply) = loop {
            let issued = self.issuer.sign(decided.clone()).await?;
            match self.record(&issued, &peer, &who, fingerprint.clone()).await {
                Err(StoreError::SerialTaken) if attempt < SERIAL_ATTEMPTS => {
                    // Signed but never handed out: on the record, then
                    // signed again under a new serial.
                    let op = "GenerateClientCertificate";
                    self.store
                        .audit(AuditEntry::discarded(&issued, Some(&who), op))
                        .await?;
                    decided.renew_serial()?;
                    attempt += 1;
                }
                r => break (issued, r?),
            }
        };
        tracing::info!(
            uid = peer.uid, gid = peer.gid, pid = peer.pid,
            user = who.user.as_deref().unwrap_or("-"),
            exe = %who.exe.as_deref().map_or_else(|| "-".into(), |e| e.display().to_string()),
            rule = %grant.rule,
            id = %issued.certificate_id,
            serial = %issued.serial_hex,
            subject = %issued.subject,
            profile = issued.profile.name(),
            "issued certificate"
        );
        Ok(reply)
    }

    /// Commits the record of `issued` with its audit entry and returns the
    /// reply it is to be handed out in.
    async fn record(
        &self,
        issued: &Issued,
        peer: &Peer,
        who: &Identity,
        fingerprint: String,
    ) -> Result<ClientCertificate, StoreError> {
        let audit = AuditEntry::issued(issued, Some(who), "GenerateClientCertificate");
        let mut record = Record::issued(issued, peer, fingerprint);
        // The reply is the record as Get would show it; a request with a
        // request_id keeps it for replays (tags and description may change
        // later, the replay must not).
        let reply = replies::to_reply(&record, self.issuer.ca(), unix_now());
        if !record.request_id.is_empty() {
            record.reply = replies::stored_reply(&reply);
        }
        match self
            .store
            .insert_audited(record.clone(), Some(audit.clone()))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Duplicate) if !record.request_id.is_empty() => {
                // An expired request_id still holds the index: free it, once.
                let cutoff = unix_us(SystemTime::now() - self.retention);
                self.store.expire_request_ids(cutoff).await?;
                self.store.insert_audited(record, Some(audit)).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(reply)
    }
}

#[tonic::async_trait]
impl CertificateAuthority for CaService {
    async fn generate_client_certificate(
        &self,
        req: Request<GenerateClientCertificateRequest>,
    ) -> Result<Response<ClientCertificate>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        let profile = req.profile.clone();
        let names = request_names(&req);
        match self.generate(peer, req).await {
            Ok(r) => {
                crate::metrics::metrics().count_issue(&profile, Ok(()));
                Ok(Response::new(r))
            }
            Err(status) => {
                crate::metrics::metrics()
                    .count_issue(&profile, Err(super::errors::code_name(status.code())));
                let who = self.auth.identify(&peer).await;
                audit_refusal(
                    self.store.as_ref(),
                    &self.auth,
                    &who,
                    "GenerateClientCertificate",
                    &profile,
                    names,
                    &status,
                )
                .await;
                tracing::info!(
                    uid = peer.uid, gid = peer.gid, pid = peer.pid,
                    user = who.user.as_deref().unwrap_or("-"),
                    exe = %who.exe.as_deref().map_or_else(|| "-".into(), |e| e.display().to_string()),
                    profile = %profile,
                    code = ?status.code(),
                    reason = status.message(),
                    "refused certificate"
                );
                Err(status)
            }
        }
    }

    async fn get_ca_certificates(
        &self,
        req: Request<GetCaCertificatesRequest>,
    ) -> Result<Response<GetCaCertificatesResponse>, Status> {
        peer(&req)?;
        let ca = self.issuer.ca();
        Ok(Response::new(GetCaCertificatesResponse {
            ca_cert: ca.root_pem.clone(),
            pem_certificate_chain: ca.chain_pem.clone(),
        }))
    }

    async fn get_client_certificate(
        &self,
        req: Request<GetClientCertificateRequest>,
    ) -> Result<Response<ClientCertificate>, Status> {
        let peer = peer(&req)?;
        let rec = self.owned(peer, &req.get_ref().certificate_id).await?;
        Ok(Response::new(replies::to_reply(
            &rec,
            self.issuer.ca(),
            unix_now(),
        )))
    }

    async fn list_client_certificates(
        &self,
        req: Request<ListClientCertificatesRequest>,
    ) -> Result<Response<ListClientCertificatesResponse>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        let (limit, after) = replies::page(req.page_size, &req.page_token)?;
        let filter = replies::parse_filter(&req.filter).map_err(Status::invalid_argument)?;
        let now = unix_now();
        let owner_uid = (!self.auth.is_admin(&peer).await).then_some(peer.uid);
        let mut recs = self
            .store
            .list(ListQuery {
                owner_uid,
                state: filter.state,
                tags: filter.tags,
                after,
                limit: limit + 1,
                now,
            })
            .await?;
        let next_page_token = if recs.len() > limit as usize {
            recs.truncate(limit as usize);
            recs.last()
                .map(|r| replies::encode_page_token(r.create_time_us, &r.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let ca = self.issuer.ca();
        Ok(Response::new(ListClientCertificatesResponse {
            client_certificates: recs.iter().map(|r| replies::to_reply(r, ca, now)).collect(),
            next_page_token,
        }))
    }

    async fn update_client_certificate(
        &self,
        req: Request<UpdateClientCertificateRequest>,
    ) -> Result<Response<ClientCertificate>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        let current = self.owned(peer, &req.certificate_id).await?;
        if let Some(d) = &req.description {
            check_description(d).map_err(Status::from)?;
        }
        // hsmca's own tags (the certificate request a certificate belongs
        // to) are neither set nor removed by clients.
        if let Some(k) = req.tags.keys().find(|k| {
            k.to_ascii_lowercase()
                .starts_with(crate::issue::RESERVED_TAG_PREFIX)
        }) {
            return Err(Status::invalid_argument(format!(
                "tag key {k:?} uses the reserved prefix {:?}",
                crate::issue::RESERVED_TAG_PREFIX
            )));
        }
        // Validate the tags as they will be after the merge.
        let mut merged: BTreeMap<String, String> = current.tags.clone();
        for (k, v) in &req.tags {
            if v.is_empty() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
        let given: BTreeMap<String, String> = req
            .tags
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_tags(&given).map_err(Status::from)?;
        if merged.len() > crate::issue::MAX_TAGS {
            return Err(Status::invalid_argument(format!(
                "the certificate would have {} tags; at most {} are allowed",
                merged.len(),
                crate::issue::MAX_TAGS
            )));
        }
        let rec = self
            .store
            .update_metadata(&req.certificate_id, req.description, req.tags)
            .await?
            .ok_or_else(|| not_found(&req.certificate_id))?;
        Ok(Response::new(replies::to_reply(
            &rec,
            self.issuer.ca(),
            unix_now(),
        )))
    }

    async fn delete_client_certificate(
        &self,
        req: Request<DeleteClientCertificateRequest>,
    ) -> Result<Response<()>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        let reason = reason_code(&req.reason).ok_or_else(|| {
            Status::invalid_argument(format!(
                "reason {:?} is unknown; use one of: {}",
                req.reason,
                crate::revocation::reason_names()
            ))
        })?;
        let rec = self.owned(peer, &req.certificate_id).await?;
        if let Some(request) = rec.tags.get(crate::requests::REQUEST_TAG) {
            return Err(Status::failed_precondition(format!(
                "certificate {} belongs to certificate request {request}: update the request with a new CSR to replace it, or delete the request to revoke it",
                rec.id
            )));
        }
        if rec.revoked.is_none() {
            self.store
                .revoke(
                    &rec.id,
                    Revocation {
                        time: unix_now(),
                        reason,
                    },
                )
                .await?
                .ok_or_else(|| not_found(&rec.id))?;
            tracing::info!(uid = peer.uid, id = %rec.id, serial = %rec.serial, reason, "revoked certificate");
            // The revocation is durable; the next CRL carries it even if
            // this publication fails (it is retried in the background).
            if let Err(e) = self.crl.publish().await {
                tracing::warn!(error = %e, "CRL publication after a revocation failed");
            }
        }
        Ok(Response::new(()))
    }

    async fn get_crl(
        &self,
        req: Request<GetCrlRequest>,
    ) -> Result<Response<GetCrlResponse>, Status> {
        peer(&req)?;
        let crl = self.crl.current().await.map_err(|e| {
            tracing::error!(error = %e, "CRL unavailable");
            Status::unavailable("the CRL cannot be produced right now; retry shortly")
        })?;
        Ok(Response::new(GetCrlResponse {
            pem_crl: crl.pem.clone(),
            this_update: Some(prost_types::Timestamp {
                seconds: crl.this_update,
                nanos: 0,
            }),
            next_update: Some(prost_types::Timestamp {
                seconds: crl.next_update,
                nanos: 0,
            }),
        }))
    }
}
