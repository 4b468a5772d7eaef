//! `hsmca audit list|verify`: read the audit log straight from the store
//! (run as the daemon's user, beside it; SQLite in WAL mode lets both read).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliResult, client::write_out};
use crate::{
    audit::{AuditEntry, GENESIS, verify_rows},
    config::Config,
    store::Store,
};

/// Records read per query.
const PAGE: u32 = 1000;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print audit records, oldest first.
    List(ListArgs),
    /// Check the hash chain; name the first record that was edited, deleted
    /// or moved.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only records after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many records.
    #[arg(long)]
    pub limit: Option<u32>,
    /// One JSON object per line: seq, hash, prev_hash and the entry.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(long, short)]
    pub config: PathBuf,
}

/// The daemon's store; refuses a state directory without one rather than
/// creating an empty store that would verify as "intact".
async fn open(config: &std::path::Path) -> CliResult<std::sync::Arc<dyn Store>> {
    let cfg = Config::load(config)?;
    let db = cfg.state.dir.join("hsmca.db");
    if cfg.state.database()? == crate::config::Database::Sqlite && !db.is_file() {
        return Err(format!(
            "no store at {} (is state.dir right, and has the daemon run?)",
            db.display()
        )
        .into());
    }
    Ok(crate::store::open(&cfg.state).await?)
}

fn line(seq: i64, e: &AuditEntry) -> String {
    let time = crate::time::rfc3339(
        &prost_types::Timestamp {
            seconds: e.time_us.div_euclid(1_000_000),
            nanos: (e.time_us.rem_euclid(1_000_000) * 1000) as i32,
        },
        true,
    );
    let who = match (&e.uid, &e.user) {
        (Some(uid), Some(user)) => format!("uid={uid}({user})"),
        (Some(uid), None) => format!("uid={uid}"),
        _ => "daemon".to_owned(),
    };
    let mut s = format!("{seq:>8} {time} {who} {}", e.operation);
    if !e.profile.is_empty() {
        s.push_str(&format!(" profile={}", e.profile));
    }
    if !e.serial.is_empty() {
        s.push_str(&format!(" serial={}", e.serial));
    }
    if !e.names.is_empty() {
        s.push_str(&format!(" names={}", e.names.join(",")));
    }
    s.push_str(&format!(" {}", e.outcome));
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        + "\n"
}

/// What `audit verify` says of an intact log: how many records, where the
/// kept log starts when retention has cut it, and the head.
fn verify_summary(start: i64, head: &(i64, String), cut: bool) -> String {
    let n = head.0 - start;
    if cut {
        format!(
            "audit log intact: {n} records, kept from record {} (earlier records were deleted \
             by retention; the chain verifies from the checkpoint), head {}\n",
            start + 1,
            head.1
        )
    } else {
        format!("audit log intact: {n} records, head {}\n", head.1)
    }
}

pub async fn run(cmd: AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::List(a) => {
            let store = open(&a.config).await?;
            let mut after = a.after;
            let mut left = a.limit.unwrap_or(u32::MAX);
            while left > 0 {
                let rows = store.audit_log(after, PAGE.min(left)).await?;
                if rows.is_empty() {
                    break;
                }
                let mut out = String::new();
                for r in &rows {
                    if a.json {
                        let entry: serde_json::Value = serde_json::from_str(&r.entry)
                            .unwrap_or(serde_json::Value::String(r.entry.clone()));
                        out.push_str(&serde_json::to_string(&serde_json::json!({
                            "seq": r.seq,
                            "hash": r.hash,
                            "prev_hash": r.prev_hash,
                            "entry": entry,
                        }))?);
                        out.push('\n');
                    } else {
                        match serde_json::from_str::<AuditEntry>(&r.entry) {
                            Ok(e) => out.push_str(&line(r.seq, &e)),
                            Err(_) => out.push_str(&format!("{:>8} (unreadable entry)\n", r.seq)),
                        }
                    }
                }
                write_out(None, &out)?;
                after = rows.last().map_or(after, |r| r.seq);
                left = left.saturating_sub(rows.len() as u32);
            }
            Ok(())
        }
        AuditCommand::Verify(a) => {
            let store = open(&a.config).await?;
            // A log that retention has cut verifies from its checkpoint:
            // the first kept record's predecessor hash, kept for this.
            let checkpoint = store.audit_checkpoint().await?;
            let start = match &checkpoint {
                Some(cp) => (cp.seq - 1, cp.prev_hash.clone()),
                None => (0, GENESIS.to_owned()),
            };
            let mut head = start.clone();
            loop {
                let rows = store.audit_log(head.0, PAGE).await?;
                if rows.is_empty() {
                    break;
                }
                // A gap before the first row of a page shows as a missing range.
                head = verify_rows(head, &rows).map_err(|e| format!("audit log broken: {e}"))?;
            }
            write_out(None, &verify_summary(start.0, &head, checkpoint.is_some()))
        }
    }
}
