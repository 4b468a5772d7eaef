//! Certificate requests. A state change, the certificate it issued and the
//! certificates it revoked are one transaction, which also announces the
//! change (NOTIFY, delivered at commit) to the watchers on every node.

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row, Transaction, postgres::PgRow};

use super::{PgStore, certificates::insert_records, corrupt, map_err, notify::CHANNEL};
use crate::store::{RequestChange, RequestQuery, RequestRow, RequestStore, Revocation, StoreError};

/// The columns [`row`] reads, the labels as one JSON object.
const COLUMNS: &str = "id, owner_uid, owner_gid, request_id, fingerprint, dup_key, names_key, \
    state, due_at, create_time, resource, \
    (SELECT COALESCE(json_object_agg(l.key, l.value), '{}'::json)::text \
     FROM certificate_request_labels l WHERE l.request_id = certificate_requests.id) AS labels";

fn row(r: &PgRow) -> Result<RequestRow, StoreError> {
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
        resource: r.try_get("resource").map_err(corrupt)?,
        labels: serde_json::from_str(&r.try_get::<String, _>("labels").map_err(corrupt)?)
            .map_err(|e| StoreError::Corrupt(format!("certificate request labels: {e}")))?,
    })
}

/// Adds `labels` to request `id`.
pub(super) async fn insert_labels(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), StoreError> {
    for (k, v) in labels {
        sqlx::query(
            "INSERT INTO certificate_request_labels (request_id, key, value) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(k)
        .bind(v)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

async fn announce(tx: &mut Transaction<'_, Postgres>, id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn get_by(
    pool: &PgPool,
    cond: &'static str,
    arg: &str,
) -> Result<Option<RequestRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM certificate_requests WHERE {cond}");
    let r = sqlx::query(AssertSqlSafe(sql))
        .bind(arg)
        .fetch_optional(pool)
        .await
        .map_err(map_err)?;
    r.as_ref().map(row).transpose()
}

async fn revoke_serials(
    tx: &mut Transaction<'_, Postgres>,
    serials: &[String],
    rev: Revocation,
) -> Result<(), StoreError> {
    if serials.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE certificates SET revoke_time = $1, revoke_reason = $2 \
         WHERE serial = ANY($3) AND revoke_time IS NULL",
    )
    .bind(rev.time)
    .bind(i64::from(rev.reason))
    .bind(serials)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl RequestStore for PgStore {
    async fn create_request(&self, r: RequestRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
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
        .bind(&r.resource)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_labels(&mut tx, &r.id, &r.labels).await?;
        // The other nodes' workers hear of new work at once.
        announce(&mut tx, &r.id).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        get_by(&self.pool, "id = $1", id).await
    }

    async fn request_by_dup_key(&self, dup_key: &str) -> Result<Option<RequestRow>, StoreError> {
        get_by(&self.pool, "dup_key = $1", dup_key).await
    }

    async fn request_by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> Result<Option<RequestRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM certificate_requests \
             WHERE owner_uid = $1 AND request_id = $2 AND request_id <> '' AND create_time >= $3 \
             ORDER BY create_time DESC LIMIT 1"
        );
        let r = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(owner_uid))
            .bind(request_id)
            .bind(since_us)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        r.as_ref().map(row).transpose()
    }

    async fn list_requests(&self, q: RequestQuery) -> Result<Vec<RequestRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM certificate_requests WHERE TRUE");
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
        for _ in &q.labels {
            let (k, v) = (next(), next());
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM certificate_request_labels f WHERE \
                 f.request_id = certificate_requests.id AND f.key = {k} AND f.value = {v})"
            );
        }
        sql += &super::newest_first_page(q.after.is_some(), &mut next);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(uid) = q.owner_uid {
            query = query.bind(i64::from(uid));
        }
        if let Some(state) = q.state {
            query = query.bind(i64::from(state));
        }
        for (k, v) in &q.labels {
            query = query.bind(k.clone()).bind(v.clone());
        }
        if let Some((t, id)) = &q.after {
            query = query.bind(*t).bind(id.clone());
        }
        query = query.bind(i64::from(q.limit));
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(row).collect()
    }

    async fn due_requests(&self, now: i64, limit: u32) -> Result<Vec<RequestRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM certificate_requests WHERE due_at IS NOT NULL AND due_at <= $1 \
             ORDER BY CASE WHEN state = 1 THEN 1 ELSE 0 END, due_at LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(row).collect()
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query("SELECT MIN(due_at) AS next FROM certificate_requests")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?
            .try_get::<Option<i64>, _>("next")
            .map_err(corrupt)
    }

    async fn commit_request(&self, c: RequestChange) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let r = &c.row;
        let updated = sqlx::query(
            "UPDATE certificate_requests SET dup_key = $1, names_key = $2, state = $3, \
             due_at = $4, resource = $5 WHERE id = $6",
        )
        .bind(&r.dup_key)
        .bind(&r.names_key)
        .bind(i64::from(r.state))
        .bind(r.due_at)
        .bind(&r.resource)
        .bind(&r.id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM certificate_request_labels WHERE request_id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_labels(&mut tx, &r.id, &r.labels).await?;
        if let Some(rec) = &c.issued {
            insert_records(&mut tx, &[rec]).await?;
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
        announce(&mut tx, &r.id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn delete_request(
        &self,
        id: &str,
        revoke: Vec<String>,
        rev: Revocation,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let deleted = sqlx::query("DELETE FROM certificate_requests WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        revoke_serials(&mut tx, &revoke, rev).await?;
        announce(&mut tx, id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn renewals_since(&self, names_key: &str, since: i64) -> Result<Vec<i64>, StoreError> {
        sqlx::query("DELETE FROM renewals WHERE names_key = $1 AND time < $2")
            .bind(names_key)
            .bind(since)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        let rows = sqlx::query("SELECT time FROM renewals WHERE names_key = $1 ORDER BY time")
            .bind(names_key)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("time").map_err(corrupt))
            .collect()
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.changes.subscribe())
    }
}
