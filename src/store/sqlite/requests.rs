//! SQL for certificate requests. A state change, the certificate it issued
//! and the certificates it revoked are one transaction, so a watcher never
//! sees a certificate the store could lose, and a revoked certificate never
//! lingers in a request's status.

use async_trait::async_trait;
use base64::Engine;
use sqlx::{AnyPool, AssertSqlSafe, Row, any::AnyRow};

use super::{SqliteStore, certificates::insert_record, map_err};
use crate::store::{RequestChange, RequestQuery, RequestRow, RequestStore, Revocation, StoreError};

const COLUMNS: &str = "id, owner_uid, owner_gid, request_id, fingerprint, dup_key, names_key, \
    state, due_at, create_time, resource";

fn row(r: &AnyRow) -> Result<RequestRow, StoreError> {
    let corrupt = |e: sqlx::Error| StoreError::Corrupt(format!("certificate request: {e}"));
    let resource: String = r.try_get("resource").map_err(corrupt)?;
    Ok(RequestRow {
        id: r.try_get("id").map_err(corrupt)?,
        owner_uid: r.try_get::<i64, _>("owner_uid").map_err(corrupt)? as u32,
        owner_gid: r.try_get::<i64, _>("owner_gid").map_err(corrupt)? as u32,
        request_id: r.try_get("request_id").map_err(corrupt)?,
        fingerprint: r.try_get("fingerprint").map_err(corrupt)?,
        dup_key: r.try_get("dup_key").map_err(corrupt)?,
        names_key: r.try_get("names_key").map_err(corrupt)?,
        state: r.try_get::<i64, _>("state").map_err(corrupt)? as i32,
        due_at: r.try_get("due_at").map_err(corrupt)?,
        create_time_us: r.try_get("create_time").map_err(corrupt)?,
        resource: base64::engine::general_purpose::STANDARD
            .decode(resource)
            .map_err(|e| StoreError::Corrupt(format!("certificate request resource: {e}")))?,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn create(pool: &AnyPool, r: &RequestRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO certificate_requests (id, owner_uid, owner_gid, request_id, fingerprint, \
         dup_key, names_key, state, due_at, create_time, resource) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&r.id)
    .bind(i64::from(r.owner_uid))
    .bind(i64::from(r.owner_gid))
    .bind(&r.request_id)
    .bind(&r.fingerprint)
    .bind(&r.dup_key)
    .bind(&r.names_key)
    .bind(i64::from(r.state))
    .bind(r.due_at)
    .bind(r.create_time_us)
    .bind(b64(&r.resource))
    .execute(pool)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// One request by a single-column condition (`cond` uses `$1`).
async fn get_by(
    pool: &AnyPool,
    cond: &'static str,
    args: &[&str],
) -> Result<Option<RequestRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM certificate_requests WHERE {cond}");
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for a in args {
        q = q.bind(a.to_string());
    }
    let r = q.fetch_optional(pool).await.map_err(map_err)?;
    r.as_ref().map(row).transpose()
}

async fn by_request_id(
    pool: &AnyPool,
    owner_uid: u32,
    request_id: &str,
    since_us: i64,
) -> Result<Option<RequestRow>, StoreError> {
    // `request_id <> ''` lets SQLite use the partial index on
    // (owner_uid, request_id) instead of scanning the caller's requests.
    let sql = format!(
        "SELECT {COLUMNS} FROM certificate_requests \
         WHERE owner_uid = $1 AND request_id = $2 AND request_id <> '' AND create_time >= $3 \
         ORDER BY create_time DESC LIMIT 1"
    );
    let r = sqlx::query(AssertSqlSafe(sql))
        .bind(i64::from(owner_uid))
        .bind(request_id)
        .bind(since_us)
        .fetch_optional(pool)
        .await
        .map_err(map_err)?;
    r.as_ref().map(row).transpose()
}

async fn list(pool: &AnyPool, q: &RequestQuery) -> Result<Vec<RequestRow>, StoreError> {
    // Only placeholders are spliced into the text; every value is bound.
    let mut sql = format!("SELECT {COLUMNS} FROM certificate_requests WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if q.owner_uid.is_some() {
        sql += &format!(" AND owner_uid = {}", next());
    }
    if q.state.is_some() {
        sql += &format!(" AND state = {}", next());
    }
    sql += &super::newest_first_page(q.after.is_some(), &mut next);
    let mut query = sqlx::query(AssertSqlSafe(sql));
    if let Some(uid) = q.owner_uid {
        query = query.bind(i64::from(uid));
    }
    if let Some(state) = q.state {
        query = query.bind(i64::from(state));
    }
    if let Some((t, id)) = &q.after {
        query = query.bind(*t).bind(*t).bind(id.clone());
    }
    query = query.bind(i64::from(q.limit));
    let rows = query.fetch_all(pool).await.map_err(map_err)?;
    rows.iter().map(row).collect()
}

async fn due(pool: &AnyPool, now: i64, limit: u32) -> Result<Vec<RequestRow>, StoreError> {
    // First issues (and re-issues) before renewals, so a backlog of renewals
    // does not hold up a request somebody is waiting for.
    let sql = format!(
        "SELECT {COLUMNS} FROM certificate_requests WHERE due_at IS NOT NULL AND due_at <= $1 \
         ORDER BY CASE WHEN state = 1 THEN 1 ELSE 0 END, due_at LIMIT $2"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    rows.iter().map(row).collect()
}

async fn next_due(pool: &AnyPool) -> Result<Option<i64>, StoreError> {
    let r = sqlx::query("SELECT MIN(due_at) AS next FROM certificate_requests")
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    r.try_get::<Option<i64>, _>("next")
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

async fn revoke_serials(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    serials: &[String],
    rev: Revocation,
) -> Result<(), StoreError> {
    for serial in serials {
        sqlx::query(
            "UPDATE certificates SET revoke_time = $1, revoke_reason = $2 \
             WHERE serial = $3 AND revoke_time IS NULL",
        )
        .bind(rev.time)
        .bind(i64::from(rev.reason))
        .bind(serial)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

async fn commit(pool: &AnyPool, c: &RequestChange) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    let r = &c.row;
    let updated = sqlx::query(
        "UPDATE certificate_requests SET dup_key = $1, names_key = $2, state = $3, due_at = $4, \
         resource = $5 WHERE id = $6",
    )
    .bind(&r.dup_key)
    .bind(&r.names_key)
    .bind(i64::from(r.state))
    .bind(r.due_at)
    .bind(b64(&r.resource))
    .bind(&r.id)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    if let Some(rec) = &c.issued {
        insert_record(&mut tx, rec).await?;
    }
    if let Some(rev) = c.revocation {
        revoke_serials(&mut tx, &c.revoke, rev).await?;
    }
    if let Some(t) = c.renewal_at {
        sqlx::query("INSERT INTO renewals (names_key, time) VALUES ($1, $2)")
            .bind(&r.names_key)
            .bind(t)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)?;
    Ok(true)
}

async fn delete(
    pool: &AnyPool,
    id: &str,
    revoke: &[String],
    rev: Revocation,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    let deleted = sqlx::query("DELETE FROM certificate_requests WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    revoke_serials(&mut tx, revoke, rev).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(true)
}

async fn renewals_since(
    pool: &AnyPool,
    names_key: &str,
    since: i64,
) -> Result<Vec<i64>, StoreError> {
    // Entries that left the window are never counted again.
    sqlx::query("DELETE FROM renewals WHERE names_key = $1 AND time < $2")
        .bind(names_key)
        .bind(since)
        .execute(pool)
        .await
        .map_err(map_err)?;
    let rows = sqlx::query("SELECT time FROM renewals WHERE names_key = $1 ORDER BY time")
        .bind(names_key)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            r.try_get::<i64, _>("time")
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

#[async_trait]
impl RequestStore for SqliteStore {
    async fn create_request(&self, row: RequestRow) -> Result<(), StoreError> {
        create(&self.pool, &row).await
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        get_by(&self.pool, "id = $1", &[id]).await
    }

    async fn request_by_dup_key(&self, dup_key: &str) -> Result<Option<RequestRow>, StoreError> {
        get_by(&self.pool, "dup_key = $1", &[dup_key]).await
    }

    async fn request_by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> Result<Option<RequestRow>, StoreError> {
        by_request_id(&self.pool, owner_uid, request_id, since_us).await
    }

    async fn list_requests(&self, q: RequestQuery) -> Result<Vec<RequestRow>, StoreError> {
        list(&self.pool, &q).await
    }

    async fn due_requests(&self, now: i64, limit: u32) -> Result<Vec<RequestRow>, StoreError> {
        due(&self.pool, now, limit).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        next_due(&self.pool).await
    }

    async fn commit_request(&self, change: RequestChange) -> Result<bool, StoreError> {
        commit(&self.pool, &change).await
    }

    async fn delete_request(
        &self,
        id: &str,
        revoke: Vec<String>,
        revocation: Revocation,
    ) -> Result<bool, StoreError> {
        delete(&self.pool, id, &revoke, revocation).await
    }

    async fn renewals_since(&self, names_key: &str, since: i64) -> Result<Vec<i64>, StoreError> {
        renewals_since(&self.pool, names_key, since).await
    }
}
