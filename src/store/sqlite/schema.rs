//! The SQLite schema: the migrations, in order, and the runner that
//! records each in `schema_migrations` (the schema version is the highest
//! recorded). Every migration runs in one transaction with its record, so a
//! store is never left half-migrated; a store whose version is newer than
//! [`LATEST`] was written by a newer hsmca and is refused.
//!
//! Stores made before the runner was ours carry sqlx's record
//! (`_sqlx_migrations`, versions 1-3); it is taken over once. Migration 4
//! leaves a row in it that older daemons do not know, so they refuse this
//! schema instead of running their migrations on it.

use std::path::Path;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{map_err, requests::insert_labels, unavailable};
use crate::{proto::CertificateRequest, store::StoreError};

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

/// Replies and request resources become BLOBs (they were base64 text, which
/// an earlier client crate needed); the tables are rebuilt with the
/// decoded values (`hsmca_unbase64`, registered for this migration).
const MIGRATION_4: &str = "
CREATE TABLE certificates_new (
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
    reply BLOB NOT NULL
);
INSERT INTO certificates_new SELECT id, serial, owner_uid, owner_gid, owner_pid, subject,
    dns_names, uri_sans, ip_addresses, profile, not_before, expire_time, create_time, request_id,
    fingerprint, description, tags, revoke_time, revoke_reason, pem, hsmca_unbase64(reply)
    FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_new RENAME TO certificates;
CREATE INDEX certificates_owner_order ON certificates (owner_uid, create_time, id);
CREATE INDEX certificates_order ON certificates (create_time, id);
CREATE UNIQUE INDEX certificates_request ON certificates (owner_uid, request_id) WHERE request_id <> '';
CREATE INDEX certificates_revoked ON certificates (revoke_time) WHERE revoke_time IS NOT NULL;
CREATE INDEX certificates_live ON certificates (owner_uid, expire_time) WHERE revoke_time IS NULL;

CREATE TABLE certificate_requests_new (
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
    resource BLOB NOT NULL
);
INSERT INTO certificate_requests_new SELECT id, owner_uid, owner_gid, request_id, fingerprint,
    dup_key, names_key, state, due_at, create_time, hsmca_unbase64(resource)
    FROM certificate_requests;
DROP TABLE certificate_requests;
ALTER TABLE certificate_requests_new RENAME TO certificate_requests;
CREATE UNIQUE INDEX certificate_requests_dup ON certificate_requests (dup_key);
CREATE INDEX certificate_requests_request ON certificate_requests (owner_uid, request_id) WHERE request_id <> '';
CREATE INDEX certificate_requests_owner_order ON certificate_requests (owner_uid, create_time, id);
CREATE INDEX certificate_requests_order ON certificate_requests (create_time, id);
CREATE INDEX certificate_requests_due ON certificate_requests (due_at) WHERE due_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);
INSERT OR IGNORE INTO _sqlx_migrations (version, description, success, checksum, execution_time)
    VALUES (4, 'later migrations are recorded in schema_migrations', TRUE, X'', 0);
";

/// Certificate requests' labels, indexed for list filters with what a
/// listing orders by (owner, creation time), so that a filtered page is a
/// walk of one index that stops at the limit; filled from the stored
/// requests ([`backfill_labels`]).
const MIGRATION_5: &str = "
CREATE TABLE certificate_request_labels (
    request_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    owner_uid BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (request_id, key)
) WITHOUT ROWID;
CREATE INDEX certificate_request_labels_kv
    ON certificate_request_labels (key, value, create_time, request_id);
CREATE INDEX certificate_request_labels_owner_kv
    ON certificate_request_labels (owner_uid, key, value, create_time, request_id);
";

/// Retention: records are found by expiry; audit entries by time, and the
/// log's kept start is recorded (the checkpoint).
const MIGRATION_6: &str = "
CREATE INDEX certificates_expiry ON certificates (expire_time);
ALTER TABLE audit_log ADD COLUMN time_us BIGINT NOT NULL DEFAULT 0;
UPDATE audit_log SET time_us = COALESCE(json_extract(entry, '$.time_us'), 0);
CREATE TABLE audit_checkpoint (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    prev_hash TEXT NOT NULL
);
";

/// The audit log keyed by its sequence number itself (`INTEGER PRIMARY
/// KEY` is the table's rowid): one B-tree per entry instead of the table
/// and an index beside it, so every certificate's commit writes one index
/// fewer. The table is copied once (minutes for tens of millions of
/// entries).
const MIGRATION_7: &str = "
CREATE TABLE audit_log_new (
    seq INTEGER PRIMARY KEY,
    entry TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    time_us BIGINT NOT NULL DEFAULT 0
);
INSERT INTO audit_log_new (seq, entry, prev_hash, hash, time_us)
    SELECT seq, entry, prev_hash, hash, time_us FROM audit_log ORDER BY seq;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;
";

/// A migration's step in Rust, after its SQL and in its transaction.
type Step = fn(&Transaction) -> Result<(), StoreError>;

