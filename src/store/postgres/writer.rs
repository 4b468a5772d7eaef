//! The group-commit writer: one task that commits certificate records and
//! audit entries in batches. Every job waiting when a commit starts shares
//! that transaction and its one durable commit (`synchronous_commit` on),
//! and each caller hears back only after it. A batch is one statement per
//! table (each column bound as an array and unrolled by `UNNEST`), so its
//! cost in round trips does not grow with its size; when a row breaks a
//! constraint, each job of the batch is committed alone and only the
//! offending one fails.
//!
//! The audit chain spans every node: a batch with audit entries first takes
//! a transaction-scoped advisory lock, then reads the chain's head and
//! extends it, so appends from several daemons are serialized in the
//! database and the chain has one head.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{
    Connection as _, PgConnection, PgPool, Postgres, Row, Transaction, pool::PoolConnection,
    postgres::PgBindIterExt,
};
use tokio::sync::{mpsc, oneshot};

use super::{certificates::insert_records, corrupt, locks::AUDIT_CHAIN, map_err};
use crate::{
    audit::{AuditEntry, GENESIS, chain_hash},
    store::{Record, StoreError},
};

/// Most jobs one commit takes.
const MAX_BATCH: usize = 512;

/// Longest a commit waits for announced records.
const GATHER: Duration = Duration::from_millis(1);

/// One job: a certificate record, an audit entry, or both (committed
/// together).
pub(super) struct Pending {
    pub record: Option<Record>,
    pub audit: Option<AuditEntry>,
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

/// Starts the writer task; returns its job queue.
pub(super) fn start(pool: PgPool, announced: Arc<AtomicUsize>) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    tokio::spawn(run(pool, rx, announced));
    tx
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Pending>, announced: Arc<AtomicUsize>) {
    let m = crate::metrics::metrics();
    let mut conn = Connection { pool, held: None };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        gather(&mut rx, &mut batch, &announced).await;
        let started = Instant::now();
        let jobs: Vec<&Pending> = batch.iter().collect();
        match conn.commit(&jobs).await {
            Ok(()) => {
                m.store_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                m.store_commit_records
                    .inc_by(batch.iter().filter(|p| p.record.is_some()).count() as u64);
                for p in batch.drain(..) {
                    let _ = p.done.send(Ok(()));
                }
            }
            Err(StoreError::Unavailable(e)) => {
                // The server is away: nothing of the batch was committed
                // (a failed COMMIT rolls back). Every caller hears so and
                // may retry; the next batch takes a new connection.
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(StoreError::Unavailable(e.clone())));
                }
                tokio::time::sleep(super::RECONNECT).await;
            }
            Err(_) => {
                // One bad record (a serial or request_id already taken)
                // must not fail its neighbours: each job alone.
                for p in batch.drain(..) {
                    let r = conn.commit(&[&p]).await;
                    let _ = p.done.send(r);
                }
            }
        }
    }
}

/// Waits up to [`GATHER`] for records that were announced (their
/// certificates are being signed) to join the batch.
async fn gather(
    rx: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    announced: &AtomicUsize,
) {
    let deadline = tokio::time::Instant::now() + GATHER;
    let mut records = batch.iter().filter(|p| p.record.is_some()).count();
    while batch.len() < MAX_BATCH && records < announced.load(Ordering::Relaxed) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(p)) => {
                records += usize::from(p.record.is_some());
                batch.push(p);
            }
            _ => break,
        }
    }
}

/// The writer's connection, kept from one batch to the next: taking a
/// connection from the pool and giving it back costs a ping each way (sqlx
/// checks it on acquire and on release), two round trips a batch. After an
/// error that may have broken it, it goes back to the pool (whose check
/// drops a dead one) and the next batch takes a checked one.
struct Connection {
    pool: PgPool,
    held: Option<PoolConnection<Postgres>>,
}

impl Connection {
    async fn commit(&mut self, jobs: &[&Pending]) -> Result<(), StoreError> {
        let conn = match &mut self.held {
            Some(c) => c,
            None => self
                .held
                .insert(self.pool.acquire().await.map_err(map_err)?),
        };
        let r = commit(conn, jobs).await;
        if let Err(StoreError::Unavailable(_)) = r {
            self.held = None;
        }
        r
    }
}

/// Commits the jobs' records and audit entries in one transaction: one
/// statement per table, so a batch is six round trips whatever its size
/// (BEGIN, the records, the chain's lock, the chain's head, the audit
/// entries, COMMIT).
async fn commit(conn: &mut PgConnection, jobs: &[&Pending]) -> Result<(), StoreError> {
    let records: Vec<&Record> = jobs.iter().filter_map(|j| j.record.as_ref()).collect();
    let entries: Vec<&AuditEntry> = jobs.iter().filter_map(|j| j.audit.as_ref()).collect();
    let mut tx = conn.begin().await.map_err(map_err)?;
    insert_records(&mut tx, &records).await?;
    if !entries.is_empty() {
        append_audit(&mut tx, &entries).await?;
    }
    tx.commit().await.map_err(map_err)
}

/// Appends `entries` to the chain inside `tx`. The chain's lock is taken
/// here, after the records are in: the nodes take turns on the chain (the
/// lock is held until the commit is durable), not on their records, so
/// another node inserts its batch's records meanwhile. The head is read
/// by a statement of its own after the lock is held: in READ COMMITTED
/// each statement sees what was committed when it began, so it sees the
/// newest link any node committed.
async fn append_audit(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[&AuditEntry],
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(AUDIT_CHAIN)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    let (mut seq, mut hash): (i64, String) = match head {
        Some(row) => (
            row.try_get("seq").map_err(corrupt)?,
            row.try_get("hash").map_err(corrupt)?,
        ),
        None => (0, GENESIS.to_owned()),
    };
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        let text = serde_json::to_string(entry)
            .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
        let next = chain_hash(&hash, &text);
        seq += 1;
        tracing::debug!(target: "hsmca::audit", seq, hash = %next, entry = %text, "audit");
        let prev = std::mem::replace(&mut hash, next.clone());
        rows.push((seq, text, prev, next, entry.time_us));
    }
    // The whole batch's links in one statement, one array per column.
    sqlx::query(
        "INSERT INTO audit_log (seq, entry, prev_hash, hash, time_us) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])",
    )
    .bind(rows.iter().map(|r| r.0).bind_iter())
    .bind(rows.iter().map(|r| r.1.as_str()).bind_iter())
    .bind(rows.iter().map(|r| r.2.as_str()).bind_iter())
    .bind(rows.iter().map(|r| r.3.as_str()).bind_iter())
    .bind(rows.iter().map(|r| r.4).bind_iter())
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}
