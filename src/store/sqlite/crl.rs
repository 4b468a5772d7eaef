//! The last CRL issued: one row, replaced whole.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, map_err};
use crate::store::{CrlRecord, CrlStore, StoreError};

#[async_trait]
impl CrlStore for SqliteStore {
    async fn last_crl(&self) -> Result<Option<CrlRecord>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT number, this_update, next_update, pem FROM crl WHERE id = 1",
                [],
                |r| {
                    Ok(CrlRecord {
                        number: r.get(0)?,
                        this_update: r.get(1)?,
                        next_update: r.get(2)?,
                        pem: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn save_crl(&self, crl: CrlRecord) -> Result<(), StoreError> {
        self.exec(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO crl (id, number, this_update, next_update, pem) \
                 VALUES (1, ?1, ?2, ?3, ?4)",
                params![crl.number, crl.this_update, crl.next_update, crl.pem],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }
}
