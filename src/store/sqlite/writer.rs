//! The writer: one thread that owns the store's only read-write
//! connection. Certificate records and audit entries are committed in
//! batches (group commit): every insert waiting when a commit starts shares
//! that transaction, and each caller hears back only after it is durable
//! (WAL, `synchronous=FULL`). Every other write (revocations, certificate
//! requests, the CRL, retention) runs here too, each in a transaction of
//! its own between batches, so SQLite never sees two writers competing for
//! its lock.
//!
//! Why a thread of its own with plain rusqlite calls: through an async
//! driver every statement of a commit (BEGIN, the INSERTs, COMMIT) was a
//! round trip through a channel to the driver's thread and back to the
//! runtime, so a lone request paid five thread wake-ups for its commit
//! (BENCHMARKS.md). Here the statements are calls on prepared, cached
//! statements, and the only hand-offs are a job's arrival and its answer.
//! The thread blocks on SQLite (fsync) without holding up the async runtime.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::oneshot;

use super::{certificates::insert_record, map_err, unavailable};
use crate::{
    audit::{AuditEntry, GENESIS, chain_hash},
    store::{Record, StoreError},
};

/// Most jobs one commit takes.
const MAX_BATCH: usize = 512;

/// Longest a commit waits for announced records: about one fsync here.
const GATHER: Duration = Duration::from_millis(1);

/// One job: a certificate record, an audit entry, or both (committed
/// together).
pub(super) struct Pending {
    pub record: Option<Record>,
    pub audit: Option<AuditEntry>,
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

/// A write other than a record or audit entry: runs in a transaction of
/// its own, which it commits itself.
pub(super) type Exec = Box<dyn FnOnce(&mut Connection) + Send>;

/// What the writer is asked to do. Most jobs are inserts, moved once into
/// the queue: boxing them would cost an allocation per certificate.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Insert(Pending),
    Exec(Exec),
}

/// Runs `f` in one transaction on the writer's connection and commits it
/// when `f` succeeds (rolls back when it fails). The answer goes to `done`.
pub(super) fn exec_job<T, F>(f: F, done: oneshot::Sender<Result<T, StoreError>>) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Transaction) -> Result<T, StoreError> + Send + 'static,
{
    Job::Exec(Box::new(move |conn: &mut Connection| {
        let r = conn.transaction().map_err(map_err).and_then(|tx| {
            let out = f(&tx)?;
            tx.commit().map_err(map_err)?;
            Ok(out)
        });
        let _ = done.send(r);
    }))
}

/// Opens the writer's connection to the SQLite file at `path`, creating it
/// if needed, and puts the file in WAL mode. This runs before the pool
/// opens its connections: switching the journal mode takes a lock that
/// would otherwise make one side wait out SQLite's busy handler.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
    )
    .map_err(unavailable)?;
    Ok(conn)
}

/// Starts the writer's thread on `conn` (migrations have run). Returns the
/// job queue.
pub(super) fn start(
    conn: Connection,
    announced: Arc<AtomicUsize>,
) -> Result<flume::Sender<Job>, StoreError> {
    // One writer per store: it holds the audit chain's head. (Several
    // daemons sharing one database would need the head read under a lock
    // in each transaction; the embedded store has one daemon.)
    let head = audit_head(&conn)?;
    let (tx, rx) = flume::bounded(4 * MAX_BATCH);
    std::thread::Builder::new()
        .name("hsmca-store".into())
        .spawn(move || run(conn, rx, head, &announced))
        .map_err(unavailable)?;
    Ok(tx)
}

/// The writer's loop. It alone appends to the audit log, so the hash chain
/// has one head: `head` is the last committed (seq, hash).
fn run(
    mut conn: Connection,
    rx: flume::Receiver<Job>,
    mut head: (i64, String),
    announced: &AtomicUsize,
) {
    let m = crate::metrics::metrics();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut execs = Vec::new();
    while let Ok(first) = rx.recv() {
        sort(first, &mut batch, &mut execs);
        for job in rx.try_iter().take(MAX_BATCH - 1) {
            sort(job, &mut batch, &mut execs);
        }
        gather(&rx, &mut batch, &mut execs, announced);
        if !batch.is_empty() {
            head = commit_batch(&mut conn, &mut batch, head, m);
        }
        for exec in execs.drain(..) {
            // A write that panics (its transaction rolls back as it
            // unwinds, its caller hears the writer gone) must not take
            // the writer with it.
            let run = std::panic::AssertUnwindSafe(|| exec(&mut conn));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("a store write panicked; it was rolled back");
            }
        }
    }
}

fn sort(job: Job, batch: &mut Vec<Pending>, execs: &mut Vec<Exec>) {
    match job {
        Job::Insert(p) => batch.push(p),
        Job::Exec(e) => execs.push(e),
    }
}

/// Commits `batch` (emptying it) and answers its jobs; returns the audit
/// log's head after it.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<Pending>,
    mut head: (i64, String),
    m: &crate::metrics::Metrics,
) -> (i64, String) {
    let started = Instant::now();
    match commit(conn, batch, &head) {
        Ok(new_head) => {
            head = new_head;
            m.store_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            // Certificate records; audit-only jobs are not counted.
            m.store_commit_records
                .inc_by(batch.iter().filter(|p| p.record.is_some()).count() as u64);
            for p in batch.drain(..) {
                let _ = p.done.send(Ok(()));
            }
        }
        Err(_) if batch.len() > 1 => {
            // The commit may have failed after all or part of it landed:
            // take the head from the store. One bad record must not fail
            // its neighbours, so each job is retried alone.
            head = audit_head(conn).unwrap_or(head);
            for p in batch.drain(..) {
                let r = commit(conn, std::slice::from_ref(&p), &head);
                let r = r.map(|new_head| head = new_head);
                let _ = p.done.send(r);
            }
        }
        Err(e) => {
            head = audit_head(conn).unwrap_or(head);
            for p in batch.drain(..) {
                let _ = p.done.send(Err(e.clone()));
            }
        }
    }
    head
}

