//! Bulk writes for `hsmca store copy`: records (with their revocations),
//! certificate requests, audit rows exactly as they were chained, and the
//! CRL numbering, each batch in one transaction.

use sqlx::Row;

use super::{PgStore, certificates::insert_records, corrupt, map_err};
use crate::{
    audit::AuditRow,
    store::{AuditCheckpoint, CrlRecord, Record, RequestRow, StoreError},
};

/// Row counts of a store, to compare a copy with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub certificates: i64,
    pub requests: i64,
    pub audit: i64,
    /// Renewal times the renewal limit counts.
    pub renewals: i64,
}

impl PgStore {
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM certificates) AS c, \
             (SELECT count(*) FROM certificate_requests) AS r, \
             (SELECT count(*) FROM audit_log) AS a, \
             (SELECT count(*) FROM renewals) AS n",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(Counts {
            certificates: row.try_get("c").map_err(corrupt)?,
            requests: row.try_get("r").map_err(corrupt)?,
            audit: row.try_get("a").map_err(corrupt)?,
            renewals: row.try_get("n").map_err(corrupt)?,
        })
    }

    pub async fn import_records(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Revocations go in with the rows.
        let rows: Vec<&Record> = records.iter().collect();
        insert_records(&mut tx, &rows).await?;
        tx.commit().await.map_err(map_err)
    }

    pub async fn import_requests(&self, rows: &[RequestRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for r in rows {
            sqlx::query(
                "INSERT INTO certificate_requests (id, owner_uid, owner_gid, request_id, \
                 fingerprint, dup_key, names_key, state, due_at, create_time, resource) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&r.id)
            .bind(i64::from(r.owner_uid))
            .bind(i64::from(r.owner_gid))
            .bind(&r.request_id)
            .bind(&r.fingerprint)
            .bind(&r.dup_key)
            .bind(&r.names_key)
            .bind(i64::from(r.state))
            .bind(r.due_at)
            .bind(r.create_time_us)
            .bind(&r.resource)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            super::requests::insert_labels(&mut tx, &r.id, &r.labels).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// Audit rows as they are (sequence, entry, hashes): the chain moves
    /// over unchanged and verifies the same.
    pub async fn import_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for r in rows {
            sqlx::query(
                "INSERT INTO audit_log (seq, entry, prev_hash, hash, time_us) VALUES ($1, $2, \
                 $3, $4, COALESCE(($2::json ->> 'time_us')::bigint, 0))",
            )
            .bind(r.seq)
            .bind(&r.entry)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// Where a log that retention has cut starts, so the copied chain
    /// verifies from there as the source's did.
    pub async fn import_audit_checkpoint(&self, cp: &AuditCheckpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoint (id, seq, prev_hash) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, prev_hash = EXCLUDED.prev_hash",
        )
        .bind(cp.seq)
        .bind(&cp.prev_hash)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// Renewal times (names_key, time), so the renewal limit counts the
    /// renewals made before the copy.
    pub async fn import_renewals(&self, rows: &[(String, i64)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for (names_key, time) in rows {
            sqlx::query("INSERT INTO renewals (names_key, time) VALUES ($1, $2)")
                .bind(names_key)
                .bind(time)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// The last CRL, and the numbering continuing after it.
    pub async fn import_crl(&self, crl: &CrlRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO crls (number, this_update, next_update, pem) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (number) DO NOTHING",
        )
        .bind(crl.number)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(&crl.pem)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "SELECT setval('crl_number', GREATEST($1, (SELECT last_value FROM crl_number)))",
        )
        .bind(crl.number)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }
}
