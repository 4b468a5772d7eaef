//! The SQLite store. Certificate records and audit entries go through one
//! writer thread that commits them in batches (group commit, see
//! [`writer`]): every waiting insert shares the next transaction, and each
//! caller hears back only after that transaction is durable. Everything
//! else (reads, revocations, certificate requests) goes through sqlx's
//! pool. SQLite runs in WAL mode with `synchronous=FULL`, so a commit
//! survives power loss.

use std::{collections::BTreeMap, path::Path, str::FromStr, time::Duration};

use base64::Engine;
use sqlx::{
    Any, AnyPool, AssertSqlSafe, Row, Transaction,
    any::{AnyConnectOptions, AnyPoolOptions, AnyRow},
    migrate::{Migration, MigrationType, Migrator},
};
use tokio::sync::oneshot;

use super::*;
use crate::audit::{AuditEntry, AuditRow};

mod requests;
mod writer;

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

const COLUMNS: &str = "id, serial, owner_uid, owner_gid, owner_pid, subject, dns_names, uri_sans, \
    ip_addresses, profile, not_before, expire_time, create_time, request_id, fingerprint, \
    description, tags, revoke_time, revoke_reason, pem, reply";

pub struct SqlStore {
    pool: AnyPool,
    writer: flume::Sender<writer::Pending>,
    /// Certificate records announced and not yet committed.
    announced: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        return StoreError::Duplicate;
    }
    unavailable(e)
}

