//! SQL for certificate requests. A state change, the certificate it issued
//! and the certificates it revoked are one transaction, so a watcher never
//! sees a certificate the store could lose, and a revoked certificate never
//! lingers in a request's status. A request's labels live in
//! `certificate_request_labels` (indexed on key and value), kept in step
//! in the same transactions, so a list filtered by labels is a query, not
//! a scan.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{Connection, Row, params, params_from_iter, types::Value};

use super::{
    SqliteStore,
    certificates::{insert_record, revoke_serial},
    map_err,
};
use crate::store::{RequestChange, RequestQuery, RequestRow, RequestStore, Revocation, StoreError};

/// The columns [`row`] reads, labels last (as one JSON object).
const COLUMNS: &str = "r.id, r.owner_uid, r.owner_gid, r.request_id, r.fingerprint, r.dup_key, \
    r.names_key, r.state, r.due_at, r.create_time, r.resource, \
    (SELECT json_group_object(lab.key, lab.value) FROM certificate_request_labels lab \
     WHERE lab.request_id = r.id) AS labels";

fn row(r: &Row) -> rusqlite::Result<Result<RequestRow, StoreError>> {
    let labels: Option<String> = r.get(11)?;
    let labels = match labels.as_deref().map(serde_json::from_str).transpose() {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => {
            return Ok(Err(StoreError::Corrupt(format!(
                "certificate request labels: {e}"
            ))));
        }
    };
    Ok(Ok(RequestRow {
        id: r.get(0)?,
        owner_uid: r.get(1)?,
        owner_gid: r.get(2)?,
        request_id: r.get(3)?,
        fingerprint: r.get(4)?,
        dup_key: r.get(5)?,
        names_key: r.get(6)?,
        state: r.get(7)?,
        due_at: r.get(8)?,
        create_time_us: r.get(9)?,
        resource: r.get(10)?,
        labels,
    }))
}

/// The requests `sql` selects (it selects [`COLUMNS`] of `r`) with `args`.
fn rows(conn: &Connection, sql: &str, args: Vec<Value>) -> Result<Vec<RequestRow>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(map_err)?;
    let rows = st.query_map(params_from_iter(args), row).map_err(map_err)?;
    rows.map(|r| r.map_err(map_err)?).collect()
}

fn one(conn: &Connection, sql: &str, args: Vec<Value>) -> Result<Option<RequestRow>, StoreError> {
    Ok(rows(conn, sql, args)?.into_iter().next())
}

/// Replaces the labels of request `id` with `labels`.
fn set_labels(
    tx: &Connection,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM certificate_request_labels WHERE request_id = ?1")
        .and_then(|mut st| st.execute(params![id]))
        .map_err(map_err)?;
    insert_labels(tx, id, labels)
}

/// Adds `labels` to request `id` (which exists), with the request's owner
/// and creation time, which the label indexes list by.
pub(super) fn insert_labels(
    tx: &Connection,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO certificate_request_labels (request_id, key, value, owner_uid, \
             create_time) SELECT id, ?2, ?3, owner_uid, create_time \
             FROM certificate_requests WHERE id = ?1",
        )
        .map_err(map_err)?;
    for (k, v) in labels {
        st.execute(params![id, k, v]).map_err(map_err)?;
    }
    Ok(())
}

fn create(tx: &Connection, r: &RequestRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO certificate_requests (id, owner_uid, owner_gid, request_id, fingerprint, \
         dup_key, names_key, state, due_at, create_time, resource) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut st| {
        st.execute(params![
            r.id,
            r.owner_uid,
            r.owner_gid,
            r.request_id,
            r.fingerprint,
            r.dup_key,
            r.names_key,
            r.state,
            r.due_at,
            r.create_time_us,
            r.resource,
        ])
    })
    .map_err(map_err)?;
    insert_labels(tx, &r.id, &r.labels)
}

