//! Retention on SQLite: records of certificates long expired, and the
//! oldest audit entries, deleted in small batches (one transaction each on
//! the writer's connection, between group commits, so issuance waits for
//! at most one batch).

use rusqlite::{Connection, OptionalExtension, params};

use super::map_err;
use crate::store::StoreError;

/// Deletes up to `limit` records (and their tags) of certificates that
/// expired before `expired_before`, oldest first.
pub(super) fn purge_records(
    tx: &Connection,
    expired_before: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    let ids: Vec<String> = {
        let mut st = tx
            .prepare_cached(
                "SELECT id FROM certificates WHERE expire_time < ?1 ORDER BY expire_time LIMIT ?2",
            )
            .map_err(map_err)?;
        let rows = st
            .query_map(params![expired_before, limit], |r| r.get(0))
            .map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    let mut tags = tx
        .prepare_cached("DELETE FROM certificate_tags WHERE cert_id = ?1")
        .map_err(map_err)?;
    let mut cert = tx
        .prepare_cached("DELETE FROM certificates WHERE id = ?1")
        .map_err(map_err)?;
    for id in &ids {
        tags.execute(params![id]).map_err(map_err)?;
        cert.execute(params![id]).map_err(map_err)?;
    }
    Ok(ids.len() as u64)
}

/// Deletes up to `limit` of the oldest audit entries made before
/// `before_us` (a prefix of the log; never the newest entry, which is the
/// chain's head) and moves the checkpoint to the oldest entry kept: its
/// sequence number and its predecessor's hash, from which the rest of the
/// chain verifies.
pub(super) fn cut_audit(tx: &Connection, before_us: i64, limit: u32) -> Result<u64, StoreError> {
    let newest: Option<i64> = tx
        .query_row("SELECT MAX(seq) FROM audit_log", [], |r| r.get(0))
        .map_err(map_err)?;
    let Some(newest) = newest else {
        return Ok(0);
    };
    let mut cut = None;
    {
        let mut st = tx
            .prepare_cached("SELECT seq, time_us FROM audit_log ORDER BY seq LIMIT ?1")
            .map_err(map_err)?;
        let rows = st
            .query_map(params![limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(map_err)?;
        for row in rows {
            let (seq, time_us) = row.map_err(map_err)?;
            if time_us >= before_us || seq >= newest {
                break;
            }
            cut = Some(seq);
        }
    }
    let Some(cut) = cut else {
        return Ok(0);
    };
    let n = tx
        .execute("DELETE FROM audit_log WHERE seq <= ?1", params![cut])
        .map_err(map_err)?;
    let kept: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, prev_hash FROM audit_log ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(map_err)?;
    if let Some((seq, prev_hash)) = kept {
        tx.execute(
            "INSERT OR REPLACE INTO audit_checkpoint (id, seq, prev_hash) VALUES (1, ?1, ?2)",
            params![seq, prev_hash],
        )
        .map_err(map_err)?;
    }
    Ok(n as u64)
}
