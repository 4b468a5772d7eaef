//! The group-commit writer: one task that commits certificate records and
//! audit entries in batches. Every job waiting when a commit starts shares
//! that transaction and its one durable commit (`synchronous_commit` on),
//! and each caller hears back only after it.
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

use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{certificates::insert_record, corrupt, locks::AUDIT_CHAIN, map_err};
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
        match commit(&pool, &jobs).await {
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
                // may retry; the pool reconnects by itself.
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(StoreError::Unavailable(e.clone())));
                }
                tokio::time::sleep(super::RECONNECT).await;
            }
            Err(_) => {
                // One bad record (a serial or request_id already taken)
                // must not fail its neighbours: each job alone.
                for p in batch.drain(..) {
                    let r = commit(&pool, &[&p]).await;
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

/// Commits the jobs' records and audit entries in one transaction.
async fn commit(pool: &PgPool, jobs: &[&Pending]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    for r in jobs.iter().filter_map(|j| j.record.as_ref()) {
        insert_record(&mut tx, r).await?;
    }
    let entries: Vec<&AuditEntry> = jobs.iter().filter_map(|j| j.audit.as_ref()).collect();
    if !entries.is_empty() {
        append_audit(&mut tx, &entries).await?;
    }
    tx.commit().await.map_err(map_err)
}

/// Appends `entries` to the chain inside `tx`, holding the chain's lock
/// until the transaction ends.
pub(super) async fn append_audit(
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
    for entry in entries {
        let text = serde_json::to_string(entry)
            .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
        let next = chain_hash(&hash, &text);
        seq += 1;
        tracing::debug!(target: "hsmca::audit", seq, hash = %next, entry = %text, "audit");
        sqlx::query(
            "INSERT INTO audit_log (seq, entry, prev_hash, hash, time_us) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(seq)
        .bind(&text)
        .bind(&hash)
        .bind(&next)
        .bind(entry.time_us)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        hash = next;
    }
    Ok(())
}
