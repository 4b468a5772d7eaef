//! The `hsmca.v1.CertificateAuthority` service: identifies the peer, hands
//! the request to the issuer, and shapes the reply.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, transport::server::UdsConnectInfo};

use super::{
    bounds::ConnInfo,
    records::{self, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE},
};
pub use crate::peer::Peer;
use crate::{
    crl::{CrlPublisher, reason_code, unix_now},
    issue::{Issuer, check_description, check_request_id, check_tags},
    keyed_locks::KeyedLocks,
    proto::{
        ClientCertificate, DeleteClientCertificateRequest, GenerateClientCertificateRequest,
        GetCaCertificatesRequest, GetCaCertificatesResponse, GetClientCertificateRequest,
        GetCrlRequest, GetCrlResponse, ListClientCertificatesRequest,
        ListClientCertificatesResponse, UpdateClientCertificateRequest,
        certificate_authority_server::CertificateAuthority,
    },
    signing::DigestSigner,
    store::{ListQuery, Record, Revocation, Store, StoreError},
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

pub struct CaService<S, St> {
    issuer: Arc<Issuer<S>>,
    store: Arc<St>,
    crl: Arc<CrlPublisher<S, St>>,
    retention: Duration,
    /// Serialises requests that share one (caller, request_id), so two
    /// concurrent retries produce one certificate.
    locks: KeyedLocks<(u32, String)>,
}

impl<S, St> CaService<S, St> {
    pub fn new(
        issuer: Arc<Issuer<S>>,
        store: Arc<St>,
        crl: Arc<CrlPublisher<S, St>>,
        retention: Duration,
    ) -> Self {
        Self {
            issuer,
            store,
            crl,
            retention,
            locks: KeyedLocks::default(),
        }
    }
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("no certificate {id:?}"))
}

impl<S: DigestSigner + 'static, St: Store> CaService<S, St> {
    /// The caller's record `id`; another caller's record is NOT_FOUND too,
    /// so ids cannot be probed.
    async fn owned(&self, peer: Peer, id: &str) -> Result<Record, Status> {
        match self.store.get(id).await? {
            Some(rec) if rec.owner_uid == peer.uid => Ok(rec),
            _ => Err(not_found(id)),
        }
    }

    async fn generate(
        &self,
        peer: Peer,
        req: GenerateClientCertificateRequest,
    ) -> Result<ClientCertificate, Status> {
        let request_id = check_request_id(&req.request_id).map_err(Status::from)?;
        if request_id.is_empty() {
            return self.issue_and_record(peer, req, String::new()).await;
        }
        let fingerprint = hex::encode(Sha256::digest(req.encode_to_vec()));
        let _one_at_a_time = self.locks.lock((peer.uid, request_id.clone())).await;
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
            return ClientCertificate::decode(rec.reply.as_slice())
                .map_err(|_| Status::internal("the stored reply could not be read"));
        }
        self.issue_and_record(peer, req, fingerprint).await
    }

    async fn issue_and_record(
        &self,
        peer: Peer,
        req: GenerateClientCertificateRequest,
        fingerprint: String,
    ) -> Result<ClientCertificate, Status> {
        let issued = self.issuer.issue(req).await?;
        let mut record = issued.to_record(&peer, fingerprint);
        // The reply is the record as Get would show it, kept byte for byte
        // for request_id replays.
        let reply = records::to_reply(&record, self.issuer.ca(), unix_now());
        record.reply = reply.encode_to_vec();
        match self.store.insert(record.clone()).await {
            Ok(()) => {}
            Err(StoreError::Duplicate) if !record.request_id.is_empty() => {
                // An expired request_id still holds the index: free it, once.
                let cutoff = unix_us(SystemTime::now() - self.retention);
                self.store.expire_request_ids(cutoff).await?;
                self.store.insert(record).await?;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            uid = peer.uid, gid = peer.gid, pid = peer.pid,
            id = %issued.certificate_id,
            serial = %issued.serial_hex,
            subject = %issued.subject,
            profile = issued.profile.name(),
            "issued certificate"
        );
        Ok(reply)
    }
}

#[tonic::async_trait]
impl<S: DigestSigner + 'static, St: Store> CertificateAuthority for CaService<S, St> {
    async fn generate_client_certificate(
        &self,
        req: Request<GenerateClientCertificateRequest>,
    ) -> Result<Response<ClientCertificate>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        let profile = req.profile.clone();
        match self.generate(peer, req).await {
            Ok(r) => {
                crate::metrics::metrics().count_issue(&profile, Ok(()));
                Ok(Response::new(r))
            }
            Err(status) => {
                crate::metrics::metrics().count_issue(&profile, Err(status.code()));
                tracing::info!(
                    uid = peer.uid, gid = peer.gid, pid = peer.pid,
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
        Ok(Response::new(records::to_reply(
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
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(Status::invalid_argument("page_size must not be negative")),
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(records::decode_page_token(&req.page_token).ok_or_else(|| {
                Status::invalid_argument("page_token is malformed; pass next_page_token from the previous reply unchanged")
            })?)
        };
        let filter = records::parse_filter(&req.filter).map_err(Status::invalid_argument)?;
        let now = unix_now();
        let mut recs = self
            .store
            .list(ListQuery {
                owner_uid: Some(peer.uid),
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
                .map(|r| records::encode_page_token(r.create_time_us, &r.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let ca = self.issuer.ca();
        Ok(Response::new(ListClientCertificatesResponse {
            client_certificates: recs.iter().map(|r| records::to_reply(r, ca, now)).collect(),
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
        Ok(Response::new(records::to_reply(
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
                crate::crl::REASONS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let rec = self.owned(peer, &req.certificate_id).await?;
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
