//! `hsmca bench --store-fill N [--store postgres]`: what a large store
//! costs. A fleet on short-lived certificates writes millions of records a
//! day, and `state.retention` keeps the expired ones for 90 days by
//! default, so a store of ten million records is ordinary. Measured here:
//! the store's size per million certificate records (with their audit
//! entries and every index), and issuance at each `--clients` on that
//! store against the same store empty.
//!
//! The store is grown from the certificates the empty run issued: each
//! round copies up to as many records as there are, with fresh ids and
//! serials, no request_id, expiry spread over the last 90 days (what
//! retention keeps), and one audit entry each, numbered below the real
//! chain so the daemon's own appends carry on from its tail. The copies
//! are real certificates' bytes, so the sizes are those of real records.
//! (The copied audit entries do not verify as a chain: this store is for
//! measuring, not for `hsmca audit verify`.)

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    BenchArgs,
    daemon::{Daemon, Testbed},
    progress,
    stores::{self, Server},
};
use crate::client::CliResult;

/// Expiry of the copies: spread over this many seconds before now.
const SPREAD_S: i64 = 90 * 24 * 3600;
/// Copied per statement, so one statement's undo/WAL stays bounded.
const CHUNK: u64 = 500_000;

#[derive(Debug, Clone, Serialize)]
pub struct FillReport {
    pub store: String,
    pub records: u64,
    pub fill_seconds: f64,
    pub bytes: u64,
    pub bytes_per_million: f64,
    pub empty: Vec<stores::StoreRun>,
    pub filled: Vec<stores::StoreRun>,
}

pub async fn run(args: &BenchArgs, setup: &Path, seconds: f64, n: u64) -> CliResult {
    let key = args.keys.first().map_or("p256", String::as_str);
    let postgres = args.store == "postgres";
    let pg_dir;
    let server = if postgres {
        progress(args, "starting a private PostgreSQL server");
        pg_dir = tempfile::Builder::new()
            .prefix("hsmca-bench-pg-")
            .tempdir()?;
        Some(Server::start(setup, &pg_dir.path().join("postgres"))?)
    } else {
        None
    };
    let url = match &server {
        Some(s) => Some(s.url("hsmca")?),
        None => None,
    };
    let env: Vec<(&str, &str)> = url
        .as_deref()
        .map(|u| vec![("HSMCA_STATE__DATABASE", u)])
        .unwrap_or_default();
    let bed = Testbed::new(setup, key, &env)?;
    let label = if postgres { "postgres" } else { "sqlite" };

    progress(args, &format!("{key}: issuing on an empty {label} store"));
    let empty = measure(args, &bed, server.as_ref(), label, seconds).await?;

    progress(
        args,
        &format!("filling the store to {n} certificate records"),
    );
    let started = Instant::now();
    let (records, bytes) = match &url {
        Some(url) => fill_postgres(args, url, n).await?,
        None => fill_sqlite(args, &bed.path("state"), n).await?,
    };
    let fill_seconds = started.elapsed().as_secs_f64();

    progress(
        args,
        &format!("{key}: issuing on the store of {records} records"),
    );
    let filled = measure(args, &bed, server.as_ref(), label, seconds).await?;
    drop(server);

    let report = FillReport {
        store: label.to_owned(),
        records,
        fill_seconds,
        bytes,
        bytes_per_million: bytes as f64 * 1e6 / records.max(1) as f64,
        empty,
        filled,
    };
    super::report::emit_with(&report, args.json, args.json_out.as_deref(), || {
        let mut t = format!(
            "{key}: a {label} store of {records} certificate records (filled in {fill_seconds:.0} s)\n\
             size: {:.1} MiB, {:.0} MiB per million records (certificates, audit entries, indexes)\n\
             {:>7} {:>14} {:>14} {:>7} {:>11} {:>11}\n",
            bytes as f64 / 1048576.0,
            report.bytes_per_million / 1048576.0,
            "clients",
            "empty certs/s",
            "filled certs/s",
            "ratio",
            "empty p99",
            "filled p99"
        );
        for (e, f) in report.empty.iter().zip(&report.filled) {
            t += &format!(
                "{:>7} {:>14.0} {:>14.0} {:>7.2} {:>9.2}ms {:>9.2}ms\n",
                e.clients,
                e.per_s,
                f.per_s,
                f.per_s / e.per_s.max(f64::MIN_POSITIVE),
                e.p99_ms,
                f.p99_ms
            );
        }
        t
    })
}

/// One daemon on the testbed's store, issuing at each `--clients`.
async fn measure(
    args: &BenchArgs,
    bed: &Testbed,
    server: Option<&Server>,
    label: &str,
    seconds: f64,
) -> CliResult<Vec<stores::StoreRun>> {
    let nodes = stores::start_nodes(bed, 1)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = stores::measure(args, (label, 1), &nodes, server, seconds).await;
    for (d, _) in nodes {
        Daemon::stop(d)?;
    }
    runs
}

