//! The readers: a few read-only connections, each used by one query at a
//! time on tokio's blocking threads. SQLite in WAL mode lets them read
//! while the writer commits; a reader sees the last commit that was durable
//! when its statement began.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::unavailable;
use crate::store::StoreError;

/// Connections kept for reads: queries beyond this many wait their turn.
/// Two cores here; more readers than that only add contention.
pub(super) const READERS: usize = 4;

pub(super) struct Readers {
    idle: flume::Receiver<Connection>,
    back: flume::Sender<Connection>,
}

/// A connection lent to one query; handed back when dropped, even if the
/// query panicked.
struct Lease {
    conn: Option<Connection>,
    back: flume::Sender<Connection>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.back.send(conn);
        }
    }
}

impl Readers {
    /// Opens [`READERS`] read-only connections to the (migrated) store at `path`.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let (back, idle) = flume::bounded(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(unavailable)?;
            conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
                .map_err(unavailable)?;
            back.send(conn).map_err(unavailable)?;
        }
        Ok(Self { idle, back })
    }

    /// Runs `f` on an idle reader, on a blocking thread.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self
            .idle
            .recv_async()
            .await
            .map_err(|_| unavailable("the store's readers are closed"))?;
        let lease = Lease {
            conn: Some(conn),
            back: self.back.clone(),
        };
        tokio::task::spawn_blocking(move || match &lease.conn {
            Some(conn) => f(conn),
            None => Err(unavailable("no reader connection")),
        })
        .await
        .map_err(|e| unavailable(format!("a store read failed: {e}")))?
    }
}
