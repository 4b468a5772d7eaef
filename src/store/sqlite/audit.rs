//! The audit log: entries go through the group-commit writer (chained
//! there, see [`super::writer`]); reads page through it by sequence number.
//! Retention cuts its oldest entries only together with the checkpoint
//! (see [`super::retention`]).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, map_err};
use crate::{
    audit::{AuditEntry, AuditRow},
    store::{AuditCheckpoint, AuditStore, StoreError},
};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(None, Some(entry)).await
    }

    async fn audit_log(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT seq, entry, prev_hash, hash FROM audit_log WHERE seq > ?1 \
                     ORDER BY seq LIMIT ?2",
                )
                .map_err(map_err)?;
            let rows = st
                .query_map(params![after_seq, limit], |r| {
                    Ok(AuditRow {
                        seq: r.get(0)?,
                        entry: r.get(1)?,
                        prev_hash: r.get(2)?,
                        hash: r.get(3)?,
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT seq, prev_hash FROM audit_checkpoint WHERE id = 1",
                [],
                |r| {
                    Ok(AuditCheckpoint {
                        seq: r.get(0)?,
                        prev_hash: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn cut_audit(&self, before_us: i64, limit: u32) -> Result<u64, StoreError> {
        self.exec(move |tx| super::retention::cut_audit(tx, before_us, limit))
            .await
    }
}
