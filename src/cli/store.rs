//! `hsmca store copy`: move a single-host SQLite store into PostgreSQL
//! (see [`crate::store::copy`]). Run it with the daemons stopped.

use std::{io::IsTerminal, path::PathBuf};

use clap::{Args, Subcommand};

use super::{CliResult, client::write_out};
use crate::config::{Config, Database, StateConfig};

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy a SQLite store into an empty PostgreSQL database: records with
    /// their request_id replies, certificate requests with their renewal
    /// times, the audit chain and the CRL number; the counts and the chain
    /// are checked at the end.
    Copy(CopyArgs),
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// `sqlite:DIR`: the state directory holding hsmca.db (or the file).
    #[arg(long)]
    pub from: String,
    /// `postgres://USER@HOST/DATABASE[?…]`, as `state.database` takes it.
    #[arg(long)]
    pub to: String,
    /// A config whose `[state]` gives the PostgreSQL password file or
    /// credential (the password is never an argument).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Copy even though the destination already holds records.
    #[arg(long)]
    pub force: bool,
}

fn source_dir(from: &str) -> CliResult<PathBuf> {
    let path = from
        .strip_prefix("sqlite:")
        .ok_or("--from takes sqlite:DIR (the state directory holding hsmca.db)")?;
    let path = PathBuf::from(path.strip_prefix("//").unwrap_or(path));
    let dir = if path.file_name().is_some_and(|n| n == "hsmca.db") {
        path.parent().map(PathBuf::from).unwrap_or_default()
    } else {
        path
    };
    if !dir.join("hsmca.db").is_file() {
        return Err(format!(
            "--from: no SQLite store at {}",
            dir.join("hsmca.db").display()
        )
        .into());
    }
    Ok(dir)
}

pub async fn run(cmd: StoreCommand) -> CliResult {
    let StoreCommand::Copy(a) = cmd;
    let from = source_dir(&a.from)?;
    let mut state = match &a.config {
        Some(c) => Config::load(c)?.state,
        None => StateConfig::default(),
    };
    state.database = Some(a.to.clone());
    let Database::Postgres(url) = state
        .database()
        .map_err(|e| e.to_string().replace("config key state.database", "--to"))?
    else {
        return Err("--to takes postgres://USER@HOST/DATABASE".into());
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = |what: &str, n: i64| {
        if terminal {
            eprint!("\r\x1b[Kcopied {n} {what}");
        }
    };
    let copied = crate::store::copy::copy(&from, &url, &state, a.force, &progress).await;
    if terminal {
        eprintln!();
    }
    let c = copied?;
    write_out(
        None,
        &format!(
            "copied {} certificate records, {} certificate requests, {} renewal times, {} audit records{}; counts and audit chain verified\n",
            c.certificates,
            c.requests,
            c.renewals,
            c.audit,
            c.crl_number
                .map(|n| format!(", CRL numbers continue after {n}"))
                .unwrap_or_default()
        ),
    )
}
