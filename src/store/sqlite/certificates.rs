//! Certificate records: the INSERT the writer and the request path share,
//! reading a row back into a [`Record`], and the queries behind
//! [`CertificateStore`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{Connection, Row, params, params_from_iter, types::Value};

use super::{SqliteStore, map_err};
use crate::{
    audit::AuditEntry,
    store::{
        Announced, CertificateStore, ListQuery, Record, Revocation, RevokedEntry, StateFilter,
        StoreError,
    },
};

const COLUMNS: &str = "id, serial, owner_uid, owner_gid, owner_pid, subject, dns_names, uri_sans, \
    ip_addresses, profile, not_before, expire_time, create_time, request_id, fingerprint, \
    description, tags, revoke_time, revoke_reason, pem, reply";

/// Inserts one certificate record (and its tags) inside the transaction
/// `tx` (the writer's batch, or a certificate request's change).
pub(super) fn insert_record(tx: &Connection, r: &Record) -> Result<(), StoreError> {
    let mut cert = tx
        .prepare_cached(
            "INSERT INTO certificates (id, serial, owner_uid, owner_gid, owner_pid, subject, \
             dns_names, uri_sans, ip_addresses, profile, not_before, expire_time, create_time, \
             request_id, fingerprint, description, tags, pem, reply) VALUES (?1, ?2, ?3, ?4, \
             ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )
        .map_err(map_err)?;
    cert.execute(params![
        r.id,
        r.serial,
        r.owner_uid,
        r.owner_gid,
        r.owner_pid,
        r.subject,
        json(&r.dns_names),
        json(&r.uri_sans),
        json(&r.ip_addresses),
        r.profile,
        r.not_before,
        r.expire_time,
        r.create_time_us,
        r.request_id,
        r.fingerprint,
        r.description,
        json(&r.tags),
        r.pem,
        r.reply,
    ])
    .map_err(map_err)?;
    let mut tag = tx
        .prepare_cached(
            "INSERT INTO certificate_tags (cert_id, tag_key, tag_value) VALUES (?1, ?2, ?3)",
        )
        .map_err(map_err)?;
    for (k, v) in &r.tags {
        tag.execute(params![r.id, k, v]).map_err(map_err)?;
    }
    Ok(())
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, col: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

/// A row of [`COLUMNS`], in that order.
fn record(row: &Row) -> rusqlite::Result<Result<Record, StoreError>> {
    let revoked = match (
        row.get::<_, Option<i64>>(17)?,
        row.get::<_, Option<i64>>(18)?,
    ) {
        (Some(time), reason) => Some(Revocation {
            time,
            reason: reason.unwrap_or(0) as i32,
        }),
        _ => None,
    };
    let (dns, uris, ips, tags): (String, String, String, String) =
        (row.get(6)?, row.get(7)?, row.get(8)?, row.get(16)?);
    let rec = |dns_names, uri_sans, ip_addresses, tags| -> rusqlite::Result<Record> {
        Ok(Record {
            id: row.get(0)?,
            serial: row.get(1)?,
            owner_uid: row.get(2)?,
            owner_gid: row.get(3)?,
            owner_pid: row.get(4)?,
            subject: row.get(5)?,
            dns_names,
            uri_sans,
            ip_addresses,
            profile: row.get(9)?,
            not_before: row.get(10)?,
            expire_time: row.get(11)?,
            create_time_us: row.get(12)?,
            request_id: row.get(13)?,
            fingerprint: row.get(14)?,
            description: row.get(15)?,
            tags,
            revoked,
            pem: row.get(19)?,
            reply: row.get(20)?,
        })
    };
    let parsed = (|| {
        Ok((
            from_json(&dns, "dns_names")?,
            from_json(&uris, "uri_sans")?,
            from_json(&ips, "ip_addresses")?,
            from_json(&tags, "tags")?,
        ))
    })();
    Ok(match parsed {
        Ok((d, u, i, t)) => Ok(rec(d, u, i, t)?),
        Err(e) => Err(e),
    })
}

/// The records `sql` selects (it selects [`COLUMNS`]) with `args`.
fn records(conn: &Connection, sql: &str, args: Vec<Value>) -> Result<Vec<Record>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(map_err)?;
    let rows = st
        .query_map(params_from_iter(args), record)
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)?).collect()
}

fn get(conn: &Connection, id: &str) -> Result<Option<Record>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM certificates WHERE id = ?1");
    Ok(records(conn, &sql, vec![Value::Text(id.to_owned())])?
        .into_iter()
        .next())
}

