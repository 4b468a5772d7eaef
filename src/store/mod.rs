//! Durable records of what was issued. Every certificate's record, with the
//! exact reply it was handed out in, is committed before the reply leaves;
//! the request_id index makes retries safe; revocations feed the CRL.
//!
//! [`Store`] is the seam for storage engines; [`sql::SqlStore`] speaks SQL
//! through sqlx's `Any` driver (SQLite here, PostgreSQL behind the same
//! queries).

pub mod sql;

use std::{collections::BTreeMap, future::Future};

/// A certificate record. Times are Unix seconds, except `create_time_us`
/// (microseconds: the listing order).
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
    fn insert(&self, record: Record) -> impl Future<Output = Result<(), StoreError>> + Send;
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
    fn last_crl(&self) -> impl Future<Output = Result<Option<CrlRecord>, StoreError>> + Send;
    fn save_crl(&self, crl: CrlRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
}
