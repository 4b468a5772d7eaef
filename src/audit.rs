//! The audit log: one entry per signing operation (certificate or CRL) and
//! per refused request, kept in the store as a hash chain. Each record holds
//! the SHA-256 of the record before it, so editing, deleting or reordering
//! records breaks the chain at the first record touched, and
//! `hsmca audit verify` says which. (Cutting records off the end leaves a
//! valid shorter chain; the `audit` tracing event carries every record's
//! hash, so a log shipped elsewhere shows what the head was.)

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{issue::Issued, names::name_list, peer::identity::Identity};

/// The previous hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuditEntry {
    /// Unix microseconds.
    pub time_us: i64,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub user: Option<String>,
    pub exe: Option<String>,
    /// The RPC or background task, e.g. `GenerateClientCertificate`,
    /// `renewal`, `crl`.
    pub operation: String,
    pub profile: String,
    /// `DNS:…`, `URI:…`, `IP:…`, `CN:…`.
    pub names: Vec<String>,
    /// Lowercase hex; empty when nothing was signed.
    pub serial: String,
    /// SHA-256 of the TBSCertificate (or TBSCertList) that was signed.
    pub tbs_sha256: String,
    pub key_label: String,
    /// `issued`, `signed`, `refused: CODE: reason`, or [`DISCARDED`].
    pub outcome: String,
}

impl AuditEntry {
    /// An entry for `who` doing `operation`, stamped now.
    pub fn by(who: Option<&Identity>, operation: &str) -> Self {
        Self {
            time_us: crate::time::now_us(),
            uid: who.map(|w| w.uid),
            gid: who.map(|w| w.gid),
            pid: who.and_then(|w| w.pid),
            user: who.and_then(|w| w.user.clone()),
            exe: who.and_then(|w| w.exe.as_ref().map(|e| e.display().to_string())),
            operation: operation.to_owned(),
            ..Default::default()
        }
    }
}

impl AuditEntry {
    /// The entry for a certificate just issued to `who` by `operation`.
    pub fn issued(issued: &Issued, who: Option<&Identity>, operation: &str) -> Self {
        let mut e = Self::by(who, operation);
        e.profile = issued.profile.name().to_owned();
        e.names = name_list(&issued.names);
        e.serial = issued.serial_hex.clone();
        e.tbs_sha256 = issued.tbs_sha256.clone();
        e.key_label = issued.key_label.clone();
        e.outcome = "issued".into();
        e
    }

    /// The entry for a certificate the token signed that is never handed
    /// out: its serial was already in the store (see
    /// `store::StoreError::SerialTaken`), so it is signed again under a
    /// new serial, which gets an entry of its own.
    pub fn discarded(issued: &Issued, who: Option<&Identity>, operation: &str) -> Self {
        tracing::warn!(serial = %issued.serial_hex, "the serial is already in the store; signing again with a new one");
        let mut e = Self::issued(issued, who, operation);
        e.outcome = DISCARDED.into();
        e
    }
}

/// The outcome of a [`AuditEntry::discarded`] entry.
pub const DISCARDED: &str =
    "discarded: the serial is already in the store; signed again with a new serial";

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    /// The entry as JSON, exactly as hashed.
    pub entry: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of a record: SHA-256 over the previous hash and the entry text.
pub fn chain_hash(prev_hash: &str, entry: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(entry.as_bytes());
    hex::encode(h.finalize())
}

/// The first place the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("record {seq} was edited: its hash does not match its content")]
    Edited { seq: i64 },
    #[error("records {from} to {to} are missing (deleted) before record {next}")]
    Missing { from: i64, to: i64, next: i64 },
    #[error(
        "record {seq} does not follow record {prev}: its previous-hash is not record {prev}'s hash (records reordered or replaced)"
    )]
    Reordered { seq: i64, prev: i64 },
    #[error("record {seq} is not the first record, but claims to be")]
    BadStart { seq: i64 },
}

/// Checks rows (in `seq` order) that continue from `(last seq, last hash)`
/// (`(0, GENESIS)` for the start). Returns the new head.
pub fn verify_rows(start: (i64, String), rows: &[AuditRow]) -> Result<(i64, String), ChainBreak> {
    let (mut seq, mut hash) = start;
    for r in rows {
        if r.seq != seq + 1 {
            return Err(ChainBreak::Missing {
                from: seq + 1,
                to: r.seq - 1,
                next: r.seq,
            });
        }
        if chain_hash(&r.prev_hash, &r.entry) != r.hash {
            return Err(ChainBreak::Edited { seq: r.seq });
        }
        if r.prev_hash != hash {
            return Err(if seq == 0 {
                ChainBreak::BadStart { seq: r.seq }
            } else {
                ChainBreak::Reordered {
                    seq: r.seq,
                    prev: seq,
                }
            });
        }
        seq = r.seq;
        hash = r.hash.clone();
    }
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let entry = format!("{{\"n\":{seq}}}");
                let hash = chain_hash(&prev, &entry);
                let row = AuditRow {
                    seq,
                    entry,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn intact_and_broken_chains() {
        let rows = chain(5);
        assert_eq!(verify_rows((0, GENESIS.into()), &rows).unwrap().0, 5);
        // Continues from a head.
        let head = (2, rows[1].hash.clone());
        assert!(verify_rows(head, &rows[2..]).is_ok());

        let mut edited = rows.clone();
        edited[2].entry = "{\"n\":99}".into();
        assert_eq!(
            verify_rows((0, GENESIS.into()), &edited),
            Err(ChainBreak::Edited { seq: 3 })
        );
        // Edited and re-hashed: the next record no longer follows it.
        edited[2].hash = chain_hash(&edited[2].prev_hash, &edited[2].entry);
        assert_eq!(
            verify_rows((0, GENESIS.into()), &edited),
            Err(ChainBreak::Reordered { seq: 4, prev: 3 })
        );

        let mut deleted = rows.clone();
        deleted.remove(2);
        assert_eq!(
            verify_rows((0, GENESIS.into()), &deleted),
            Err(ChainBreak::Missing {
                from: 3,
                to: 3,
                next: 4
            })
        );

        let mut swapped = rows.clone();
        let (a, b) = (swapped[2].clone(), swapped[3].clone());
        swapped[2] = AuditRow { seq: 3, ..b };
        swapped[3] = AuditRow { seq: 4, ..a };
        assert_eq!(
            verify_rows((0, GENESIS.into()), &swapped),
            Err(ChainBreak::Reordered { seq: 3, prev: 2 })
        );

        let mut first_gone = rows;
        first_gone.remove(0);
        assert!(matches!(
            verify_rows((0, GENESIS.into()), &first_gone),
            Err(ChainBreak::Missing { from: 1, .. })
        ));
    }
}
