//! The audit log: entries go through the group-commit writer (chained
//! there, under the chain's lock); reads page through it by sequence.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, corrupt, map_err};
use crate::{
    audit::{AuditEntry, AuditRow},
    store::{AuditCheckpoint, AuditStore, StoreError},
};

#[async_trait]
impl AuditStore for PgStore {
    async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(None, Some(entry)).await
    }

    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError> {
        self.checkpoint().await
    }

    async fn cut_audit(&self, before_us: i64, limit: u32) -> Result<u64, StoreError> {
        self.cut_audit_log(before_us, limit).await
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
                Ok(AuditRow {
                    seq: r.try_get("seq").map_err(corrupt)?,
                    entry: r.try_get("entry").map_err(corrupt)?,
                    prev_hash: r.try_get("prev_hash").map_err(corrupt)?,
                    hash: r.try_get("hash").map_err(corrupt)?,
                })
            })
            .collect()
    }
}