/// One migration: SQL, then (optionally) a step in Rust, in one transaction.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
    then: Option<Step>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "certificates, tags and CRL",
        sql: MIGRATION_1,
        then: None,
    },
    Migration {
        version: 2,
        description: "certificate requests and renewals",
        sql: MIGRATION_2,
        then: None,
    },
    Migration {
        version: 3,
        description: "live-certificate index and audit log",
        sql: MIGRATION_3,
        then: None,
    },
    Migration {
        version: 4,
        description: "replies and request resources as BLOBs",
        sql: MIGRATION_4,
        then: None,
    },
    Migration {
        version: 5,
        description: "certificate request labels",
        sql: MIGRATION_5,
        then: Some(backfill_labels),
    },
    Migration {
        version: 6,
        description: "retention: expiry index, audit times and checkpoint",
        sql: MIGRATION_6,
        then: None,
    },
    Migration {
        version: 7,
        description: "audit log keyed by its sequence",
        sql: MIGRATION_7,
        then: None,
    },
];

/// The schema of the releases whose store was kept through sqlx (version 3).
#[cfg(test)]
pub(super) fn legacy_sql() -> String {
    [MIGRATION_1, MIGRATION_2, MIGRATION_3].concat()
}

/// The newest schema this build knows.
pub const LATEST: i64 = 7;

/// Labels of the requests stored before labels had a table of their own.
fn backfill_labels(tx: &Transaction) -> Result<(), StoreError> {
    let mut st = tx
        .prepare("SELECT id, resource FROM certificate_requests")
        .map_err(map_err)?;
    let mut rows = st.query([]).map_err(map_err)?;
    while let Some(row) = rows.next().map_err(map_err)? {
        let id: String = row.get(0).map_err(map_err)?;
        let resource: Vec<u8> = row.get(1).map_err(map_err)?;
        let r = CertificateRequest::decode(resource.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("certificate request {id}: {e}")))?;
        let labels = r
            .spec
            .map(|s| s.labels.into_iter().collect())
            .unwrap_or_default();
        insert_labels(tx, &id, &labels)?;
    }
    Ok(())
}

/// `hsmca_unbase64(text)`: the bytes of base64 text; a BLOB stays as it is.
fn register_unbase64(conn: &Connection) -> rusqlite::Result<()> {
    use base64::Engine;
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "hsmca_unbase64",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| match ctx.get_raw(0) {
            rusqlite::types::ValueRef::Text(t) => base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e))),
            rusqlite::types::ValueRef::Blob(b) => Ok(b.to_vec()),
            _ => Ok(Vec::new()),
        },
    )
}

/// The schema version recorded in the store (0: none), taking over sqlx's
/// record of versions 1-3 the first time.
fn version(tx: &Transaction) -> Result<i64, StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at BIGINT NOT NULL
        )",
    )
    .map_err(map_err)?;
    let recorded: Option<i64> = tx
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .map_err(map_err)?;
    if let Some(v) = recorded {
        return Ok(v);
    }
    let legacy: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            [],
            |r| r.get(0),
        )
        .map_err(map_err)?;
    if !legacy {
        return Ok(0);
    }
    let dirty: Option<i64> = tx
        .query_row(
            "SELECT MIN(version) FROM _sqlx_migrations WHERE NOT success",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?
        .flatten();
    if let Some(v) = dirty {
        return Err(unavailable(format!(
            "migration {v} failed half-way; restore the store from a backup"
        )));
    }
    tx.execute(
        "INSERT INTO schema_migrations (version, description, applied_at) \
         SELECT version, description, CAST(strftime('%s', installed_on) AS INTEGER) \
         FROM _sqlx_migrations WHERE success",
        [],
    )
    .map_err(map_err)?;
    tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(map_err)
}

/// Brings the store at `path` (open on `conn`) to [`LATEST`], one
/// migration per transaction; refuses a newer schema, naming both versions.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    register_unbase64(conn).map_err(map_err)?;
    let result = run(conn, path);
    let _ = conn.remove_function("hsmca_unbase64", 1);
    result
}

fn run(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    loop {
        // IMMEDIATE: a second process opening the store at the same time
        // waits here, then sees the migration done.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let current = version(&tx)?;
        if current > LATEST {
            return Err(unavailable(format!(
                "{} has schema version {current}, newer than this hsmca knows (version \
                 {LATEST}); run the hsmca that wrote it, or restore a backup made with this one",
                path.display()
            )));
        }
        let Some(m) = MIGRATIONS.iter().find(|m| m.version > current) else {
            tx.commit().map_err(map_err)?;
            return Ok(());
        };
        tx.execute_batch(m.sql).map_err(|e| {
            unavailable(format!("migration {} ({}): {e}", m.version, m.description))
        })?;
        if let Some(step) = m.then {
            step(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) \
             VALUES (?1, ?2, CAST(strftime('%s', 'now') AS INTEGER))",
            params![m.version, m.description],
        )
        .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "store migrated"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_latest() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST));
    }
}