impl SqlStore {
    /// Opens (creating if needed) the SQLite store `state_dir/hsmca.db` and
    /// runs pending migrations.
    pub async fn open_sqlite(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", state_dir.display())))?;
        let path = state_dir.join("hsmca.db");
        let conn = writer::open(&path)?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        sqlx::any::install_default_drivers();
        let opts = AnyConnectOptions::from_str(&url).map_err(unavailable)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // WAL is already set (writer::open) and persists.
                    for pragma in [
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 5000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
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
        migrator.run(&pool).await.map_err(unavailable)?;
        let announced = std::sync::Arc::default();
        let writer = writer::start(conn, std::sync::Arc::clone(&announced))?;
        Ok(Self {
            pool,
            writer,
            announced,
        })
    }
}

/// The one INSERT of a certificate record, shared by the group-commit
/// writer (rusqlite, which binds `$N` by position) and the request path
/// (sqlx).
const INSERT_CERTIFICATE: &str = "INSERT INTO certificates (id, serial, owner_uid, owner_gid, \
     owner_pid, subject, dns_names, uri_sans, ip_addresses, profile, not_before, expire_time, \
     create_time, request_id, fingerprint, description, tags, pem, reply) VALUES ($1, $2, $3, \
     $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";
const INSERT_TAG: &str =
    "INSERT INTO certificate_tags (cert_id, tag_key, tag_value) VALUES ($1, $2, $3)";

/// The reply column: base64 of the stored reply (text, which sqlx's `Any`
/// rows can carry), empty when none is kept.
fn reply_column(reply: &[u8]) -> String {
    if reply.is_empty() {
        String::new()
    } else {
        base64::engine::general_purpose::STANDARD.encode(reply)
    }
}

/// Inserts one certificate record (and its tags) inside `tx`.
pub(super) async fn insert_record(
    tx: &mut Transaction<'_, Any>,
    r: &Record,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_CERTIFICATE)
        .bind(&r.id)
        .bind(&r.serial)
        .bind(i64::from(r.owner_uid))
        .bind(i64::from(r.owner_gid))
        .bind(r.owner_pid)
        .bind(&r.subject)
        .bind(json(&r.dns_names))
        .bind(json(&r.uri_sans))
        .bind(json(&r.ip_addresses))
        .bind(&r.profile)
        .bind(r.not_before)
        .bind(r.expire_time)
        .bind(r.create_time_us)
        .bind(&r.request_id)
        .bind(&r.fingerprint)
        .bind(&r.description)
        .bind(json(&r.tags))
        .bind(&r.pem)
        .bind(reply_column(&r.reply))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    for (k, v) in &r.tags {
        sqlx::query(INSERT_TAG)
            .bind(&r.id)
            .bind(k)
            .bind(v)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, col: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn record(row: &AnyRow) -> Result<Record, StoreError> {
    let get_s = |c: &str| {
        row.try_get::<String, _>(c)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let get_i = |c: &str| {
        row.try_get::<i64, _>(c)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let opt_i = |c: &str| {
        row.try_get::<Option<i64>, _>(c)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let revoked = match (opt_i("revoke_time")?, opt_i("revoke_reason")?) {
        (Some(time), reason) => Some(Revocation {
            time,
            reason: reason.unwrap_or(0) as i32,
        }),
        _ => None,
    };
    Ok(Record {
        id: get_s("id")?,
        serial: get_s("serial")?,
        owner_uid: get_i("owner_uid")? as u32,
        owner_gid: get_i("owner_gid")? as u32,
        owner_pid: get_i("owner_pid")?,
        subject: get_s("subject")?,
        dns_names: from_json(&get_s("dns_names")?, "dns_names")?,
        uri_sans: from_json(&get_s("uri_sans")?, "uri_sans")?,
        ip_addresses: from_json(&get_s("ip_addresses")?, "ip_addresses")?,
        profile: get_s("profile")?,
        not_before: get_i("not_before")?,
        expire_time: get_i("expire_time")?,
        create_time_us: get_i("create_time")?,
        request_id: get_s("request_id")?,
        fingerprint: get_s("fingerprint")?,
        description: get_s("description")?,
        tags: from_json(&get_s("tags")?, "tags")?,
        revoked,
        pem: get_s("pem")?,
        reply: base64::engine::general_purpose::STANDARD
            .decode(get_s("reply")?)
            .map_err(|e| StoreError::Corrupt(format!("reply: {e}")))?,
    })
}

#[async_trait]
impl CertificateStore for SqlStore {
    fn announce_insert(&self) -> Announced {
        Announced::counting(&self.announced)
    }

    async fn insert_audited(
        &self,
        record: Record,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        self.write(Some(record), audit).await
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(record).transpose()
    }

    async fn by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> Result<Option<Record>, StoreError> {
        // `request_id <> ''` repeats the partial index's condition so that
        // SQLite can use certificates_request; without it the planner walks
        // the caller's records by create_time (a scan of all of them).
        let sql = format!(
            "SELECT {COLUMNS} FROM certificates WHERE owner_uid = $1 AND request_id = $2 \
             AND request_id <> '' AND create_time >= $3"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(owner_uid))
            .bind(request_id)
            .bind(since_us)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(record).transpose()
    }

    async fn expire_request_ids(&self, before_us: i64) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE certificates SET request_id = '' WHERE request_id <> '' AND create_time < $1",
        )
        .bind(before_us)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected())
    }

    async fn count_live(&self, owner_uid: u32, now: i64) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM certificates \
             WHERE owner_uid = $1 AND revoke_time IS NULL AND expire_time > $2",
        )
        .bind(i64::from(owner_uid))
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row
            .try_get::<i64, _>("n")
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .max(0) as u64)
    }

    async fn list(&self, q: ListQuery) -> Result<Vec<Record>, StoreError> {
        // Only placeholders are spliced into the text; every value is bound.
        let mut sql = format!("SELECT {COLUMNS} FROM certificates c WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.owner_uid.is_some() {
            sql += &format!(" AND owner_uid = {}", next());
        }
        match q.state {
            Some(StateFilter::Revoked) => sql += " AND revoke_time IS NOT NULL",
            Some(StateFilter::Active) => {
                sql += &format!(" AND revoke_time IS NULL AND expire_time > {}", next())
            }
            Some(StateFilter::Expired) => {
                sql += &format!(" AND revoke_time IS NULL AND expire_time <= {}", next())
            }
            None => {}
        }
        for _ in &q.tags {
            let (k, v) = (next(), next());
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM certificate_tags t WHERE t.cert_id = c.id AND t.tag_key = {k} AND t.tag_value = {v})"
            );
        }
        if q.after.is_some() {
            let (t1, t2, i) = (next(), next(), next());
            sql += &format!(" AND (create_time < {t1} OR (create_time = {t2} AND id < {i}))");
        }
        sql += &format!(" ORDER BY create_time DESC, id DESC LIMIT {}", next());

        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(uid) = q.owner_uid {
            query = query.bind(i64::from(uid));
        }
        if matches!(q.state, Some(StateFilter::Active | StateFilter::Expired)) {
            query = query.bind(q.now);
        }
        for (k, v) in &q.tags {
            query = query.bind(k.clone()).bind(v.clone());
        }
        if let Some((t, id)) = &q.after {
            query = query.bind(*t).bind(*t).bind(id.clone());
        }
        query = query.bind(i64::from(q.limit));
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(record).collect()
    }

    async fn update_metadata(
        &self,
        id: &str,
        description: Option<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<Option<Record>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE id = $1");
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let mut rec = record(&row)?;
        if let Some(d) = description {
            rec.description = d;
        }
        for (k, v) in tags {
            if v.is_empty() {
                rec.tags.remove(&k);
                sqlx::query("DELETE FROM certificate_tags WHERE cert_id = $1 AND tag_key = $2")
                    .bind(id)
                    .bind(k)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            } else {
                sqlx::query("DELETE FROM certificate_tags WHERE cert_id = $1 AND tag_key = $2")
                    .bind(id)
                    .bind(k.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query("INSERT INTO certificate_tags (cert_id, tag_key, tag_value) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(k.clone())
                    .bind(v.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                rec.tags.insert(k, v);
            }
        }
        sqlx::query("UPDATE certificates SET description = $1, tags = $2 WHERE id = $3")
            .bind(rec.description.clone())
            .bind(json(&rec.tags))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(rec))
    }

    async fn revoke(&self, id: &str, rev: Revocation) -> Result<Option<Record>, StoreError> {
        sqlx::query(
            "UPDATE certificates SET revoke_time = $1, revoke_reason = $2 WHERE id = $3 AND revoke_time IS NULL",
        )
        .bind(rev.time)
        .bind(i64::from(rev.reason))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        self.get(id).await
    }

    async fn revoked(&self, now: i64) -> Result<Vec<RevokedEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, revoke_time, revoke_reason FROM certificates \
             WHERE revoke_time IS NOT NULL AND expire_time > $1 ORDER BY revoke_time, serial",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(RevokedEntry {
                    serial: r
                        .try_get("serial")
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    time: r
                        .try_get("revoke_time")
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    reason: r
                        .try_get::<Option<i64>, _>("revoke_reason")
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?
                        .unwrap_or(0) as i32,
                })
            })
            .collect()
    }
}

