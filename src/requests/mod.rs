//! Certificate requests: a CSR filed once and kept in certificates. A
//! request is PENDING until the background worker has issued for it, then
//! FINISHED, renewed while `auto_renew` holds; a failure that the owner must
//! fix makes it FAILED. Every change is committed before anyone hears of
//! it, and the work on one request is serialised by its lock, so the worker,
//! updates and watchers never see a request half-changed.

mod change;
mod create;
mod follow;
mod issuing;
pub mod spec;
pub mod watch;
mod worker;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use tokio::sync::Notify;

use self::watch::{WatchHub, WatchRequest};
use crate::{
    config::RequestsConfig,
    crl::CrlPublisher,
    issue::{IssueError, Issuer, certificate::BuildError},
    keyed_locks::KeyedLocks,
    peer::Peer,
    policy::{Authorizer, PolicyError},
    proto::{CertificateRequest, certificate_request_status::State},
    store::{NodeLock, RequestChange, RequestQuery, RequestRow, Store, StoreError},
    time::unix_now,
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

/// The spec's labels, as the store keeps them for list filters.
fn labels_of(r: &CertificateRequest) -> BTreeMap<String, String> {
    r.spec
        .as_ref()
        .map(|s| {
            s.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
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

    pub async fn get(&self, peer: Peer, id: &str) -> Result<CertificateRequest, RequestError> {
        Ok(self.visible(peer, id, true).await?.1)
    }

    /// The caller's requests (an administrator's: everyone's), newest
    /// first: up to `limit` and whether more follow. `labels` must all
    /// match; the store filters, so one query makes the page.
    pub async fn list(
        &self,
        peer: Peer,
        state: Option<State>,
        labels: &[(String, String)],
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<(Vec<(i64, CertificateRequest)>, bool), RequestError> {
        let owner_uid = (!self.auth.is_admin(&peer).await).then_some(peer.uid);
        let mut rows = self
            .store
            .list_requests(RequestQuery {
                owner_uid,
                state: state.map(|s| s as i32),
                labels: labels.to_vec(),
                after,
                limit: limit.saturating_add(1),
            })
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let page = rows
            .iter()
            .map(|row| Ok((row.create_time_us, decode(row)?)))
            .collect::<Result<_, RequestError>>()?;
        Ok((page, more))
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
        row.labels = labels_of(r);
        row.resource = r.encode_to_vec();
        let id = row.id.clone();
        let found = self
            .store
            .commit_request(RequestChange::row_only(row))
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

    /// Claims request `id` against the other daemons sharing the store
    /// (see [`crate::store::CertificateStore::lock_across_nodes`]); the
    /// caller already holds its lock in this daemon.
    async fn claim(&self, id: &str, wait: bool) -> Result<Option<NodeLock>, RequestError> {
        Ok(self
            .store
            .lock_across_nodes(&format!("certificate request {id}"), wait)
            .await?)
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
}
