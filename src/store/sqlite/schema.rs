//! The SQLite schema: the migrations, in order. sqlx records which have
//! run (`_sqlx_migrations`), so the schema version is the highest applied.

use sqlx::{
    AnyPool,
    migrate::{Migration, MigrationType, Migrator},
};

use super::unavailable;
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
    reply TEXT NOT NULL
);
CREATE INDEX certificates_owner_order ON certificates (owner_uid, create_time, id);
CREATE INDEX certificates_order ON certificates (create_time, id);
CREATE UNIQUE INDEX certificates_request ON certificates (owner_uid, request_id) WHERE request_id <> '';
CREATE INDEX certificates_revoked ON certificates (revoke_time) WHERE revoke_time IS NOT NULL;
CREATE TABLE certificate_tags (
    cert_id TEXT NOT NULL,
    tag_key TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (cert_id, tag_key)
);
CREATE INDEX certificate_tags_kv ON certificate_tags (tag_key, tag_value);
CREATE TABLE crl (
    id BIGINT PRIMARY KEY,
    number BIGINT NOT NULL,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    pem TEXT NOT NULL
);
";

/// Certificate requests (the `CertificateRequests` service) and the
/// renewal log their rate limit counts.
const MIGRATION_2: &str = "
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
    resource TEXT NOT NULL
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
";

/// Quotas count live certificates per owner; the audit log is a hash chain.
const MIGRATION_3: &str = "
CREATE INDEX certificates_live ON certificates (owner_uid, expire_time) WHERE revoke_time IS NULL;
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    entry TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
";

/// Runs the migrations `pool`'s database has not yet had.
pub(super) async fn migrate(pool: &AnyPool) -> Result<(), StoreError> {
    let migrator = Migrator::with_migrations(vec![
        Migration::new(
            1,
            "certificates, tags and CRL".into(),
            MigrationType::Simple,
            sqlx::SqlSafeStr::into_sql_str(MIGRATION_1),
            false,
        ),
        Migration::new(
            2,
            "certificate requests and renewals".into(),
            MigrationType::Simple,
            sqlx::SqlSafeStr::into_sql_str(MIGRATION_2),
            false,
        ),
        Migration::new(
            3,
            "live-certificate index and audit log".into(),
            MigrationType::Simple,
            sqlx::SqlSafeStr::into_sql_str(MIGRATION_3),
            false,
        ),
    ]);
    migrator.run(pool).await.map_err(unavailable)
}