/// Waits up to [`GATHER`] for records that were announced (their
/// certificates are being signed) to join the batch, so that they share its
/// fsync instead of each paying for a commit of its own. A lone request
/// (nothing else announced) does not wait. Other writes that arrive
/// meanwhile wait for the batch's commit.
fn gather(
    rx: &flume::Receiver<Job>,
    batch: &mut Vec<Pending>,
    execs: &mut Vec<Exec>,
    announced: &AtomicUsize,
) {
    let deadline = Instant::now() + GATHER;
    let mut records = batch.iter().filter(|p| p.record.is_some()).count();
    while batch.len() < MAX_BATCH && records < announced.load(Ordering::Relaxed) {
        match rx.recv_deadline(deadline) {
            Ok(Job::Insert(p)) => {
                records += usize::from(p.record.is_some());
                batch.push(p);
            }
            Ok(Job::Exec(e)) => execs.push(e),
            Err(_) => break,
        }
    }
}

/// The audit log's last (seq, hash), or the genesis head when it is empty.
fn audit_head(conn: &Connection) -> Result<(i64, String), StoreError> {
    let mut st = conn
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .map_err(map_err)?;
    let mut rows = st.query([]).map_err(map_err)?;
    match rows.next().map_err(map_err)? {
        Some(row) => Ok((
            row.get(0).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            row.get(1).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        )),
        None => Ok((0, GENESIS.to_owned())),
    }
}

/// Commits the jobs' records and audit entries in one transaction; returns
/// the audit log's new head.
fn commit(
    conn: &mut Connection,
    jobs: &[Pending],
    head: &(i64, String),
) -> Result<(i64, String), StoreError> {
    let tx = conn.transaction().map_err(map_err)?;
    for r in jobs.iter().filter_map(|j| j.record.as_ref()) {
        insert_record(&tx, r)?;
    }
    let mut audit = tx
        .prepare_cached(
            "INSERT INTO audit_log (seq, time_us, entry, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(map_err)?;
    let (mut seq, mut hash) = head.clone();
    for entry in jobs.iter().filter_map(|j| j.audit.as_ref()) {
        let text = serde_json::to_string(entry)
            .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
        let next = chain_hash(&hash, &text);
        seq += 1;
        // The outcome is logged at info by the caller ("issued certificate",
        // "refused certificate", …); the chain position only at debug.
        tracing::debug!(target: "hsmca::audit", seq, hash = %next, entry = %text, "audit");
        audit
            .execute(params![seq, entry.time_us, text, hash, next])
            .map_err(map_err)?;
        hash = next;
    }
    drop(audit);
    tx.commit().map_err(map_err)?;
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(record: bool) -> Job {
        Job::Insert(pending(record))
    }

    fn pending(record: bool) -> Pending {
        let (done, _) = oneshot::channel();
        let rec = Record {
            id: "x".into(),
            serial: "01".into(),
            owner_uid: 0,
            owner_gid: 0,
            owner_pid: 0,
            subject: String::new(),
            dns_names: vec![],
            uri_sans: vec![],
            ip_addresses: vec![],
            profile: "client".into(),
            not_before: 0,
            expire_time: 0,
            create_time_us: 0,
            request_id: String::new(),
            fingerprint: String::new(),
            description: String::new(),
            tags: Default::default(),
            revoked: None,
            pem: String::new(),
            reply: vec![],
        };
        Pending {
            record: record.then_some(rec),
            audit: None,
            done,
        }
    }

    #[test]
    fn gathers_only_what_was_announced() {
        let (tx, rx) = flume::unbounded();
        for _ in 0..4 {
            tx.send(job(true)).unwrap();
        }
        let mut execs = Vec::new();
        // Three records announced, one in hand: two more are taken, the
        // fourth stays queued for the next commit.
        let mut batch = vec![pending(true)];
        gather(&rx, &mut batch, &mut execs, &AtomicUsize::new(3));
        assert_eq!(batch.len(), 3);
        assert_eq!(rx.len(), 2);
        // Nothing more announced than in hand: no wait, nothing taken.
        let mut batch = vec![pending(true)];
        gather(&rx, &mut batch, &mut execs, &AtomicUsize::new(1));
        assert_eq!(batch.len(), 1);
        assert_eq!(rx.len(), 2);
        // Audit-only jobs do not count as the announced records.
        let mut batch = vec![pending(false)];
        gather(&rx, &mut batch, &mut execs, &AtomicUsize::new(1));
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn an_announced_record_that_never_comes_costs_at_most_the_gathering_time() {
        let (_tx, rx) = flume::unbounded::<Job>();
        let mut execs = Vec::new();
        let mut batch = vec![pending(true)];
        let started = Instant::now();
        gather(&rx, &mut batch, &mut execs, &AtomicUsize::new(5));
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() >= GATHER);
    }
}