/// The SQL and arguments of a listing.
pub(super) fn list_sql(q: &ListQuery) -> (String, Vec<Value>) {
    // Only placeholders are spliced into the text; every value is bound.
    let mut sql = format!("SELECT {COLUMNS} FROM certificates c WHERE 1 = 1");
    let mut args = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("?{n}")
    };
    if let Some(uid) = q.owner_uid {
        sql += &format!(" AND owner_uid = {}", next());
        args.push(Value::Integer(i64::from(uid)));
    }
    match q.state {
        Some(StateFilter::Revoked) => sql += " AND revoke_time IS NOT NULL",
        Some(StateFilter::Active) => {
            sql += &format!(" AND revoke_time IS NULL AND expire_time > {}", next());
            args.push(Value::Integer(q.now));
        }
        Some(StateFilter::Expired) => {
            sql += &format!(" AND revoke_time IS NULL AND expire_time <= {}", next());
            args.push(Value::Integer(q.now));
        }
        None => {}
    }
    for (k, v) in &q.tags {
        let (pk, pv) = (next(), next());
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM certificate_tags t WHERE t.cert_id = c.id \
             AND t.tag_key = {pk} AND t.tag_value = {pv})"
        );
        args.push(Value::Text(k.clone()));
        args.push(Value::Text(v.clone()));
    }
    sql += &super::newest_first_page(q.after.is_some(), &mut next);
    if let Some((t, id)) = &q.after {
        args.extend([Value::Integer(*t), Value::Text(id.clone())]);
    }
    args.push(Value::Integer(i64::from(q.limit)));
    (sql, args)
}

/// Revokes the unrevoked certificate `serial` inside `tx`.
pub(super) fn revoke_serial(
    tx: &Connection,
    serial: &str,
    rev: Revocation,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE certificates SET revoke_time = ?1, revoke_reason = ?2 \
         WHERE serial = ?3 AND revoke_time IS NULL",
    )
    .and_then(|mut st| st.execute(params![rev.time, rev.reason, serial]))
    .map_err(map_err)?;
    Ok(())
}

fn update_metadata(
    tx: &Connection,
    id: &str,
    description: Option<String>,
    tags: BTreeMap<String, String>,
) -> Result<Option<Record>, StoreError> {
    let Some(mut rec) = get(tx, id)? else {
        return Ok(None);
    };
    if let Some(d) = description {
        rec.description = d;
    }
    for (k, v) in tags {
        tx.execute(
            "DELETE FROM certificate_tags WHERE cert_id = ?1 AND tag_key = ?2",
            params![id, k],
        )
        .map_err(map_err)?;
        if v.is_empty() {
            rec.tags.remove(&k);
        } else {
            tx.execute(
                "INSERT INTO certificate_tags (cert_id, tag_key, tag_value) VALUES (?1, ?2, ?3)",
                params![id, k, v],
            )
            .map_err(map_err)?;
            rec.tags.insert(k, v);
        }
    }
    tx.execute(
        "UPDATE certificates SET description = ?1, tags = ?2 WHERE id = ?3",
        params![rec.description, json(&rec.tags), id],
    )
    .map_err(map_err)?;
    Ok(Some(rec))
}

#[async_trait]
impl CertificateStore for SqliteStore {
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
        let id = id.to_owned();
        self.read(move |c| get(c, &id)).await
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
            "SELECT {COLUMNS} FROM certificates WHERE owner_uid = ?1 AND request_id = ?2 \
             AND request_id <> '' AND create_time >= ?3"
        );
        let args = vec![
            Value::Integer(i64::from(owner_uid)),
            Value::Text(request_id.to_owned()),
            Value::Integer(since_us),
        ];
        self.read(move |c| Ok(records(c, &sql, args)?.into_iter().next()))
            .await
    }

    async fn expire_request_ids(&self, before_us: i64) -> Result<u64, StoreError> {
        self.exec(move |tx| {
            let n = tx
                .execute(
                    "UPDATE certificates SET request_id = '' \
                     WHERE request_id <> '' AND create_time < ?1",
                    params![before_us],
                )
                .map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn count_live(&self, owner_uid: u32, now: i64) -> Result<u64, StoreError> {
        self.read(move |c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM certificates \
                     WHERE owner_uid = ?1 AND revoke_time IS NULL AND expire_time > ?2",
                )
                .and_then(|mut st| st.query_row(params![owner_uid, now], |r| r.get(0)))
                .map_err(map_err)?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn list(&self, q: ListQuery) -> Result<Vec<Record>, StoreError> {
        let (sql, args) = list_sql(&q);
        self.read(move |c| records(c, &sql, args)).await
    }

    async fn update_metadata(
        &self,
        id: &str,
        description: Option<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<Option<Record>, StoreError> {
        let id = id.to_owned();
        self.exec(move |tx| update_metadata(tx, &id, description, tags))
            .await
    }

    async fn revoke(&self, id: &str, rev: Revocation) -> Result<Option<Record>, StoreError> {
        let id = id.to_owned();
        self.exec(move |tx| {
            tx.execute(
                "UPDATE certificates SET revoke_time = ?1, revoke_reason = ?2 \
                 WHERE id = ?3 AND revoke_time IS NULL",
                params![rev.time, rev.reason, id],
            )
            .map_err(map_err)?;
            get(tx, &id)
        })
        .await
    }

    async fn revoked(&self, now: i64) -> Result<Vec<RevokedEntry>, StoreError> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT serial, revoke_time, revoke_reason FROM certificates \
                     WHERE revoke_time IS NOT NULL AND expire_time > ?1 \
                     ORDER BY revoke_time, serial",
                )
                .map_err(map_err)?;
            let rows = st
                .query_map(params![now], |r| {
                    Ok(RevokedEntry {
                        serial: r.get(0)?,
                        time: r.get(1)?,
                        reason: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as i32,
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn purge_expired(&self, expired_before: i64, limit: u32) -> Result<u64, StoreError> {
        self.exec(move |tx| super::retention::purge_records(tx, expired_before, limit))
            .await
    }
}