#[async_trait]
impl RequestStore for SqlStore {
    async fn create_request(&self, row: RequestRow) -> Result<(), StoreError> {
        requests::create(&self.pool, &row).await
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        requests::get_by(&self.pool, "id = $1", &[id]).await
    }

    async fn request_by_dup_key(&self, dup_key: &str) -> Result<Option<RequestRow>, StoreError> {
        requests::get_by(&self.pool, "dup_key = $1", &[dup_key]).await
    }

    async fn request_by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> Result<Option<RequestRow>, StoreError> {
        requests::by_request_id(&self.pool, owner_uid, request_id, since_us).await
    }

    async fn list_requests(&self, q: RequestQuery) -> Result<Vec<RequestRow>, StoreError> {
        requests::list(&self.pool, &q).await
    }

    async fn due_requests(&self, now: i64, limit: u32) -> Result<Vec<RequestRow>, StoreError> {
        requests::due(&self.pool, now, limit).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        requests::next_due(&self.pool).await
    }

    async fn commit_request(&self, change: RequestChange) -> Result<bool, StoreError> {
        requests::commit(&self.pool, &change).await
    }

    async fn delete_request(
        &self,
        id: &str,
        revoke: Vec<String>,
        revocation: Revocation,
    ) -> Result<bool, StoreError> {
        requests::delete(&self.pool, id, &revoke, revocation).await
    }

    async fn renewals_since(&self, names_key: &str, since: i64) -> Result<Vec<i64>, StoreError> {
        requests::renewals_since(&self.pool, names_key, since).await
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(None, Some(entry)).await
    }

