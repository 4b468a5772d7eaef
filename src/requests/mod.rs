//! Certificate requests: a CSR filed once and kept in certificates. A
//! request is PENDING until the background worker has issued for it, then
//! FINISHED, renewed while `auto_renew` holds; a failure that the owner must
//! fix makes it FAILED. Every change is committed before anyone hears of
//! it, and the work on one request is serialised by its lock, so the worker,
//! updates and watchers never see a request half-changed.

pub mod spec;
pub mod watch;
mod worker;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use self::watch::{WatchHub, WatchRequest};
use crate::{
    audit::AuditEntry,
    config::RequestsConfig,
    crl::CrlPublisher,
    issue::{IssueError, Issuer, certificate::BuildError, check_request_id},
    keyed_locks::KeyedLocks,
    peer::Peer,
    policy::{Authorizer, PolicyError, over_quota},
    proto::{
        CertificateRequest, CertificateRequestSpec, CertificateRequestStatus,
        CreateCertificateRequestRequest, IssuedCertificate, certificate_request_status::State,
    },
    store::{Record, RequestChange, RequestQuery, RequestRow, Revocation, Store, StoreError},
    time::{rfc3339_secs, timestamp, timestamp_secs, unix_now, unix_secs, unix_us},
};

/// Tag on the certificate records a request's certificates get, naming the
/// request.
pub const REQUEST_TAG: &str = "hsmca:certificate-request";

/// RFC 5280 reasons for the revocations requests make.
const SUPERSEDED: i32 = 4;
const CESSATION_OF_OPERATION: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The spec or CSR is wrong, as a one-shot issue would say.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The policy refuses the caller this request.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Invalid(String),
    /// Unknown, deleted, or somebody else's.
    #[error("no certificate request {0:?}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::Invalid(msg.into())
}

pub struct Requests {
    auth: Arc<Authorizer>,
    issuer: Arc<Issuer>,
    store: Arc<dyn Store>,
    crl: Arc<CrlPublisher>,
    cfg: RequestsConfig,
    retention: Duration,
    /// notBefore is this far before the issue time.
    backdate: Duration,
    hub: Arc<WatchHub>,
    /// One change at a time per request id.
    ids: KeyedLocks<String>,
    /// One Create at a time per (caller, request_id).
    creates: KeyedLocks<(u32, String)>,
    /// Tells the worker that something may be due.
    wake: Notify,
    /// Requests whose last attempt failed on the store, and when to try
    /// them again (the store could not record the retry time itself).
    backoff: Mutex<HashMap<String, i64>>,
}

fn decode(row: &RequestRow) -> Result<CertificateRequest, RequestError> {
    CertificateRequest::decode(row.resource.as_slice()).map_err(|e| {
        RequestError::Store(StoreError::Corrupt(format!(
            "certificate request {}: {e}",
            row.id
        )))
    })
}

fn state_of(r: &CertificateRequest) -> State {
    r.status.as_ref().map_or(State::Pending, |s| s.state())
}

fn auto_renew(r: &CertificateRequest) -> bool {
    r.spec.as_ref().and_then(|s| s.auto_renew).unwrap_or(true)
}

/// The names of a `names_key`, for messages.
fn names_text(names_key: &str) -> String {
    names_key.split('\n').collect::<Vec<_>>().join(", ")
}

/// Whether the failure can pass by itself (the token or store was
/// unavailable), so the work is retried rather than the request failed.
fn passes(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::Issue(IssueError::Build(BuildError::Sign(_)))
    )
}

impl Requests {
    pub fn new(
        auth: Arc<Authorizer>,
        issuer: Arc<Issuer>,
        store: Arc<dyn Store>,
        crl: Arc<CrlPublisher>,
        cfg: RequestsConfig,
        retention: Duration,
        backdate: Duration,
    ) -> Self {
        Self {
            auth,
            issuer,
            store,
            crl,
            cfg,
            retention,
            backdate,
            hub: Arc::new(WatchHub::default()),
            ids: KeyedLocks::default(),
            creates: KeyedLocks::default(),
            wake: Notify::new(),
            backoff: Mutex::new(HashMap::new()),
        }
    }

    pub async fn identify(&self, peer: &Peer) -> crate::peer::identity::Identity {
        self.auth.identify(peer).await
    }