/// The SQL and arguments of a listing. `labels` come most selective
/// first (see [`by_selectivity`]).
pub(super) fn list_sql(q: &RequestQuery, labels: &[(String, String)]) -> (String, Vec<Value>) {
    // Only placeholders are spliced into the text; every value is bound.
    let mut args = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("?{n}")
    };
    let Some(((k0, v0), more)) = labels.split_first() else {
        let mut sql = format!("SELECT {COLUMNS} FROM certificate_requests r WHERE 1 = 1");
        if let Some(uid) = q.owner_uid {
            sql += &format!(" AND owner_uid = {}", next());
            args.push(Value::Integer(i64::from(uid)));
        }
        if let Some(state) = q.state {
            sql += &format!(" AND state = {}", next());
            args.push(Value::Integer(i64::from(state)));
        }
        sql += &super::newest_first_page(q.after.is_some(), &mut next);
        push_page(q, &mut args);
        return (sql, args);
    };
    // With labels, the listing walks the first label's index, which holds
    // the owner and the creation time: newest first, from the cursor on,
    // and it stops at the limit. Further labels are looked up by request.
    let (pk, pv) = (next(), next());
    let mut sql = format!(
        "SELECT {COLUMNS} FROM certificate_request_labels l \
         JOIN certificate_requests r ON r.id = l.request_id \
         WHERE l.key = {pk} AND l.value = {pv}"
    );
    args.extend([Value::Text(k0.clone()), Value::Text(v0.clone())]);
    if let Some(uid) = q.owner_uid {
        sql += &format!(" AND l.owner_uid = {}", next());
        args.push(Value::Integer(i64::from(uid)));
    }
    if let Some(state) = q.state {
        sql += &format!(" AND r.state = {}", next());
        args.push(Value::Integer(i64::from(state)));
    }
    for (k, v) in more {
        let (pk, pv) = (next(), next());
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM certificate_request_labels m \
             WHERE m.request_id = l.request_id AND m.key = {pk} AND m.value = {pv})"
        );
        args.extend([Value::Text(k.clone()), Value::Text(v.clone())]);
    }
    if q.after.is_some() {
        let (t, i) = (next(), next());
        sql += &format!(" AND (l.create_time, l.request_id) < ({t}, {i})");
    }
    sql += &format!(
        " ORDER BY l.create_time DESC, l.request_id DESC LIMIT {}",
        next()
    );
    push_page(q, &mut args);
    (sql, args)
}

/// The cursor's two values and the limit, bound last.
fn push_page(q: &RequestQuery, args: &mut Vec<Value>) {
    if let Some((t, id)) = &q.after {
        args.extend([Value::Integer(*t), Value::Text(id.clone())]);
    }
    args.push(Value::Integer(i64::from(q.limit)));
}

/// Matches counted per label, up to this many: enough to tell a rare label
/// from a common one.
const SELECTIVITY_PROBE: i64 = 1000;

/// `labels`, the one matching the fewest requests first: the listing walks
/// it and checks the others per request.
fn by_selectivity(
    conn: &Connection,
    labels: &[(String, String)],
) -> Result<Vec<(String, String)>, StoreError> {
    let mut counted = Vec::with_capacity(labels.len());
    if labels.len() < 2 {
        return Ok(labels.to_vec());
    }
    let mut st = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM certificate_request_labels \
             WHERE key = ?1 AND value = ?2 LIMIT ?3)",
        )
        .map_err(map_err)?;
    for (k, v) in labels {
        let n: i64 = st
            .query_row(params![k, v, SELECTIVITY_PROBE], |r| r.get(0))
            .map_err(map_err)?;
        counted.push((n, (k.clone(), v.clone())));
    }
    counted.sort_by_key(|(n, _)| *n);
    Ok(counted.into_iter().map(|(_, l)| l).collect())
}

