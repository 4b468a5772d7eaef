//! The SQLite store. Certificate records and audit entries go through one
//! writer thread that commits them in batches (group commit, see
//! [`writer`]): every waiting insert shares the next transaction, and each
//! caller hears back only after that transaction is durable. Everything
//! else (reads, revocations, certificate requests) goes through sqlx's
//! pool. SQLite runs in WAL mode with `synchronous=FULL`, so a commit
//! survives power loss.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    AnyPool,
    any::{AnyConnectOptions, AnyPoolOptions},
};
use tokio::sync::oneshot;

use super::{Record, StoreError};
use crate::audit::AuditEntry;

mod audit;
mod certificates;
mod crl;
pub mod inspect;
mod requests;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

/// The embedded SQLite store (`state_dir/hsmca.db`).
pub struct SqliteStore {
    pool: AnyPool,
    writer: flume::Sender<writer::Pending>,
    /// Certificate records announced and not yet committed.
    announced: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        return StoreError::Duplicate;
    }
    unavailable(e)
}

impl SqliteStore {
    /// Opens (creating if needed) the SQLite store `state_dir/hsmca.db` and
    /// runs pending migrations.
    pub async fn open_sqlite(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", state_dir.display())))?;
        let path = state_dir.join("hsmca.db");
        let conn = writer::open(&path)?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        sqlx::any::install_default_drivers();
        let opts = AnyConnectOptions::from_str(&url).map_err(unavailable)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // WAL is already set (writer::open) and persists.
                    for pragma in [
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 5000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
        schema::migrate(&pool).await?;
        let announced = std::sync::Arc::default();
        let writer = writer::start(conn, std::sync::Arc::clone(&announced))?;
        Ok(Self {
            pool,
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
        self.writer
            .send_async(writer::Pending {
                record,
                audit,
                done,
            })
            .await
            .map_err(|_| unavailable("the store writer has stopped"))?;
        rx.await
            .map_err(|_| unavailable("the store writer has stopped"))?
    }
}

/// The end of a listing query: newest first, strictly older than the
/// keyset cursor (create_time, id) when there is one, then the limit.
/// `next` hands out the placeholders; the caller binds the cursor's three
/// values and then the limit, in that order.
fn newest_first_page(after: bool, next: &mut impl FnMut() -> String) -> String {
    let mut sql = String::new();
    if after {
        let (t1, t2, i) = (next(), next(), next());
        sql += &format!(" AND (create_time < {t1} OR (create_time = {t2} AND id < {i}))");
    }
    sql += &format!(" ORDER BY create_time DESC, id DESC LIMIT {}", next());
    sql
}
