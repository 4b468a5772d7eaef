//! `hsmca store copy`: moves a single-host deployment's SQLite store into
//! PostgreSQL — certificate records with their request_id replies and
//! revocations, certificate requests and the renewal times their limit
//! counts, the audit chain as it was hashed (from its checkpoint when
//! retention has cut it), and the CRL numbering — then checks the counts
//! and the copied chain.

use super::{
    AuditStore, CertificateStore, CrlStore, ListQuery, RequestQuery, RequestStore, StoreError,
    postgres::{PgStore, import::Counts},
    sqlite::SqliteStore,
};
use crate::{
    audit::{GENESIS, verify_rows},
    config::StateConfig,
};

/// Rows read and written per transaction.
const PAGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the destination is not empty ({0:?}); copy into an empty database, or pass --force to add to it"
    )]
    NotEmpty(Counts),
    #[error("the copy does not match its source: {0}")]
    Mismatch(String),
}

/// What was copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Copied {
    pub certificates: i64,
    pub requests: i64,
    pub renewals: i64,
    pub audit: i64,
    pub crl_number: Option<i64>,
}

/// Copies the SQLite store in `from_dir` into PostgreSQL at `to_url`;
/// `progress` hears what was done so far (for a terminal).
pub async fn copy(
    from_dir: &std::path::Path,
    to_url: &str,
    state: &StateConfig,
    force: bool,
    progress: &(dyn Fn(&str, i64) + Sync),
) -> Result<Copied, CopyError> {
    let from = SqliteStore::open_sqlite(from_dir).await?;
    let to = PgStore::open(to_url, state).await?;
    let before = to.counts().await?;
    if before != Counts::default() && !force {
        return Err(CopyError::NotEmpty(before));
    }
    let mut done = Copied::default();

    let mut after = None;
    loop {
        let page = from
            .list(ListQuery {
                after: after.clone(),
                limit: PAGE,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.create_time_us, last.id.clone()));
        to.import_records(&page).await?;
        done.certificates += page.len() as i64;
        progress("certificate records", done.certificates);
    }

    let mut after = None;
    loop {
        let page = from
            .list_requests(RequestQuery {
                after: after.clone(),
                limit: PAGE,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.create_time_us, last.id.clone()));
        to.import_requests(&page).await?;
        done.requests += page.len() as i64;
        progress("certificate requests", done.requests);
    }

    let mut row = 0;
    loop {
        let (page, last) = from.renewals_page(row, PAGE).await?;
        if page.is_empty() {
            break;
        }
        row = last;
        to.import_renewals(&page).await?;
        done.renewals += page.len() as i64;
        progress("renewal times", done.renewals);
    }

    // A log that retention has cut starts at its checkpoint, which moves
    // over with it (before the rows, so a reader never sees a cut log
    // without it).
    let checkpoint = from.audit_checkpoint().await?;
    if let Some(cp) = &checkpoint {
        to.import_audit_checkpoint(cp).await?;
    }
    let mut seq = 0;
    loop {
        let rows = from.audit_log(seq, PAGE).await?;
        let Some(last) = rows.last() else { break };
        seq = last.seq;
        to.import_audit(&rows).await?;
        done.audit += rows.len() as i64;
        progress("audit records", done.audit);
    }

    if let Some(crl) = from.last_crl().await? {
        to.import_crl(&crl).await?;
        done.crl_number = Some(crl.number);
    }

    // The checks: counts, and the chain as the destination holds it.
    let after = to.counts().await?;
    let want = Counts {
        certificates: before.certificates + done.certificates,
        requests: before.requests + done.requests,
        audit: before.audit + done.audit,
        renewals: before.renewals + done.renewals,
    };
    if after != want {
        return Err(CopyError::Mismatch(format!(
            "the destination holds {after:?}, expected {want:?}"
        )));
    }
    let start = match &checkpoint {
        Some(cp) => (cp.seq - 1, cp.prev_hash.clone()),
        None => (0, GENESIS.to_owned()),
    };
    // The chain ends at the source's last record: its count on a whole
    // log, the last sequence number copied on a cut one.
    let want_end = if checkpoint.is_some() {
        seq
    } else {
        want.audit
    };
    let mut head = start;
    loop {
        let rows = to.audit_log(head.0, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        head = verify_rows(head, &rows)
            .map_err(|e| CopyError::Mismatch(format!("the copied audit chain is broken: {e}")))?;
    }
    if head.0 != want_end {
        return Err(CopyError::Mismatch(format!(
            "the copied audit chain ends at record {}, expected {want_end}",
            head.0
        )));
    }
    Ok(done)
}
