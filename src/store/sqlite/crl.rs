//! The last CRL issued: one row, replaced whole.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, map_err};
use crate::store::{CrlRecord, CrlStore, StoreError};

#[async_trait]
impl CrlStore for SqliteStore {
    async fn last_crl(&self) -> Result<Option<CrlRecord>, StoreError> {
        let row = sqlx::query("SELECT number, this_update, next_update, pem FROM crl WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| {
            let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
            Ok(CrlRecord {
                number: r.try_get("number").map_err(c)?,
                this_update: r.try_get("this_update").map_err(c)?,
                next_update: r.try_get("next_update").map_err(c)?,
                pem: r.try_get("pem").map_err(c)?,
            })
        })
        .transpose()
    }

    async fn save_crl(&self, crl: CrlRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("DELETE FROM crl WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("INSERT INTO crl (id, number, this_update, next_update, pem) VALUES (1, $1, $2, $3, $4)")
            .bind(crl.number)
            .bind(crl.this_update)
            .bind(crl.next_update)
            .bind(crl.pem)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }
}