fn commit(tx: &Connection, c: &RequestChange) -> Result<bool, StoreError> {
    let r = &c.row;
    let updated = tx
        .prepare_cached(
            "UPDATE certificate_requests SET dup_key = ?1, names_key = ?2, state = ?3, \
             due_at = ?4, resource = ?5 WHERE id = ?6",
        )
        .and_then(|mut st| {
            st.execute(params![
                r.dup_key,
                r.names_key,
                r.state,
                r.due_at,
                r.resource,
                r.id
            ])
        })
        .map_err(map_err)?;
    if updated == 0 {
        return Ok(false);
    }
    set_labels(tx, &r.id, &r.labels)?;
    if let Some(rec) = &c.issued {
        insert_record(tx, rec)?;
    }
    if let Some(rev) = c.revocation {
        for serial in &c.revoke {
            revoke_serial(tx, serial, rev)?;
        }
    }
    if let Some(t) = c.renewal_at {
        tx.prepare_cached("INSERT INTO renewals (names_key, time) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(params![r.names_key, t]))
            .map_err(map_err)?;
    }
    Ok(true)
}

fn delete(
    tx: &Connection,
    id: &str,
    revoke: &[String],
    rev: Revocation,
) -> Result<bool, StoreError> {
    let deleted = tx
        .execute(
            "DELETE FROM certificate_requests WHERE id = ?1",
            params![id],
        )
        .map_err(map_err)?;
    if deleted == 0 {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM certificate_request_labels WHERE request_id = ?1",
        params![id],
    )
    .map_err(map_err)?;
    for serial in revoke {
        revoke_serial(tx, serial, rev)?;
    }
    Ok(true)
}

impl SqliteStore {
    /// Up to `limit` renewal times (names_key, time) after row `after`, in
    /// the order they were made, with the row of the last one: for
    /// `hsmca store copy`, which must carry the renewal limits' counts over.
    pub async fn renewals_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<(String, i64)>, i64), StoreError> {
        self.readers
            .read(move |conn| {
                let mut st = conn
                    .prepare_cached(
                        "SELECT rowid, names_key, time FROM renewals WHERE rowid > ?1 \
                         ORDER BY rowid LIMIT ?2",
                    )
                    .map_err(map_err)?;
                let rows = st
                    .query_map(params![after, limit], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(map_err)?;
                let mut last = after;
                let mut page = Vec::new();
                for row in rows {
                    let (rowid, names_key, time) = row.map_err(map_err)?;
                    last = rowid;
                    page.push((names_key, time));
                }
                Ok((page, last))
            })
            .await
    }
}

#[async_trait]
impl RequestStore for SqliteStore {
    async fn create_request(&self, row: RequestRow) -> Result<(), StoreError> {
        self.exec(move |tx| create(tx, &row)).await
    }

    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM certificate_requests r WHERE id = ?1");
        let args = vec![Value::Text(id.to_owned())];
        self.read(move |c| one(c, &sql, args)).await
    }

    async fn request_by_dup_key(&self, dup_key: &str) -> Result<Option<RequestRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM certificate_requests r WHERE dup_key = ?1");
        let args = vec![Value::Text(dup_key.to_owned())];
        self.read(move |c| one(c, &sql, args)).await
    }

    async fn request_by_request_id(
        &self,
        owner_uid: u32,
        request_id: &str,
        since_us: i64,
    ) -> Result<Option<RequestRow>, StoreError> {
        // `request_id <> ''` lets SQLite use the partial index on
        // (owner_uid, request_id) instead of scanning the caller's requests.
        let sql = format!(
            "SELECT {COLUMNS} FROM certificate_requests r \
             WHERE owner_uid = ?1 AND request_id = ?2 AND request_id <> '' AND create_time >= ?3 \
             ORDER BY create_time DESC LIMIT 1"
        );
        let args = vec![
            Value::Integer(i64::from(owner_uid)),
            Value::Text(request_id.to_owned()),
            Value::Integer(since_us),
        ];
        self.read(move |c| one(c, &sql, args)).await
    }

    async fn list_requests(&self, q: RequestQuery) -> Result<Vec<RequestRow>, StoreError> {
        self.read(move |c| {
            let labels = by_selectivity(c, &q.labels)?;
            let (sql, args) = list_sql(&q, &labels);
            rows(c, &sql, args)
        })
        .await
    }

    async fn due_requests(&self, now: i64, limit: u32) -> Result<Vec<RequestRow>, StoreError> {
        // First issues (and re-issues) before renewals, so a backlog of renewals
        // does not hold up a request somebody is waiting for.
        let sql = format!(
            "SELECT {COLUMNS} FROM certificate_requests r \
             WHERE due_at IS NOT NULL AND due_at <= ?1 \
             ORDER BY CASE WHEN state = 1 THEN 1 ELSE 0 END, due_at LIMIT ?2"
        );
        let args = vec![Value::Integer(now), Value::Integer(i64::from(limit))];
        self.read(move |c| rows(c, &sql, args)).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            c.query_row("SELECT MIN(due_at) FROM certificate_requests", [], |r| {
                r.get(0)
            })
            .map_err(map_err)
        })
        .await
    }

    async fn commit_request(&self, change: RequestChange) -> Result<bool, StoreError> {
        self.exec(move |tx| commit(tx, &change)).await
    }

    async fn delete_request(
        &self,
        id: &str,
        revoke: Vec<String>,
        revocation: Revocation,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.exec(move |tx| delete(tx, &id, &revoke, revocation))
            .await
    }

    async fn renewals_since(&self, names_key: &str, since: i64) -> Result<Vec<i64>, StoreError> {
        let names_key = names_key.to_owned();
        self.exec(move |tx| {
            // Entries that left the window are never counted again.
            tx.execute(
                "DELETE FROM renewals WHERE names_key = ?1 AND time < ?2",
                params![names_key, since],
            )
            .map_err(map_err)?;
            let mut st = tx
                .prepare_cached("SELECT time FROM renewals WHERE names_key = ?1 ORDER BY time")
                .map_err(map_err)?;
            let rows = st
                .query_map(params![names_key], |r| r.get(0))
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }
}
