//! CRLs: numbers from one sequence, whichever node signs; every CRL kept
//! by number (one CRL per number), the newest handed out.

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, corrupt, map_err};
use crate::store::{CrlRecord, CrlStore, StoreError};

#[async_trait]
impl CrlStore for PgStore {
    async fn next_crl_number(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT nextval('crl_number') AS n")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?
            .try_get("n")
            .map_err(corrupt)
    }

    async fn last_crl(&self) -> Result<Option<CrlRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT number, this_update, next_update, pem FROM crls ORDER BY number DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| {
            Ok(CrlRecord {
                number: r.try_get("number").map_err(corrupt)?,
                this_update: r.try_get("this_update").map_err(corrupt)?,
                next_update: r.try_get("next_update").map_err(corrupt)?,
                pem: r.try_get("pem").map_err(corrupt)?,
            })
        })
        .transpose()
    }

    async fn save_crl(&self, crl: CrlRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO crls (number, this_update, next_update, pem) VALUES ($1, $2, $3, $4)",
        )
        .bind(crl.number)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(&crl.pem)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        // Only the newest few are kept; the sequence keeps the numbering.
        sqlx::query("DELETE FROM crls WHERE number < $1 - 100")
            .bind(crl.number)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }
}
