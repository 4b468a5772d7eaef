//! The SQLite store, on rusqlite alone. One writer thread owns the only
//! read-write connection: it commits certificate records and audit entries
//! in batches (group commit, see [`writer`]) and runs every other write in
//! a transaction of its own between batches. Reads go to a few read-only
//! connections on tokio's blocking threads ([`readers`]). SQLite runs in
//! WAL mode with `synchronous=FULL`, so a commit survives power loss.
//!
//! Why rusqlite rather than sqlx: the group commit needs a connection on a
//! thread of its own, called directly (sqlx's per-statement hand-offs cost
//! five thread wake-ups per commit, BENCHMARKS.md), and with the writer on
//! rusqlite, a second client crate for the reads meant two statements of
//! each INSERT, two error mappings and, through sqlx's `Any` driver,
//! replies stored as base64 text. rusqlite binds BLOBs as they are.

use std::path::Path;

use tokio::sync::oneshot;

use super::{Record, StoreError};
use crate::audit::AuditEntry;

mod audit;
mod certificates;
mod crl;
pub mod inspect;
mod readers;
mod requests;
mod retention;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

/// The embedded SQLite store (`state_dir/hsmca.db`).
pub struct SqliteStore {
    readers: readers::Readers,
    writer: flume::Sender<writer::Job>,
    /// Certificate records announced and not yet committed.
    announced: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A value that does not read back as written.
fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        // SQLite names the column of a UNIQUE constraint that failed.
        rusqlite::Error::SqliteFailure(f, Some(m))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                && m.contains("certificates.serial") =>
        {
            StoreError::SerialTaken
        }
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation
                && matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
        {
            StoreError::Duplicate
        }
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => corrupt(e),
        _ => unavailable(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the SQLite store `state_dir/hsmca.db` and
    /// runs pending migrations; refuses a schema newer than this build's.
    pub async fn open_sqlite(state_dir: &Path) -> Result<Self, StoreError> {
        let state_dir = state_dir.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&state_dir))
            .await
            .map_err(unavailable)?
    }

    fn open_blocking(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", state_dir.display())))?;
        let path = state_dir.join(inspect::DB_FILE);
        let mut conn = writer::open(&path)?;
        schema::migrate(&mut conn, &path)?;
        let readers = readers::Readers::open(&path)?;
        let announced = std::sync::Arc::default();
        let writer = writer::start(conn, std::sync::Arc::clone(&announced))?;
        Ok(Self {
            readers,
            writer,
            announced,
        })
    }

    /// Hands a record, an audit entry or both to the group-commit writer and
    /// waits until they are durable.
    async fn write(
        &self,
        record: Option<Record>,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.send(writer::Job::Insert(writer::Pending {
            record,
            audit,
            done,
        }))
        .await?;
        rx.await
            .map_err(|_| unavailable("the store writer has stopped"))?
    }

    /// Runs `f` in a transaction of its own on the writer's connection and
    /// commits it (rolls back if `f` fails).
    async fn exec<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, rx) = oneshot::channel();
        self.send(writer::exec_job(f, done)).await?;
        rx.await
            .map_err(|_| unavailable("the store writer has stopped"))?
    }

    async fn send(&self, job: writer::Job) -> Result<(), StoreError> {
        self.writer
            .send_async(job)
            .await
            .map_err(|_| unavailable("the store writer has stopped"))
    }

    /// Runs `f` on a reader connection.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.readers.read(f).await
    }
}

/// The end of a listing query: newest first, strictly older than the
/// keyset cursor (create_time, id) when there is one, then the limit.
/// `next` hands out the placeholders; the caller binds the cursor's two
/// values and then the limit, in that order. The cursor is one row-value
/// comparison, which SQLite turns into a range on the (create_time, id)
/// index, so a deep page costs what the first one does.
fn newest_first_page(after: bool, next: &mut impl FnMut() -> String) -> String {
    let mut sql = String::new();
    if after {
        let (t, i) = (next(), next());
        sql += &format!(" AND (create_time, id) < ({t}, {i})");
    }
    sql += &format!(" ORDER BY create_time DESC, id DESC LIMIT {}", next());
    sql
}
