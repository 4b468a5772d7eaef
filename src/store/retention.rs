//! Retention: a store that does not grow without bound. Records of
//! certificates expired for longer than `state.retention`, and audit
//! entries older than that, are deleted in the background in small
//! batches, each a short transaction of its own, so issuance waits for at
//! most one batch. The audit log is cut only together with its checkpoint
//! (see [`AuditStore::cut_audit`]), so what is kept still verifies.

use std::{sync::Arc, time::Duration};

use super::{AuditStore, CertificateStore, Store, StoreError};
use crate::time::{unix_now, unix_us};

/// Rows one batch deletes: a few milliseconds of writing.
pub const BATCH: u32 = 500;

/// How often the task looks for expired rows.
const EVERY: Duration = Duration::from_secs(3600);

/// A pause between batches, for the writes waiting behind them.
const PAUSE: Duration = Duration::from_millis(5);

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub records: u64,
    pub audit_entries: u64,
}

/// Deletes everything older than `retention` (as of now), batch by batch.
pub async fn purge_once(store: &dyn Store, retention: Duration) -> Result<Purged, StoreError> {
    let mut purged = Purged::default();
    let keep = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let expired_before = unix_now().saturating_sub(keep);
    loop {
        let n = CertificateStore::purge_expired(store, expired_before, BATCH).await?;
        purged.records += n;
        if n < u64::from(BATCH) {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    let before_us =
        unix_us(std::time::SystemTime::now()).saturating_sub(keep.saturating_mul(1_000_000));
    loop {
        let n = AuditStore::cut_audit(store, before_us, BATCH).await?;
        purged.audit_entries += n;
        if n < u64::from(BATCH) {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(purged)
}

/// Runs [`purge_once`] at start and every hour after, for ever; failures
/// are logged and tried again at the next pass.
pub async fn run(store: Arc<dyn Store>, retention: Duration) {
    loop {
        match purge_once(store.as_ref(), retention).await {
            Ok(p) if p == Purged::default() => {}
            Ok(p) => tracing::info!(
                records = p.records,
                audit_entries = p.audit_entries,
                retention = %humantime::format_duration(retention),
                "retention: deleted what expired"
            ),
            Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again later"),
        }
        tokio::time::sleep(EVERY).await;
    }
}
