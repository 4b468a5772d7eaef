//! Durable records of what was issued. Every certificate's record, with the
//! exact reply it was handed out in, is committed before the reply leaves;
//! the request_id index makes retries safe; revocations feed the CRL.
//!
//! [`Store`] is the seam for storage engines; [`sqlite::SqliteStore`] is the
//! embedded SQLite store, [`postgres::PgStore`] the PostgreSQL store that
//! several daemons share. [`open`] picks one from `state.database`.

pub mod copy;
pub mod postgres;
pub mod retention;
pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::{
    audit::{AuditEntry, AuditRow},
    issue::Issued,
    peer::Peer,
    time::{unix_secs, unix_us},
};

/// Opens the store `state.database` names (SQLite in `state.dir` by
/// default). The only place that picks an engine.
pub async fn open(
    state: &crate::config::StateConfig,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    use crate::config::Database;
    let db = state
        .database()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(match db {
        Database::Sqlite => {
            std::sync::Arc::new(sqlite::SqliteStore::open_sqlite(&state.dir).await?)
        }
        Database::Postgres(url) => std::sync::Arc::new(postgres::PgStore::open(&url, state).await?),
    })
}

/// A claim on work that must happen once across the daemons sharing a
/// store (see [`CertificateStore::lock_across_nodes`]); released when
/// dropped, or by the database when the daemon holding it dies.
pub struct NodeLock(#[allow(dead_code)] Option<Box<dyn Send + Sync>>);

impl NodeLock {
    /// No claim is needed: this daemon is the store's only user.
    pub fn local() -> Self {
        Self(None)
    }

    /// A claim that lasts while `guard` lives.
    pub fn held(guard: impl Send + Sync + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }
}

/// A notice from [`Store::announce_insert`]: counted while it lives.
pub struct Announced(Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>);

impl Announced {
    pub fn counting(n: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(Some(n.clone()))
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub serial: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub owner_pid: i64,
    pub subject: String,
    pub dns_names: Vec<String>,
    pub uri_sans: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub profile: String,
    pub not_before: i64,
    pub expire_time: i64,
    pub create_time_us: i64,
    pub request_id: String,
    /// SHA-256 of the request body, to tell a retry from a different request.
    pub fingerprint: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub revoked: Option<Revocation>,
    pub pem: String,
    /// The encoded `ClientCertificate` reply, replayed byte for byte.
    pub reply: Vec<u8>,
}

impl Record {
    /// The record of a certificate just issued, owned by `owner`.
    /// `fingerprint` tells a request_id retry from a different request ("" without
    /// request_id). The reply is filled in by the caller when it keeps one.
    pub fn issued(issued: &Issued, owner: &Peer, fingerprint: String) -> Self {
        Self {
            id: issued.certificate_id.clone(),
            serial: issued.serial_hex.clone(),
            owner_uid: owner.uid,
            owner_gid: owner.gid,
            owner_pid: owner.pid.map_or(-1, i64::from),
            subject: issued.subject.clone(),
            dns_names: issued.names.dns.clone(),
            uri_sans: issued.names.uris.clone(),
            ip_addresses: issued.names.ips.iter().map(|ip| ip.to_string()).collect(),
            profile: issued.profile.name().to_owned(),
            not_before: unix_secs(issued.not_before),
            expire_time: unix_secs(issued.not_after),
            create_time_us: unix_us(issued.create_time),
            request_id: issued.request_id.clone(),
            fingerprint,
            description: issued.description.clone(),
            tags: issued.tags.clone(),
            revoked: None,
            pem: issued.pem_certificate.clone(),
            reply: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub time: i64,
    /// RFC 5280 CRLReason code.
    pub reason: i32,
}

/// One entry of the CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: String,
    pub time: i64,
    pub reason: i32,
}

/// The last CRL made, so numbering continues across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub pem: String,
}

/// A certificate request resource (the `CertificateRequests` service) as
/// stored: the resource itself, encoded as it is reported, plus the columns
/// the daemon searches by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// The Create call's request_id ("" if none) and the SHA-256 of its
    /// body, to tell a retry from a different request.
    pub request_id: String,
    pub fingerprint: String,
    /// SHA-256 over the CSR's public key and its set of names: no two live
    /// requests share one.
    pub dup_key: String,
    /// The canonical set of names: renewals are rate-limited per set.
    pub names_key: String,
    /// `CertificateRequestStatus.State` as a number.
    pub state: i32,
    /// When the background worker next has work on this request (first
    /// issue, re-issue, renewal or retry), Unix seconds; `None`: nothing.
    pub due_at: Option<i64>,
    pub create_time_us: i64,
    /// The spec's labels, kept beside the resource so that list filters
    /// run in the database (an index on key and value). Engines replace
    /// them with every create and commit, and return them on every read.
    pub labels: BTreeMap<String, String>,
    /// The encoded `CertificateRequest`.
    pub resource: Vec<u8>,
}

/// One state change of a certificate request, committed in one transaction
/// with the certificate it issued and the certificates it revoked.
#[derive(Debug, Clone)]
pub struct RequestChange {
    pub row: RequestRow,
    /// A certificate issued for the request, recorded with it.
    pub issued: Option<Record>,
    /// Certificates (by serial) that leave the request and are revoked.
    pub revoke: Vec<String>,
    pub revocation: Option<Revocation>,
    /// Counts towards the renewal rate of `row.names_key` at this time.
    pub renewal_at: Option<i64>,
}

impl RequestChange {
    /// A change of the request row alone: nothing issued or revoked.
    pub fn row_only(row: RequestRow) -> Self {
        Self {
            row,
            issued: None,
            revoke: Vec::new(),
            revocation: None,
            renewal_at: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RequestQuery {
    /// Only this owner's requests; `None` lists everyone's (admins).
    pub owner_uid: Option<u32>,
    pub state: Option<i32>,
    /// Labels (key, value) that must all match.
    pub labels: Vec<(String, String)>,
    /// Keyset cursor: requests strictly older than (create_time_us, id).
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Active,
    Revoked,
    Expired,
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this owner's records; `None` lists everyone's (admins).
    pub owner_uid: Option<u32>,
    pub state: Option<StateFilter>,
    pub tags: Vec<(String, String)>,
    /// Keyset cursor: records strictly older than (create_time_us, id).
    pub after: Option<(i64, String)>,
    pub limit: u32,
    /// "now" for telling ACTIVE from EXPIRED.
    pub now: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be written or read right now (disk full, read-only,
    /// database down). Nothing was committed.
    #[error("the certificate store is unavailable: {0}")]
    Unavailable(String),
    /// A unique key (serial, or owner + request_id) already exists.
    #[error("a record with the same key already exists")]
    Duplicate,
    /// The certificate's serial is already in the store. Nothing was
    /// committed; the caller signs the certificate again with a new serial.
    #[error("the certificate's serial is already in the store")]
    SerialTaken,
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
}

/// Certificate records: the request path's writes and reads.
#[async_trait]
pub trait CertificateStore: Send + Sync {
    /// Commits `record` durably; concurrent inserts may share one commit.
    async fn insert(&self, record: Record) -> Result<(), StoreError> {
        self.insert_audited(record, None).await
    }
    /// Says that a certificate record is on its way (its certificate is
    /// being signed); the guard withdraws the notice when dropped. The group
    /// commit uses it to wait a moment for records that are about to
    /// arrive rather than paying a commit and an fsync for each.
    fn announce_insert(&self) -> Announced {
        Announced(None)
    }
    /// Claims `key` against the other daemons sharing this store, for work
    /// that must happen once (one issue per request_id, one renewal per
    /// due time). `wait`: until the claim is free; otherwise `None` when
    /// another daemon holds it. A store with one daemon needs no claim
    /// (its callers serialize in memory).
    async fn lock_across_nodes(
        &self,
        _key: &str,
        _wait: bool,
    ) -> Result<Option<NodeLock>, StoreError> {
        Ok(Some(NodeLock::local()))
    }
    /// Whether the store can be reached, for health checks; `None`: it is
    /// embedded and always there while the daemon runs.
    fn readiness(&self) -> Option<tokio::sync::watch::Receiver<crate::signing::Readiness>> {
        None
    }
    /// Commits `record` and its audit entry in one transaction.
    async fn insert_audited(
        &self,
        record: Record,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError>;
    /// The record of `owner_uid`'s `request_id` created at or after `since_us`.
    async fn by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> Result<Option<Record>, StoreError>;
    /// Frees request ids older than `before_us`, so they may be used again.
    async fn expire_request_ids(&self, before_us: i64) -> Result<u64, StoreError>;
    /// Unrevoked certificates of `owner_uid` that have not expired by `now`.
    async fn count_live(&self, owner_uid: u32, now: i64) -> Result<u64, StoreError>;
    async fn list(&self, q: ListQuery) -> Result<Vec<Record>, StoreError>;
    /// Sets the description (when `Some`) and merges `tags` (an empty value
    /// removes the key). Returns the updated record, `None` if unknown.
    async fn update_metadata(
        &self,
        id: &str,
        description: Option<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<Option<Record>, StoreError>;
    /// Marks the record revoked (keeping an earlier revocation). Returns the
    /// record, `None` if unknown.
    async fn revoke(&self, id: &str, rev: Revocation) -> Result<Option<Record>, StoreError>;
    /// Revoked certificates that have not expired by `now`.
    async fn revoked(&self, now: i64) -> Result<Vec<RevokedEntry>, StoreError>;
    /// Retention: deletes up to `limit` records (with their tags) of
    /// certificates that expired before `expired_before` (Unix seconds),
    /// oldest first, in one short transaction; returns how many went. The
    /// caller repeats while a full batch went. An engine shared by several
    /// daemons lets one of them purge at a time (a lock taken without
    /// waiting) and returns 0 to the others.
    async fn purge_expired(&self, expired_before: i64, limit: u32) -> Result<u64, StoreError>;
}

/// Certificate request resources and their renewal bookkeeping.
#[async_trait]
pub trait RequestStore: Send + Sync {
    /// Adds a new certificate request. `Duplicate` if a live request has the
    /// same `dup_key`.
    async fn create_request(&self, row: RequestRow) -> Result<(), StoreError>;
    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError>;
    async fn request_by_dup_key(&self, dup_key: &str) -> Result<Option<RequestRow>, StoreError>;
    /// The request `owner_uid` created with `request_id` at or after `since_us`.
    async fn request_by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> Result<Option<RequestRow>, StoreError>;
    /// Newest first; the filters (owner, state, labels) apply before the
    /// cursor and the limit, so a page is full whenever more match.
    async fn list_requests(&self, q: RequestQuery) -> Result<Vec<RequestRow>, StoreError>;
    /// Requests whose `due_at` is at or before `now`, earliest first;
    /// requests that have never been issued come before renewals.
    async fn due_requests(&self, now: i64, limit: u32) -> Result<Vec<RequestRow>, StoreError>;
    /// The earliest `due_at` of all requests.
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;
    /// Applies `change` atomically. `Duplicate` if the new `dup_key` is taken
    /// by another request; `Ok(false)` if the request no longer exists.
    async fn commit_request(&self, change: RequestChange) -> Result<bool, StoreError>;
    /// Removes the request and revokes `revoke` (serials) in one transaction.
    /// `Ok(false)` if it did not exist.
    async fn delete_request(
        &self,
        id: &str,
        revoke: Vec<String>,
        revocation: Revocation,
    ) -> Result<bool, StoreError>;
    /// Times of the renewals of `names_key` at or after `since`, oldest first.
    async fn renewals_since(&self, names_key: &str, since: i64) -> Result<Vec<i64>, StoreError>;
    /// Ids of requests changed by other daemons sharing the store (and by
    /// this one), so their watchers hear of it; an empty id: changes may
    /// have been missed, look again at everything watched. `None`: this
    /// daemon makes every change itself.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}

/// The hash-chained audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends to the audit log (durably, before returning).
    async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError>;
    /// Audit records after `after_seq`, in order.
    async fn audit_log(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    /// Where the kept log starts when retention has cut it; `None` while
    /// the log is whole (it starts at seq 1 from the genesis hash).
    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError>;
    /// Retention: deletes up to `limit` of the oldest entries made before
    /// `before_us` (Unix microseconds) — only a prefix of the log, never
    /// its newest entry — and in the same transaction moves the checkpoint
    /// to the oldest entry kept. Returns how many went; like
    /// [`CertificateStore::purge_expired`], one daemon at a time on a
    /// shared engine.
    async fn cut_audit(&self, before_us: i64, limit: u32) -> Result<u64, StoreError>;
}

/// The start of an audit log that retention has cut: the oldest entry kept
/// and the hash of its (deleted) predecessor, from which the chain verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    pub seq: i64,
    pub prev_hash: String,
}

/// The last CRL signed, so numbering continues across restarts.
#[async_trait]
pub trait CrlStore: Send + Sync {
    /// The number of the next CRL to sign: never handed out twice, greater
    /// than every number before it.
    async fn next_crl_number(&self) -> Result<i64, StoreError> {
        Ok(self.last_crl().await?.map_or(1, |c| c.number + 1))
    }
    async fn last_crl(&self) -> Result<Option<CrlRecord>, StoreError>;
    async fn save_crl(&self, crl: CrlRecord) -> Result<(), StoreError>;
}

/// A storage engine: everything the daemon keeps. A backend implements the
/// four parts; services hold an `Arc<dyn Store>` and never name the engine.
pub trait Store: CertificateStore + RequestStore + AuditStore + CrlStore + 'static {}

impl<T: CertificateStore + RequestStore + AuditStore + CrlStore + 'static> Store for T {}