    async fn audit_log(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, entry, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let c = |e: sqlx::Error| StoreError::Corrupt(format!("audit log: {e}"));
                Ok(AuditRow {
                    seq: r.try_get("seq").map_err(c)?,
                    entry: r.try_get("entry").map_err(c)?,
                    prev_hash: r.try_get("prev_hash").map_err(c)?,
                    hash: r.try_get("hash").map_err(c)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl CrlStore for SqlStore {
    async fn last_crl(&self) -> Result<Option<CrlRecord>, StoreError> {
        let row = sqlx::query("SELECT number, this_update, next_update, pem FROM crl WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| {
            let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
            Ok(CrlRecord {
                number: r.try_get("number").map_err(c)?,
                this_update: r.try_get("this_update").map_err(c)?,
                next_update: r.try_get("next_update").map_err(c)?,
                pem: r.try_get("pem").map_err(c)?,
            })
        })
        .transpose()
    }

    async fn save_crl(&self, crl: CrlRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("DELETE FROM crl WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("INSERT INTO crl (id, number, this_update, next_update, pem) VALUES (1, $1, $2, $3, $4)")
            .bind(crl.number)
            .bind(crl.this_update)
            .bind(crl.next_update)
            .bind(crl.pem)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }
}

impl SqlStore {
    async fn write(
        &self,
        record: Option<Record>,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.writer
            .send_async(writer::Pending {
                record,
                audit,
                done,
            })
            .await
            .map_err(|_| unavailable("the store writer has stopped"))?;
        rx.await
            .map_err(|_| unavailable("the store writer has stopped"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, uid: u32, t: i64, request_id: &str) -> Record {
        Record {
            id: id.into(),
            serial: format!("serial-{id}"),
            owner_uid: uid,
            owner_gid: 0,
            owner_pid: 1,
            subject: "CN=x".into(),
            dns_names: vec!["a.example".into()],
            uri_sans: vec![],
            ip_addresses: vec![],
            profile: "client".into(),
            not_before: 0,
            expire_time: 1000,
            create_time_us: t,
            request_id: request_id.into(),
            fingerprint: "fp".into(),
            description: String::new(),
            tags: BTreeMap::from([("team".to_string(), format!("t{}", t % 2))]),
            revoked: None,
            pem: "pem".into(),
            reply: vec![1, 2, 3],
        }
    }

    #[tokio::test]
    async fn insert_get_list_update_revoke_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        let inserts: Vec<_> = (0..20)
            .map(|i| store.insert(rec(&format!("id{i:02}"), if i < 15 { 7 } else { 8 }, i, "")))
            .collect();
        for r in futures_join(inserts).await {
            r.unwrap();
        }
        assert_eq!(
            store.get("id03").await.unwrap().unwrap(),
            rec("id03", 7, 3, "")
        );
        // Duplicate serial is refused.
        assert!(matches!(
            store.insert(rec("id03", 7, 3, "")).await,
            Err(StoreError::Duplicate)
        ));

        // Keyset pages, newest first, only uid 7.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list(ListQuery {
                    owner_uid: Some(7),
                    limit: 4,
                    after: after.clone(),
                    now: 0,
                    ..Default::default()
                })
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|r| (r.create_time_us, r.id.clone()));
            seen.extend(page.into_iter().map(|r| r.id));
        }
        let expected: Vec<String> = (0..15).rev().map(|i| format!("id{i:02}")).collect();
        assert_eq!(seen, expected);

        let tagged = store
            .list(ListQuery {
                owner_uid: Some(7),
                tags: vec![("team".into(), "t1".into())],
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(tagged.len(), 7);

        let updated = store
            .update_metadata(
                "id01",
                Some("described".into()),
                BTreeMap::from([
                    ("team".to_string(), String::new()),
                    ("env".to_string(), "prod".to_string()),
                ]),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.description, "described");
        assert_eq!(
            updated.tags,
            BTreeMap::from([("env".to_string(), "prod".to_string())])
        );
        assert!(
            store
                .update_metadata("nope", None, BTreeMap::new())
                .await
                .unwrap()
                .is_none()
        );

        let r = store
            .revoke(
                "id02",
                Revocation {
                    time: 50,
                    reason: 1,
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r.revoked,
            Some(Revocation {
                time: 50,
                reason: 1
            })
        );
        // A second revocation keeps the first.
        store
            .revoke(
                "id02",
                Revocation {
                    time: 60,
                    reason: 4,
                },
            )
            .await
            .unwrap();
        let revoked = store.revoked(10).await.unwrap();
        assert_eq!(
            revoked,
            vec![RevokedEntry {
                serial: "serial-id02".into(),
                time: 50,
                reason: 1
            }]
        );
        assert!(
            store.revoked(2000).await.unwrap().is_empty(),
            "expired entries leave the CRL"
        );
        let revoked_list = store
            .list(ListQuery {
                state: Some(StateFilter::Revoked),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(revoked_list.len(), 1);

        drop(store);
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        assert_eq!(
            store.get("id01").await.unwrap().unwrap().description,
            "described"
        );
    }

    #[tokio::test]
    async fn request_ids_are_unique_per_owner_until_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        store.insert(rec("a", 7, 100, "r1")).await.unwrap();
        let mut other = rec("b", 7, 200, "r1");
        other.serial = "other".into();
        assert!(matches!(
            store.insert(other.clone()).await,
            Err(StoreError::Duplicate)
        ));
        // Another owner may use the same id.
        let mut theirs = rec("c", 8, 200, "r1");
        theirs.serial = "theirs".into();
        store.insert(theirs).await.unwrap();
        assert_eq!(
            store.by_request_id(7, "r1", 0).await.unwrap().unwrap().id,
            "a"
        );
        assert!(store.by_request_id(7, "r1", 101).await.unwrap().is_none());
        assert_eq!(store.expire_request_ids(150).await.unwrap(), 1);
        store.insert(other).await.unwrap();
    }

    #[tokio::test]
    async fn crl_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        assert!(store.last_crl().await.unwrap().is_none());
        for n in 1..=2 {
            store
                .save_crl(CrlRecord {
                    number: n,
                    this_update: n,
                    next_update: n + 10,
                    pem: format!("crl{n}"),
                })
                .await
                .unwrap();
        }
        assert_eq!(store.last_crl().await.unwrap().unwrap().number, 2);
    }

    async fn futures_join<F: Future>(fs: Vec<F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
        for h in handles {
            out.push(h.await);
        }
        out
    }
}
