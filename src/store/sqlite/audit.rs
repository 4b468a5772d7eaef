//! The audit log: entries go through the group-commit writer (chained
//! there, see [`super::writer`]); reads page through it by sequence number.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, map_err};
use crate::{
    audit::{AuditEntry, AuditRow},
    store::{AuditStore, StoreError},
};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(None, Some(entry)).await
    }

    async fn audit_log(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, entry, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let c = |e: sqlx::Error| StoreError::Corrupt(format!("audit log: {e}"));
                Ok(AuditRow {
                    seq: r.try_get("seq").map_err(c)?,
                    entry: r.try_get("entry").map_err(c)?,
                    prev_hash: r.try_get("prev_hash").map_err(c)?,
                    hash: r.try_get("hash").map_err(c)?,
                })
            })
            .collect()
    }
}