    pub fn auth(&self) -> &Authorizer {
        &self.auth
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The caller's request `id` (with `admin_too`, an administrator's:
    /// anyone's); another caller's is NOT_FOUND too, so ids cannot be
    /// probed.
    async fn visible(
        &self,
        peer: Peer,
        id: &str,
        admin_too: bool,
    ) -> Result<(RequestRow, CertificateRequest), RequestError> {
        match self.store.get_request(id).await? {
            Some(row)
                if row.owner_uid == peer.uid || (admin_too && self.auth.is_admin(&peer).await) =>
            {
                let r = decode(&row)?;
                Ok((row, r))
            }
            _ => Err(RequestError::NotFound(id.to_owned())),
        }
    }

    /// The caller's own request `id`.
    async fn owned(
        &self,
        peer: Peer,
        id: &str,
    ) -> Result<(RequestRow, CertificateRequest), RequestError> {
        match self.store.get_request(id).await? {
            Some(row) if row.owner_uid == peer.uid => {
                let r = decode(&row)?;
                Ok((row, r))
            }
            _ => Err(RequestError::NotFound(id.to_owned())),
        }
    }

    fn duplicate(&self, peer: Peer, existing: &RequestRow) -> RequestError {
        let whose = if existing.owner_uid == peer.uid {
            format!(" (request {})", existing.id)
        } else {
            String::new()
        };
        RequestError::AlreadyExists(format!(
            "a live certificate request{whose} already has this key and these names: {}; \
             update or delete it, or use a new key",
            names_text(&existing.names_key)
        ))
    }

    pub async fn create(
        &self,
        peer: Peer,
        req: CreateCertificateRequestRequest,
    ) -> Result<CertificateRequest, RequestError> {
        let request_id = check_request_id(&req.request_id)?;
        let given = req
            .spec
            .as_ref()
            .ok_or_else(|| invalid("spec is required"))?;
        if given.rotate_keys {
            return Err(invalid(
                "spec.rotate_keys is set by RotateKeys on an existing request, not at creation",
            ));
        }
        let who = self.auth.identify(&peer).await;
        let policy = self.auth.current();
        policy.require_known(&who)?;
        let fingerprint = hex::encode(Sha256::digest(req.encode_to_vec()));
        let _one_at_a_time = if request_id.is_empty() {
            None
        } else {
            Some(self.creates.lock((peer.uid, request_id.clone())).await)
        };
        if !request_id.is_empty() {
            let since_us = unix_us(SystemTime::now() - self.retention);
            if let Some(row) = self
                .store
                .request_by_request_id(peer.uid, &request_id, since_us)
                .await?
            {
                if row.fingerprint != fingerprint {
                    return Err(RequestError::AlreadyExists(format!(
                        "request_id {request_id} was already used for a different request; use a new request_id"
                    )));
                }
                // A retry: the request as it is now, whatever the rate.
                return decode(&row);
            }
        }
        let (checked, grant) = spec::check(&self.issuer, given, &policy, &who)?;
        policy.check_rate(&grant, &who)?;
        if grant.max_live.is_some() {
            // Requests not yet issued for will each hold a certificate.
            let pending = self
                .store
                .list_requests(RequestQuery {
                    owner_uid: Some(peer.uid),
                    state: Some(State::Pending as i32),
                    after: None,
                    limit: u32::try_from(grant.max_live.unwrap_or(0)).unwrap_or(u32::MAX),
                })
                .await?
                .len() as u64;
            let live = self.store.count_live(peer.uid, unix_now()).await? + pending;
            if let Some(e) = over_quota(&who, &grant, live) {
                return Err(e.into());
            }
        }
        if let Some(existing) = self.store.request_by_dup_key(&checked.dup_key).await? {
            return Err(self.duplicate(peer, &existing));
        }
        let now = SystemTime::now();
        let resource = CertificateRequest {
            // Time-ordered (UUIDv7): new rows append to the id index
            // instead of landing on a random page of it.
            id: uuid::Uuid::now_v7().to_string(),
            generation: 1,
            spec: Some(checked.spec),
            status: Some(CertificateRequestStatus {
                observed_generation: 0,
                state: State::Pending as i32,
                ..Default::default()
            }),
            create_time: Some(timestamp(now)),
            update_time: Some(timestamp(now)),
        };
        let row = RequestRow {
            id: resource.id.clone(),
            owner_uid: peer.uid,
            owner_gid: peer.gid,
            request_id,
            fingerprint,
            dup_key: checked.dup_key,
            names_key: checked.names_key,
            state: State::Pending as i32,
            due_at: Some(unix_now()),
            create_time_us: unix_us(now),
            resource: resource.encode_to_vec(),
        };
        match self.store.create_request(row.clone()).await {
            Ok(()) => {}
            Err(StoreError::Duplicate) => {
                // Another Create with the same key and names won the race.
                return Err(match self.store.request_by_dup_key(&row.dup_key).await? {
                    Some(existing) => self.duplicate(peer, &existing),
                    None => RequestError::AlreadyExists(
                        "a certificate request with this key and names was created at the same time"
                            .into(),
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            uid = peer.uid, gid = peer.gid, pid = peer.pid,
            id = %resource.id,
            names = %names_text(&row.names_key),
            "created certificate request"
        );
        self.wake.notify_one();
        Ok(resource)
    }

    pub async fn get(&self, peer: Peer, id: &str) -> Result<CertificateRequest, RequestError> {
        Ok(self.visible(peer, id, true).await?.1)
    }

    /// The caller's requests, newest first: up to `limit` and whether more
    /// follow. `labels` must all match.
    pub async fn list(
        &self,
        peer: Peer,
        state: Option<State>,
        labels: &[(String, String)],
        mut after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<(Vec<(i64, CertificateRequest)>, bool), RequestError> {
        let mut out = Vec::new();
        loop {
            let rows = self
                .store
                .list_requests(RequestQuery {
                    owner_uid: (!self.auth.is_admin(&peer).await).then_some(peer.uid),
                    state: state.map(|s| s as i32),
                    after: after.clone(),
                    limit: limit + 1,
                })
                .await?;
            let exhausted = rows.len() <= limit as usize;
            for row in &rows {
                after = Some((row.create_time_us, row.id.clone()));
                let r = decode(row)?;
                let spec_labels = r.spec.as_ref().map(|s| &s.labels);
                if labels
                    .iter()
                    .all(|(k, v)| spec_labels.and_then(|l| l.get(k)) == Some(v))
                {
                    if out.len() == limit as usize {
                        return Ok((out, true));
                    }
                    out.push((row.create_time_us, r));
                }
            }
            if exhausted {
                return Ok((out, false));
            }
        }
    }

    /// When the worker next has work on `r`, as it stands.
    fn due_at(&self, r: &CertificateRequest, now: i64) -> Option<i64> {
        match state_of(r) {
            State::Pending => Some(now),
            State::Failed => None,
            State::Finished if !auto_renew(r) => None,
            State::Finished => {
                let last = r.status.as_ref()?.certificates.last()?;
                let not_before = last.not_before.as_ref()?.seconds;
                let not_after = last.expire_time.as_ref()?.seconds;
                let issued = (not_before + self.backdate.as_secs() as i64).min(not_after);
                Some(self.renew_point(issued, not_after))
            }
        }
    }

    /// `renew_after` of the way from `issued` to `not_after`.
    fn renew_point(&self, issued: i64, not_after: i64) -> i64 {
        let life = (not_after - issued).max(0) as f64;
        issued + ((life * self.cfg.renew_after).ceil() as i64).max(1)
    }

    /// Commits `r` as `row` (without a certificate) and tells its watchers.
    async fn save(
        &self,
        mut row: RequestRow,
        r: &CertificateRequest,
        due_at: Option<i64>,
    ) -> Result<(), RequestError> {
        row.state = state_of(r) as i32;
        row.due_at = due_at;
        row.resource = r.encode_to_vec();
        let id = row.id.clone();
        let found = self
            .store
            .commit_request(RequestChange {
                row,
                issued: None,
                revoke: Vec::new(),
                revocation: None,
                renewal_at: None,
            })
            .await?;
        if !found {
            return Err(RequestError::NotFound(id));
        }
        self.hub.publish(r);
        if due_at.is_some_and(|d| d <= unix_now()) {
            self.wake.notify_one();
        }
        Ok(())
    }

    pub async fn update(
        &self,
        peer: Peer,
        id: &str,
        given: Option<CertificateRequestSpec>,
    ) -> Result<CertificateRequest, RequestError> {
        let given = given.ok_or_else(|| invalid("spec is required: set the fields to change"))?;
        if given.rotate_keys {
            return Err(invalid(
                "spec.rotate_keys is set by RotateKeys; an update with a new CSR clears it",
            ));
        }
        let _locked = self.ids.lock(id.to_owned()).await;
        let (mut row, mut r) = self.owned(peer, id).await?;
        let old = r.spec.clone().unwrap_or_default();
        let mut new = old.clone();
        let csr_changed = !given.pem_csr.trim().is_empty() && given.pem_csr != old.pem_csr;
        if csr_changed {
            new.pem_csr = given.pem_csr;
        }
        if !given.profile.is_empty() {
            new.profile = given.profile;
        }
        if given.cert_duration.is_some() {
            new.cert_duration = given.cert_duration;
        }
        if given.auto_renew.is_some() {
            new.auto_renew = given.auto_renew;
        }
        if !given.description.is_empty() {
            new.description = given.description;
        }
        if !given.labels.is_empty() {
            new.labels = given.labels;
        }
        if new == old {
            return Ok(r);
        }
        let who = self.auth.identify(&peer).await;
        let policy = self.auth.current();
        let (checked, grant) = spec::check(&self.issuer, &new, &policy, &who)?;
        if csr_changed || state_of(&r) == State::Failed {
            // This update signs again: it takes from the caller's rate.
            policy.check_rate(&grant, &who)?;
        }
        let mut new = checked.spec;
        if csr_changed {
            if old.rotate_keys {
                let old_key = crate::issue::csr::parse_and_verify(&old.pem_csr)
                    .ok()
                    .and_then(|v| der::Encode::to_der(&v.csr.info.public_key).ok());
                if old_key.as_deref() == Some(checked.spki.as_slice()) {
                    return Err(invalid(
                        "rotate_keys is set: the new CSR must carry a new key, not the one being rotated",
                    ));
                }
            }
            if checked.dup_key != row.dup_key
                && let Some(existing) = self.store.request_by_dup_key(&checked.dup_key).await?
            {
                return Err(self.duplicate(peer, &existing));
            }
            new.rotate_keys = false;
            row.dup_key = checked.dup_key;
            row.names_key = checked.names_key;
        }
        let now = unix_now();
        let was_failed = state_of(&r) == State::Failed;
        let status = r.status.get_or_insert_default();
        let up_to_date = status.observed_generation == r.generation;
        r.generation += 1;
        r.spec = Some(new);
        r.update_time = Some(timestamp(SystemTime::now()));
        if csr_changed || was_failed {
            // A new key, or another try at what failed: issue again.
            status.state = State::Pending as i32;
            status.error.clear();
        } else if up_to_date {
            status.observed_generation = r.generation;
        }
        let due = self.due_at(&r, now);
        let renamed = csr_changed;
        match self.save(row, &r, due).await {
            Err(RequestError::Store(StoreError::Duplicate)) if renamed => {
                Err(RequestError::AlreadyExists(
                    "a live certificate request already has this key and these names".into(),
                ))
            }
            Err(e) => Err(e),
            Ok(()) => {
                tracing::info!(uid = peer.uid, id = %r.id, generation = r.generation, new_csr = csr_changed, "updated certificate request");
                Ok(r)
            }
        }
    }

    pub async fn rotate_keys(
        &self,
        peer: Peer,
        id: &str,
    ) -> Result<CertificateRequest, RequestError> {
        let _locked = self.ids.lock(id.to_owned()).await;
        let (row, mut r) = self.visible(peer, id, true).await?;
        if state_of(&r) == State::Failed {
            return Err(RequestError::Precondition(format!(
                "certificate request {id} has FAILED, so it has no certificate whose key could rotate; \
                 update it with a new CSR instead"
            )));
        }
        let spec = r.spec.get_or_insert_default();
        if spec.rotate_keys {
            return Ok(r);
        }
        spec.rotate_keys = true;
        let status = r.status.get_or_insert_default();
        let up_to_date = status.observed_generation == r.generation;
        r.generation += 1;
        if up_to_date {
            status.observed_generation = r.generation;
        }
        r.update_time = Some(timestamp(SystemTime::now()));
        let due = row.due_at;
        self.save(row, &r, due).await?;
        tracing::info!(uid = peer.uid, id = %r.id, "asked for key rotation");
        Ok(r)
    }

    pub async fn delete(&self, peer: Peer, id: &str) -> Result<(), RequestError> {
        let who = self.auth.identify(&peer).await;
        if !self.auth.current().is_admin(&who) {
            return Err(PolicyError::Denied(format!(
                "deleting a certificate request is for administrators, and {} is not one",
                who.describe()
            ))
            .into());
        }
        let _locked = self.ids.lock(id.to_owned()).await;
        let (_, r) = self.visible(peer, id, true).await?;
        let serials: Vec<String> = r
            .status
            .as_ref()
            .map(|s| {
                s.certificates
                    .iter()
                    .map(|c| c.serial_number.clone())
                    .collect()
            })
            .unwrap_or_default();
        let rev = Revocation {
            time: unix_now(),
            reason: CESSATION_OF_OPERATION,
        };
        if !self.store.delete_request(id, serials.clone(), rev).await? {
            return Err(RequestError::NotFound(id.to_owned()));
        }
        self.hub.close(id);
        tracing::info!(
            uid = peer.uid,
            id,
            revoked = serials.len(),
            "deleted certificate request"
        );
        if !serials.is_empty() {
            self.publish_crl().await;
        }
        Ok(())
    }

    pub async fn watch(&self, peer: Peer, id: &str) -> Result<WatchRequest, RequestError> {
        let _locked = self.ids.lock(id.to_owned()).await;
        let (_, r) = self.visible(peer, id, true).await?;
        Ok(self.hub.subscribe(r))
    }

    /// Requests with watchers (tests and metrics).
    pub fn watched(&self) -> usize {
        self.hub.watched()
    }

    async fn publish_crl(&self) {
        // The revocations are durable; the next CRL carries them even if
        // this publication fails (it is retried in the background).
        if let Err(e) = self.crl.publish().await {
            tracing::warn!(error = %e, "CRL publication after a revocation failed");
        }
    }

    /// Does whatever is due on request `id`: the first issue, a re-issue
    /// after a new CSR, or a renewal.
    async fn process(&self, id: &str) -> Result<(), RequestError> {
        let _locked = self.ids.lock(id.to_owned()).await;
        let Some(mut row) = self.store.get_request(id).await? else {
            return Ok(());
        };
        let now = unix_now();
        if row.due_at.is_none_or(|d| d > now) {
            return Ok(());
        }
        let mut r = decode(&row)?;
        let renewal = match state_of(&r) {
            State::Pending => false,
            State::Finished if auto_renew(&r) => true,
            _ => {
                let due = self.due_at(&r, now);
                row.state = state_of(&r) as i32;
                row.due_at = due;
                self.store
                    .commit_request(RequestChange {
                        row,
                        issued: None,
                        revoke: Vec::new(),
                        revocation: None,
                        renewal_at: None,
                    })
                    .await?;
                return Ok(());
            }
        };
        if renewal && let Some(retry) = self.renewal_deferred(&row, now).await? {
            let limit = self.cfg.renewal_limit;
            let window = humantime::format_duration(self.cfg.renewal_window);
            let error = format!(
                "renewal deferred: {} already had {limit} renewals in the last {window} \
                 (requests.renewal_limit); next attempt at {}",
                names_text(&row.names_key),
                rfc3339_secs(retry)
            );
            tracing::warn!(id, names = %names_text(&row.names_key), retry = %rfc3339_secs(retry), "renewal deferred by the rate limit");
            let status = r.status.get_or_insert_default();
            if status.error != error {
                status.error = error;
                r.update_time = Some(timestamp(SystemTime::now()));
            }
            return self.save(row, &r, Some(retry)).await;
        }

        let spec = r.spec.clone().unwrap_or_default();
        // The policy in force now decides, for the owner as the user
        // database knows it now.
        let who = self
            .auth
            .identify(&Peer {
                uid: row.owner_uid,
                gid: row.owner_gid,
                pid: None,
            })
            .await;
        let policy = self.auth.current();
        let outcome = match spec::decide(&self.issuer, &spec, &policy, &who) {
            Ok((decided, _)) => self.issuer.sign(decided).await.map_err(RequestError::from),
            Err(e) => Err(e),
        };
        let mut issued = match outcome {
            Ok(issued) => issued,
            Err(e) if passes(&e) => {
                let retry = now + self.cfg.retry_after.as_secs() as i64;
                tracing::warn!(id, error = %e, "issuing for a certificate request failed; will retry");
                let status = r.status.get_or_insert_default();
                status.error = format!(
                    "the HSM could not sign just now; retrying at {}",
                    rfc3339_secs(retry)
                );
                r.update_time = Some(timestamp(SystemTime::now()));
                return self.save(row, &r, Some(retry)).await;
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "certificate request failed");
                let mut entry = AuditEntry::by(
                    Some(&who),
                    if renewal {
                        "renewal"
                    } else {
                        "certificate request"
                    },
                );
                entry.profile = spec.profile.clone();
                entry.names = row.names_key.split('\n').map(str::to_owned).collect();
                entry.outcome = format!("refused: {e}");
                self.store.audit(entry).await?;
                let status = r.status.get_or_insert_default();
                status.state = State::Failed as i32;
                status.error = format!("{e}; update the request to fix this");
                status.observed_generation = r.generation;
                r.update_time = Some(timestamp(SystemTime::now()));
                return self.save(row, &r, None).await;
            }
        };

        issued.tags = BTreeMap::from([(REQUEST_TAG.to_owned(), id.to_owned())]);
        // The token has signed: that is on the record before anything else.
        self.store
            .audit(AuditEntry::issued(
                &issued,
                Some(&who),
                if renewal {
                    "renewal"
                } else {
                    "certificate request"
                },
            ))
            .await?;
        let owner = Peer {
            uid: row.owner_uid,
            gid: row.owner_gid,
            pid: None,
        };
        let record = Record::issued(&issued, &owner, String::new());
        let status = r.status.get_or_insert_default();
        let reissue = status.state() == State::Pending;
        // A new CSR replaces every earlier certificate; expired ones leave.
        let revoke: Vec<String> = if reissue {
            status
                .certificates
                .drain(..)
                .map(|c| c.serial_number)
                .collect()
        } else {
            Vec::new()
        };
        status
            .certificates
            .retain(|c| c.expire_time.as_ref().is_none_or(|t| t.seconds > now));
        status.certificates.push(IssuedCertificate {
            pem_certificate: record.pem.clone(),
            serial_number: record.serial.clone(),
            not_before: Some(timestamp_secs(record.not_before)),
            expire_time: Some(timestamp_secs(record.expire_time)),
        });
        status.signed_certificate = record.pem.clone();
        status.signing_root_ca = self.issuer.ca().root_pem.clone();
        status.state = State::Finished as i32;
        status.error.clear();
        status.observed_generation = r.generation;
        r.update_time = Some(timestamp(SystemTime::now()));
        let issued_at = unix_secs(issued.create_time);
        row.state = State::Finished as i32;
        row.due_at = auto_renew(&r).then(|| self.renew_point(issued_at, record.expire_time));
        row.resource = r.encode_to_vec();
        let serial = record.serial.clone();
        let revoked = revoke.len();
        let found = self
            .store
            .commit_request(RequestChange {
                row,
                issued: Some(record),
                revoke,
                revocation: (revoked > 0).then_some(Revocation {
                    time: now,
                    reason: SUPERSEDED,
                }),
                // Re-issues count towards the names' limit too, so that
                // alternating CSRs cannot sign without bound.
                renewal_at: (renewal || revoked > 0).then_some(now),
            })
            .await?;
        if !found {
            return Ok(());
        }
        tracing::info!(
            id,
            serial = %serial,
            generation = r.generation,
            renewal,
            revoked,
            "issued for certificate request"
        );
        self.hub.publish(&r);
        if revoked > 0 {
            self.publish_crl().await;
        }
        Ok(())
    }

    /// `Some(when to try again)` if the names of `row` are at their renewal
    /// limit.
    async fn renewal_deferred(
        &self,
        row: &RequestRow,
        now: i64,
    ) -> Result<Option<i64>, RequestError> {
        let window = self.cfg.renewal_window.as_secs().max(1) as i64;
        let limit = self.cfg.renewal_limit as usize;
        let times = self
            .store
            .renewals_since(&row.names_key, now - window + 1)
            .await?;
        if times.len() < limit {
            return Ok(None);
        }
        // The renewal that has to leave the window before another fits.
        let oldest = times[times.len() - limit];
        Ok(Some((oldest + window).max(now + 1)))
    }
}
