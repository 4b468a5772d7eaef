//! Certificate records: the INSERT the writer, certificate requests and
//! `store copy` share, reading a row back into a [`Record`], and the queries behind
//! [`CertificateStore`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::{
    AssertSqlSafe, Postgres, Row, Transaction,
    postgres::{PgBindIterExt, PgRow},
};

use super::{PgStore, corrupt, map_err};
use crate::{
    audit::AuditEntry,
    store::{
        Announced, CertificateStore, ListQuery, NodeLock, Record, Revocation, RevokedEntry,
        StateFilter, StoreError,
    },
};

const COLUMNS: &str = "id, serial, owner_uid, owner_gid, owner_pid, subject, dns_names, uri_sans, \
    ip_addresses, profile, not_before, expire_time, create_time, request_id, fingerprint, \
    description, tags, revoke_time, revoke_reason, pem, reply";

/// Inserts certificate records (with their tags and any revocation)
/// inside `tx`: one statement per table whatever their number, each column
/// bound as one array and unrolled by `UNNEST`, so a group commit of many
/// records costs a few round trips, not a few per record. A unique
/// violation on any row fails the statement (and so the transaction).
pub(super) async fn insert_records(
    tx: &mut Transaction<'_, Postgres>,
    records: &[&Record],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Record) -> &str| records.iter().map(move |r| f(r)).bind_iter();
    let int = |f: fn(&Record) -> i64| records.iter().map(move |r| f(r)).bind_iter();
    sqlx::query(
        "INSERT INTO certificates (id, serial, owner_uid, owner_gid, owner_pid, subject, \
         dns_names, uri_sans, ip_addresses, profile, not_before, expire_time, create_time, \
         request_id, fingerprint, description, tags, pem, reply, revoke_time, revoke_reason) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], $12::int8[], \
         $13::int8[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], \
         $19::bytea[], $20::int8[], $21::int8[])",
    )
    .bind(col(|r| &r.id))
    .bind(col(|r| &r.serial))
    .bind(int(|r| i64::from(r.owner_uid)))
    .bind(int(|r| i64::from(r.owner_gid)))
    .bind(int(|r| r.owner_pid))
    .bind(col(|r| &r.subject))
    .bind(records.iter().map(|r| json(&r.dns_names)).bind_iter())
    .bind(records.iter().map(|r| json(&r.uri_sans)).bind_iter())
    .bind(records.iter().map(|r| json(&r.ip_addresses)).bind_iter())
    .bind(col(|r| &r.profile))
    .bind(int(|r| r.not_before))
    .bind(int(|r| r.expire_time))
    .bind(int(|r| r.create_time_us))
    .bind(col(|r| &r.request_id))
    .bind(col(|r| &r.fingerprint))
    .bind(col(|r| &r.description))
    .bind(records.iter().map(|r| json(&r.tags)).bind_iter())
    .bind(col(|r| &r.pem))
    .bind(records.iter().map(|r| r.reply.as_slice()).bind_iter())
    .bind(
        records
            .iter()
            .map(|r| r.revoked.map(|v| v.time))
            .bind_iter(),
    )
    .bind(
        records
            .iter()
            .map(|r| r.revoked.map(|v| i64::from(v.reason)))
            .bind_iter(),
    )
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    let tags = || {
        records
            .iter()
            .flat_map(|r| r.tags.iter().map(move |(k, v)| (r.id.as_str(), k, v)))
    };
    if tags().next().is_some() {
        sqlx::query(
            "INSERT INTO certificate_tags (cert_id, tag_key, tag_value) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
        )
        .bind(tags().map(|(id, _, _)| id).bind_iter())
        .bind(tags().map(|(_, k, _)| k.as_str()).bind_iter())
        .bind(tags().map(|(_, _, v)| v.as_str()).bind_iter())
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

fn record(row: &PgRow) -> Result<Record, StoreError> {
    let s = |c: &str| row.try_get::<String, _>(c).map_err(corrupt);
    let i = |c: &str| row.try_get::<i64, _>(c).map_err(corrupt);
    let oi = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(corrupt);
    let revoked = match (oi("revoke_time")?, oi("revoke_reason")?) {
        (Some(time), reason) => Some(Revocation {
            time,
            reason: reason.unwrap_or(0) as i32,
        }),
        _ => None,
    };
    Ok(Record {
        id: s("id")?,
        serial: s("serial")?,
        owner_uid: i("owner_uid")? as u32,
        owner_gid: i("owner_gid")? as u32,
        owner_pid: i("owner_pid")?,
        subject: s("subject")?,
        dns_names: from_json(&s("dns_names")?, "dns_names")?,
        uri_sans: from_json(&s("uri_sans")?, "uri_sans")?,
        ip_addresses: from_json(&s("ip_addresses")?, "ip_addresses")?,
        profile: s("profile")?,
        not_before: i("not_before")?,
        expire_time: i("expire_time")?,
        create_time_us: i("create_time")?,
        request_id: s("request_id")?,
        fingerprint: s("fingerprint")?,
        description: s("description")?,
        tags: from_json(&s("tags")?, "tags")?,
        revoked,
        pem: s("pem")?,
        reply: row.try_get::<Vec<u8>, _>("reply").map_err(corrupt)?,
    })
}

#[async_trait]
impl CertificateStore for PgStore {
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

    fn readiness(&self) -> Option<tokio::sync::watch::Receiver<crate::signing::Readiness>> {
        Some(self.ready.clone())
    }

    async fn lock_across_nodes(
        &self,
        key: &str,
        wait: bool,
    ) -> Result<Option<NodeLock>, StoreError> {
        super::locks::acquire(&self.locks, key, wait).await
    }

    async fn purge_expired(&self, expired_before: i64, limit: u32) -> Result<u64, StoreError> {
        self.purge_records(expired_before, limit).await
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
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM certificates \
             WHERE owner_uid = $1 AND revoke_time IS NULL AND expire_time > $2",
        )
        .bind(i64::from(owner_uid))
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?
        .try_get("n")
        .map_err(corrupt)?;
        Ok(n.max(0) as u64)
    }

    async fn list(&self, q: ListQuery) -> Result<Vec<Record>, StoreError> {
        // Only placeholders are spliced into the text; every value is bound.
        let mut sql = format!("SELECT {COLUMNS} FROM certificates c WHERE TRUE");
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
        sql += &super::newest_first_page(q.after.is_some(), &mut next);
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
            query = query.bind(*t).bind(id.clone());
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
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE id = $1 FOR UPDATE");
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
            sqlx::query("DELETE FROM certificate_tags WHERE cert_id = $1 AND tag_key = $2")
                .bind(id)
                .bind(&k)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            if v.is_empty() {
                rec.tags.remove(&k);
            } else {
                sqlx::query(
                    "INSERT INTO certificate_tags (cert_id, tag_key, tag_value) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(&k)
                .bind(&v)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                rec.tags.insert(k, v);
            }
        }
        sqlx::query("UPDATE certificates SET description = $1, tags = $2 WHERE id = $3")
            .bind(&rec.description)
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
            "UPDATE certificates SET revoke_time = $1, revoke_reason = $2 \
             WHERE id = $3 AND revoke_time IS NULL",
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
                    serial: r.try_get("serial").map_err(corrupt)?,
                    time: r.try_get("revoke_time").map_err(corrupt)?,
                    reason: r
                        .try_get::<Option<i64>, _>("revoke_reason")
                        .map_err(corrupt)?
                        .unwrap_or(0) as i32,
                })
            })
            .collect()
    }
}
