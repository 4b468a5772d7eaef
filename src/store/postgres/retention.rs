//! Retention on PostgreSQL: records of certificates long expired, and the
//! oldest audit entries, deleted in small batches, one short transaction
//! each. One daemon at a time does it: a batch starts by trying a
//! transaction advisory lock and, when another daemon holds it, deletes
//! nothing. Cutting the audit log also holds the chain's lock, so no
//! append slips between the cut and the checkpoint.

use sqlx::Row;

use super::{
    PgStore, corrupt,
    locks::{AUDIT_CHAIN, RETENTION},
    map_err,
};
use crate::store::{AuditCheckpoint, StoreError};

impl PgStore {
    /// Whether this transaction may purge now (no other daemon is).
    async fn purge_turn(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        what: i32,
    ) -> Result<bool, StoreError> {
        sqlx::query("SELECT pg_try_advisory_xact_lock($1, $2) AS got")
            .bind(RETENTION)
            .bind(what)
            .fetch_one(&mut **tx)
            .await
            .map_err(map_err)?
            .try_get("got")
            .map_err(corrupt)
    }

    pub(super) async fn purge_records(
        &self,
        expired_before: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        if !Self::purge_turn(&mut tx, 0).await? {
            return Ok(0);
        }
        // The tags go with their records (ON DELETE CASCADE).
        let n = sqlx::query(
            "DELETE FROM certificates WHERE id IN (SELECT id FROM certificates \
             WHERE expire_time < $1 ORDER BY expire_time LIMIT $2)",
        )
        .bind(expired_before)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }

    pub(super) async fn cut_audit_log(
        &self,
        before_us: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        if !Self::purge_turn(&mut tx, 1).await? {
            return Ok(0);
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(AUDIT_CHAIN)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // A prefix of the log, made before `before_us`, never the head.
        let cut: Option<i64> = sqlx::query(
            "SELECT MAX(seq) AS cut FROM (SELECT seq, time_us FROM audit_log ORDER BY seq LIMIT $1) p \
             WHERE seq < (SELECT MAX(seq) FROM audit_log) \
             AND NOT EXISTS (SELECT 1 FROM audit_log e WHERE e.seq <= p.seq AND e.time_us >= $2)",
        )
        .bind(i64::from(limit))
        .bind(before_us)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?
        .try_get("cut")
        .map_err(corrupt)?;
        let Some(cut) = cut else {
            return Ok(0);
        };
        let n = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
            .bind(cut)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        sqlx::query(
            "INSERT INTO audit_checkpoint (id, seq, prev_hash) \
             SELECT 1, seq, prev_hash FROM audit_log ORDER BY seq LIMIT 1 \
             ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, prev_hash = EXCLUDED.prev_hash",
        )
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }

    pub(super) async fn checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError> {
        let row = sqlx::query("SELECT seq, prev_hash FROM audit_checkpoint WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| {
            Ok(AuditCheckpoint {
                seq: r.try_get("seq").map_err(corrupt)?,
                prev_hash: r.try_get("prev_hash").map_err(corrupt)?,
            })
        })
        .transpose()
    }
}