/// The copy statement for `cols` (the certificates table's columns as this
/// engine has them): fresh id and serial, no request_id, expiry spread
/// over [`SPREAD_S`], `spread` being the engine's expression for a
/// per-row number in 0..SPREAD_S, `empty` its empty blob. Ids and serials
/// start with their millisecond time, as the daemon's do (UUIDv7 ids,
/// time-prefixed serials): the copies sort before every new record, so
/// new rows append to those indexes as they do in a real store.
/// `time_hex(ms, len)` is the engine's expression for `len` hex digits
/// starting with `ms`.
fn copy_columns(
    cols: &[String],
    spread: &str,
    empty: &str,
    time_hex: &dyn Fn(&str, usize) -> String,
) -> String {
    let created = format!("(?now - 3600 - ({spread}))");
    let ms = format!("{created} * 1000");
    cols.iter()
        .map(|c| match c.as_str() {
            "id" => time_hex(&ms, 36),
            "serial" => time_hex(&ms, 32),
            "not_before" => created.clone(),
            "expire_time" => format!("?now - ({spread})"),
            "create_time" => format!("{created} * 1000000"),
            "request_id" | "fingerprint" => "''".to_owned(),
            "revoke_time" | "revoke_reason" => "NULL".to_owned(),
            "reply" => empty.to_owned(),
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Statements that copy audit entries: `take` of the original entries
/// (seq > 0) renumbered below them by `k` × 2^40 (each call a new `k`).
const AUDIT_COPY: &str = "INSERT INTO audit_log (seq, entry, prev_hash, hash, time_us) \
     SELECT seq - ?k * 1099511627776, entry, prev_hash, hash, time_us FROM audit_log \
     WHERE seq > 0 ORDER BY seq LIMIT ?take";

async fn fill_sqlite(args: &BenchArgs, state: &Path, n: u64) -> CliResult<(u64, u64)> {
    let db = state.join(crate::store::sqlite::inspect::DB_FILE);
    let quiet = args.json;
    let records = tokio::task::spawn_blocking(move || -> CliResult<u64> {
        let conn = rusqlite::Connection::open(&db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('certificates')")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let spread = format!("(rowid * 7919 + ?round) % {SPREAD_S}");
        let time_hex = |ms: &str, len: usize| {
            format!(
                "printf('%012x', {ms}) || substr(lower(hex(randomblob(16))), 1, {})",
                len - 12
            )
        };
        let select =
            copy_columns(&cols, &spread, "x''", &time_hex).replace("?now", &now_s().to_string());
        let count_of = |sql: &str| -> rusqlite::Result<u64> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        };
        let originals = count_of("SELECT count(*) FROM audit_log WHERE seq > 0")?;
        let mut count = count_of("SELECT count(*) FROM certificates")?;
        let mut k: u64 = 0;
        let mut chunk: u64 = 0;
        while count < n {
            chunk += 1;
            let take = CHUNK.min(count).min(n - count);
            let tx = conn.unchecked_transaction()?;
            let added = tx.execute(
                &format!(
                    "INSERT INTO certificates ({}) SELECT {} FROM certificates LIMIT {take}",
                    cols.join(", "),
                    select.replace("?round", &(chunk * 104_729).to_string())
                ),
                [],
            )? as u64;
            let mut audited = 0;
            while audited < added && originals > 0 {
                k += 1;
                let take = originals.min(added - audited);
                audited += tx.execute(
                    &AUDIT_COPY
                        .replace("?k", &k.to_string())
                        .replace("?take", &take.to_string()),
                    [],
                )? as u64;
            }
            tx.commit()?;
            count += added;
            if !quiet {
                eprintln!("bench: {count} records");
            }
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(count)
    })
    .await??;
    let mut bytes = 0;
    for e in std::fs::read_dir(state)?.flatten() {
        bytes += e.metadata()?.len();
    }
    Ok((records, bytes))
}

async fn fill_postgres(args: &BenchArgs, url: &str, n: u64) -> CliResult<(u64, u64)> {
    use sqlx::Row;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let cols: Vec<String> = sqlx::query(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_name = 'certificates' AND table_schema = current_schema() \
         ORDER BY ordinal_position",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>(0))
    .collect::<Result<_, _>>()?;
    let spread = format!("((hashtext(id) & 2147483647)::bigint + ?round) % {SPREAD_S}");
    let select = copy_columns(&cols, &spread, "''::bytea", &|ms: &str, len: usize| {
        format!(
            "lpad(to_hex(({ms})::bigint), 12, '0') || \
                 substr(md5(random()::text || clock_timestamp()::text), 1, {})",
            len - 12
        )
    })
    .replace("?now", &now_s().to_string());
    let originals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE seq > 0")
        .fetch_one(&pool)
        .await?;
    let mut count: i64 = sqlx::query_scalar("SELECT count(*) FROM certificates")
        .fetch_one(&pool)
        .await?;
    let n = n as i64;
    let (mut k, mut chunk) = (0i64, 0i64);
    while count < n {
        chunk += 1;
        let take = (CHUNK as i64).min(count).min(n - count);
        let mut tx = pool.begin().await?;
        let sql = format!(
            "INSERT INTO certificates ({}) SELECT {} FROM certificates LIMIT {take}",
            cols.join(", "),
            select.replace("?round", &(chunk * 104_729).to_string())
        );
        let added = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
        let mut audited = 0;
        while audited < added && originals > 0 {
            k += 1;
            let take = originals.min(added - audited);
            let sql = AUDIT_COPY
                .replace("?k", &k.to_string())
                .replace("?take", &take.to_string());
            audited += sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
        }
        tx.commit().await?;
        count += added;
        if !args.json {
            eprintln!("bench: {count} records");
        }
    }
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok((count as u64, bytes as u64))
}
