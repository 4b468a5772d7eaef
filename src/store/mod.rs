//! Durable records of what was issued. Every certificate's record, with the
//! exact reply it was handed out in, is committed before the reply leaves;
//! the request_id index makes retries safe; revocations feed the CRL.
//!
//! [`Store`] is the seam for storage engines; [`sql::SqlStore`] is the
//! embedded SQLite store.

pub mod schema;
pub mod sql;

use std::{collections::BTreeMap, future::Future};

use crate::audit::{AuditEntry, AuditRow};

/// A certificate record. Times are Unix seconds, except `create_time_us`
/// (microseconds: the listing order).
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

#[derive(Debug, Clone, Default)]
pub struct RequestQuery {
    /// Only this owner's requests; `None` lists everyone's (admins).
    pub owner_uid: Option<u32>,
    pub state: Option<i32>,
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
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
}

pub trait Store: Send + Sync + 'static {
    /// Commits `record` durably; concurrent inserts may share one commit.
    fn insert(&self, record: Record) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.insert_audited(record, None)
    }
    /// Says that a certificate record is on its way (its certificate is
    /// being signed); the guard withdraws the notice when dropped. The group
    /// commit uses it to wait a moment for records that are about to
    /// arrive rather than paying a commit and an fsync for each.
    fn announce_insert(&self) -> Announced {
        Announced(None)
    }
    /// Commits `record` and its audit entry in one transaction.
    fn insert_audited(
        &self,
        record: Record,
        audit: Option<AuditEntry>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Appends to the audit log (durably, before returning).
    fn audit(&self, entry: AuditEntry) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Audit records after `after_seq`, in order.
    fn audit_log(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditRow>, StoreError>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;
    /// The record of `owner_uid`'s `request_id` created at or after `since_us`.
    fn by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;
    /// Frees request ids older than `before_us`, so they may be used again.
    fn expire_request_ids(
        &self,
        before_us: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Unrevoked certificates of `owner_uid` that have not expired by `now`.
    fn count_live(
        &self,
        owner_uid: u32,
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn list(&self, q: ListQuery) -> impl Future<Output = Result<Vec<Record>, StoreError>> + Send;
    /// Sets the description (when `Some`) and merges `tags` (an empty value
    /// removes the key). Returns the updated record, `None` if unknown.
    fn update_metadata(
        &self,
        id: &str,
        description: Option<String>,
        tags: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;
    /// Marks the record revoked (keeping an earlier revocation). Returns the
    /// record, `None` if unknown.
    fn revoke(
        &self,
        id: &str,
        rev: Revocation,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;
    /// Revoked certificates that have not expired by `now`.
    fn revoked(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<Vec<RevokedEntry>, StoreError>> + Send;
    /// Adds a new certificate request. `Duplicate` if a live request has the
    /// same `dup_key`.
    fn create_request(
        &self,
        row: RequestRow,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_request(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<RequestRow>, StoreError>> + Send;
    fn request_by_dup_key(
        &self,
        dup_key: &str,
    ) -> impl Future<Output = Result<Option<RequestRow>, StoreError>> + Send;
    /// The request `owner_uid` created with `request_id` at or after `since_us`.
    fn request_by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> impl Future<Output = Result<Option<RequestRow>, StoreError>> + Send;
    /// Newest first.
    fn list_requests(
        &self,
        q: RequestQuery,
    ) -> impl Future<Output = Result<Vec<RequestRow>, StoreError>> + Send;
    /// Requests whose `due_at` is at or before `now`, earliest first;
    /// requests that have never been issued come before renewals.
    fn due_requests(
        &self,
        now: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<RequestRow>, StoreError>> + Send;
    /// The earliest `due_at` of all requests.
    fn next_due(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Applies `change` atomically. `Duplicate` if the new `dup_key` is taken
    /// by another request; `Ok(false)` if the request no longer exists.
    fn commit_request(
        &self,
        change: RequestChange,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Removes the request and revokes `revoke` (serials) in one transaction.
    /// `Ok(false)` if it did not exist.
    fn delete_request(
        &self,
        id: &str,
        revoke: Vec<String>,
        revocation: Revocation,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Times of the renewals of `names_key` at or after `since`, oldest first.
    fn renewals_since(
        &self,
        names_key: &str,
        since: i64,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;
    fn last_crl(&self) -> impl Future<Output = Result<Option<CrlRecord>, StoreError>> + Send;
    fn save_crl(&self, crl: CrlRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
}
