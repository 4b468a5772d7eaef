//! The PostgreSQL schema: versioned migrations, run at start-up. sqlx's
//! migrator takes a session advisory lock for the run, so several nodes
//! starting together migrate once and the others find the work done. A
//! database migrated by a newer hsmca is refused with both versions named:
//! this build would not know what the newer tables mean.

use sqlx::{
    PgPool, Row,
    migrate::{Migration, MigrationType, Migrator},
};

use super::{map_err, unavailable};
use crate::store::StoreError;

const MIGRATION_1: &str = "
CREATE TABLE certificates (
    id TEXT PRIMARY KEY,
    serial TEXT NOT NULL UNIQUE,
    owner_uid BIGINT NOT NULL,
    owner_gid BIGINT NOT NULL,
    owner_pid BIGINT NOT NULL,
    subject TEXT NOT NULL,
    dns_names TEXT NOT NULL,
    uri_sans TEXT NOT NULL,
    ip_addresses TEXT NOT NULL,
    profile TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    expire_time BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    revoke_time BIGINT,
    revoke_reason BIGINT,
    pem TEXT NOT NULL,
    reply BYTEA NOT NULL
);
CREATE INDEX certificates_owner_order ON certificates (owner_uid, create_time, id);
CREATE INDEX certificates_order ON certificates (create_time, id);
CREATE UNIQUE INDEX certificates_request ON certificates (owner_uid, request_id) WHERE request_id <> '';
CREATE INDEX certificates_revoked ON certificates (revoke_time) WHERE revoke_time IS NOT NULL;
CREATE INDEX certificates_live ON certificates (owner_uid, expire_time) WHERE revoke_time IS NULL;
CREATE TABLE certificate_tags (
    cert_id TEXT NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    tag_key TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (cert_id, tag_key)
);
CREATE INDEX certificate_tags_kv ON certificate_tags (tag_key, tag_value);
CREATE TABLE certificate_requests (
    id TEXT PRIMARY KEY,
    owner_uid BIGINT NOT NULL,
    owner_gid BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    dup_key TEXT NOT NULL,
    names_key TEXT NOT NULL,
    state BIGINT NOT NULL,
    due_at BIGINT,
    create_time BIGINT NOT NULL,
    resource BYTEA NOT NULL
);
CREATE UNIQUE INDEX certificate_requests_dup ON certificate_requests (dup_key);
CREATE INDEX certificate_requests_request ON certificate_requests (owner_uid, request_id) WHERE request_id <> '';
CREATE INDEX certificate_requests_owner_order ON certificate_requests (owner_uid, create_time, id);
CREATE INDEX certificate_requests_order ON certificate_requests (create_time, id);
CREATE INDEX certificate_requests_due ON certificate_requests (due_at) WHERE due_at IS NOT NULL;
CREATE TABLE renewals (
    names_key TEXT NOT NULL,
    time BIGINT NOT NULL
);
CREATE INDEX renewals_names ON renewals (names_key, time);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    entry TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- Every CRL signed, by number: one CRL per number, whichever node signed it.
CREATE TABLE crls (
    number BIGINT PRIMARY KEY,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    pem TEXT NOT NULL
);
CREATE SEQUENCE crl_number START 1;
-- Certificate requests' labels, for list filters that run in the database.
CREATE TABLE certificate_request_labels (
    request_id TEXT NOT NULL REFERENCES certificate_requests (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (request_id, key)
);
CREATE INDEX certificate_request_labels_kv ON certificate_request_labels (key, value);
-- Retention: records by expiry, audit entries by time, and where the kept
-- audit log starts once its oldest entries are cut.
CREATE INDEX certificates_expiry ON certificates (expire_time);
ALTER TABLE audit_log ADD COLUMN time_us BIGINT NOT NULL DEFAULT 0;
CREATE TABLE audit_checkpoint (
    id INT PRIMARY KEY,
    seq BIGINT NOT NULL,
    prev_hash TEXT NOT NULL
);
";

fn migrations() -> Vec<Migration> {
    vec![Migration::new(
        1,
        "certificates, requests and their labels, audit log, CRLs, retention".into(),
        MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(MIGRATION_1),
        false,
    )]
}

/// The newest schema version this build knows.
pub(super) fn known_version() -> i64 {
    migrations().iter().map(|m| m.version).max().unwrap_or(0)
}

/// The highest version applied to the database, 0 for an empty one.
async fn applied_version(pool: &PgPool) -> Result<i64, StoreError> {
    let exists: bool = sqlx::query("SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS e")
        .fetch_one(pool)
        .await
        .map_err(map_err)?
        .try_get("e")
        .map_err(super::corrupt)?;
    if !exists {
        return Ok(0);
    }
    sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(map_err)?
        .try_get("v")
        .map_err(super::corrupt)
}

/// Refuses a schema newer than this build's, then runs what is missing.
pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let known = known_version();
    let applied = applied_version(pool).await?;
    if applied > known {
        return Err(unavailable(format!(
            "state.database: the database schema is version {applied}, newer than version \
             {known}, the newest this hsmca knows; upgrade hsmca on this node (a database \
             is never migrated down)"
        )));
    }
    let migrator = Migrator::with_migrations(migrations());
    migrator
        .run(pool)
        .await
        .map_err(|e| unavailable(format!("state.database: migrating the schema: {e}")))
}
