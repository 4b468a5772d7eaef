//! `hsmca bench`: how close the daemon comes to its token. For each CA key
//! type it makes a fresh token (`softhsm-setup/setup.sh`), runs `hsmca
//! init`, measures the token's own C_Sign rate through as many sessions as
//! the daemon uses, then starts `hsmca serve` as a child process and drives
//! it over its Unix socket: issuance at several concurrencies, reads by id,
//! request_id replays, a renewal wave and a burst of RSA-8192 CSRs, each
//! beside an interactive client; and the
//! OpenSSL command line as a peer. The daemon's CPU time and memory come
//! from /proc/PID. Figures are printed as a table, or as JSON with `--json`.

pub mod burst;
pub mod costs;
pub mod daemon;
pub mod fill;
pub mod interactive;
pub mod load;
pub mod peer;
pub mod raw;
pub mod report;
pub mod request_list;
pub mod stores;
pub mod wave;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use der::pem::LineEnding;
use spki::EncodePublicKey;

use self::{
    daemon::{Daemon, Testbed},
    load::{LoadResult, Work},
    raw::RawResult,
    report::{DaemonFigures, IssueRun, KeyResult, Machine, ReplayResult, Report, targets},
};
use crate::{
    client::{CliResult, connect},
    proto::{
        GenerateClientCertificateRequest, certificate_authority_client::CertificateAuthorityClient,
    },
};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// A short run (2 s per measurement, a smaller wave and fewer peer runs):
    /// under 2 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to this file (the table still goes to standard output).
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// CA key types, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "p256,rsa2048")]
    pub keys: Vec<String>,
    /// Concurrent clients for the issuance runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub clients: Vec<usize>,
    /// Seconds measured per run (default 5, or 2 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Certificate requests in the renewal wave (0: no wave; default 2000,
    /// or 500 with --quick).
    #[arg(long)]
    pub wave: Option<usize>,
    /// Sequential OpenSSL CLI runs for the peer (default 30, or 10 with --quick).
    #[arg(long)]
    pub peer_runs: Option<usize>,
    /// Skip the OpenSSL peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Only time ListCertificateRequests over a store of this many
    /// certificate requests (unfiltered and with label filters).
    #[arg(long)]
    pub request_list: Option<usize>,
    /// Only the cost model of one certificate: the daemon's CPU per
    /// certificate at the highest `--clients`, broken into its parts, each
    /// measured on its own (see BENCHMARKS.md). Uses the first of `--keys`.
    #[arg(long)]
    pub costs: bool,
    /// Measure a store grown to this many certificate records (default
    /// 10,000,000): its size per million records, and issuance on it
    /// against the same store empty, on `--store` (SQLite or PostgreSQL).
    #[arg(long, num_args = 0..=1, default_missing_value = "10000000")]
    pub store_fill: Option<u64>,
    /// RSA-8192 CSRs sent at once in each CSR burst (0: no burst; default 200).
    #[arg(long, default_value_t = 200)]
    pub csr_burst: usize,
    /// `postgres`: compare issuance with the store in SQLite and in a
    /// private PostgreSQL server (one daemon, and `--nodes` daemons on one
    /// token), instead of the usual runs. Uses the first of `--keys`.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    pub store: String,
    /// Daemons sharing the PostgreSQL store (with `--store postgres`).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Path of softhsm-setup/setup.sh (default: found from the working
    /// directory, the source tree, or the binary's location).
    #[arg(long)]
    pub setup: Option<PathBuf>,
}

/// A few P-256 subject public keys (PEM).
fn subject_keys(n: usize) -> CliResult<Vec<String>> {
    (0..n)
        .map(|_| {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)?;
            let key = p256::ecdsa::SigningKey::from_slice(&secret)?;
            Ok(key.verifying_key().to_public_key_pem(LineEnding::LF)?)
        })
        .collect()
}

pub async fn bench(args: BenchArgs) -> CliResult {
    let setup = daemon::find_setup(args.setup.as_deref())?;
    if let Some(n) = args.request_list {
        return request_list::run(&setup, n).await;
    }
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 5.0 });
    if !(seconds > 0.0 && seconds <= 600.0) {
        return Err("--seconds must be between 0 and 600".into());
    }
    let wave_n = args.wave.unwrap_or(if args.quick { 500 } else { 2000 });
    let peer_runs = args.peer_runs.unwrap_or(if args.quick { 10 } else { 30 });
    if args.costs {
        return costs::run(&args, &setup, seconds).await;
    }
    if let Some(n) = args.store_fill {
        return fill::run(&args, &setup, seconds, n).await;
    }
    if args.store == "postgres" {
        return stores::run(&args, &setup, seconds).await;
    }
    if args.nodes > 1 {
        return Err(
            "--nodes needs --store postgres: several daemons never share one SQLite file".into(),
        );
    }
    let load_before = daemon::load_average();
    let mut results = Vec::new();
    for key in &args.keys {
        results.push(bench_key(&args, &setup, key, seconds, wave_n, peer_runs).await?);
    }
    let report = Report {
        hsmca_version: env!("CARGO_PKG_VERSION").to_owned(),
        seconds_per_run: seconds,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average_before: load_before,
            load_average_after: daemon::load_average(),
        },
        results,
    };
    report::emit(&report, args.json, args.json_out.as_deref())
}

fn progress(args: &BenchArgs, msg: &str) {
    if !args.json {
        eprintln!("bench: {msg}");
    }
}

async fn bench_key(
    args: &BenchArgs,
    setup: &std::path::Path,
    key: &str,
    seconds: f64,
    wave_n: usize,
    peer_runs: usize,
) -> CliResult<KeyResult> {
    progress(args, &format!("{key}: setting up a token and a CA"));
    let bed = Testbed::new(
        setup,
        key,
        &[("HSMCA_REQUESTS__RENEW_AFTER", wave::RENEW_AFTER)],
    )?;
    let cfg = bed.load_config()?;
    let module = cfg.token.locator()?.module;
    progress(
        args,
        &format!("{key}: raw C_Sign, {} sessions", cfg.token.sessions),
    );
    let raw = raw::in_child(&bed, seconds)?;
    progress(args, &format!("{key}: starting hsmca serve"));
    let d = Daemon::start(&bed)?;
    let token_ms = token_ms(&d).await?;
    let ready_ms = d.ready.as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss_kib = d.vm_kib("VmRSS")?;
    let socket = bed.socket();
    let keys = Arc::new(subject_keys(4)?);
    let warmup = warmup(seconds);

    let (issuance, ids) = issuance(args, key, &socket, &d, &keys, &raw, seconds).await?;

    let get_by_id = get_by_id(args, key, &socket, &d, ids, seconds).await?;

    progress(args, &format!("{key}: request_id replays with 8 clients"));
    let replay = replay(&socket, &d, &keys, warmup, seconds, &issuance).await?;

    let wave = if wave_n > 0 {
        progress(
            args,
            &format!("{key}: renewal wave of {wave_n} certificate requests"),
        );
        Some(wave::run(&bed, keys.clone(), wave_n, seconds).await?)
    } else {
        None
    };
    let csr_burst = if args.csr_burst == 0 {
        None
    } else {
        progress(
            args,
            &format!(
                "{key}: bursts of {} RSA-8192 CSRs beside an interactive client",
                args.csr_burst
            ),
        );
        Some(burst::run(&socket, keys.clone(), args.csr_burst, seconds).await?)
    };
    let daemon = DaemonFigures {
        ready_ms,
        token_ms,
        ready_excluding_login_ms: ready_ms - token_ms,
        idle_rss_kib,
        peak_rss_kib: d.vm_kib("VmHWM")?,
    };
    d.stop()?;

    let peer = if args.no_peer {
        None
    } else {
        progress(
            args,
            &format!("{key}: the OpenSSL CLI peer, {peer_runs} runs"),
        );
        // Blocking, but nothing else runs in this process meanwhile.
        Some(peer::run(&bed, &module, peer_runs)?)
    };
    let best = issuance.last().map_or(0.0, |r| r.load.per_s);
    let peer_ratio = peer.as_ref().map(|p| best / p.per_s);
    let mut r = KeyResult {
        key: key.to_owned(),
        sessions: raw.sessions,
        raw,
        issuance,
        daemon,
        get_by_id,
        replay,
        wave,
        csr_burst,
        peer,
        peer_ratio,
        targets: Vec::new(),
    };
    r.targets = targets(&r);
    Ok(r)
}

/// How long each load run warms up before its measured `seconds`.
fn warmup(seconds: f64) -> Duration {
    Duration::from_secs_f64((seconds / 4.0).clamp(0.2, 1.0))
}

/// The time the daemon logged for opening its token (`token_ms=` in its
/// "serving" line, written right after it binds the socket).
async fn token_ms(d: &Daemon) -> CliResult<f64> {
    let mut token_ms = d.logged_token_ms();
    for _ in 0..200 {
        if token_ms.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        token_ms = d.logged_token_ms();
    }
    Ok(token_ms.ok_or("the daemon did not log token_ms= in its \"serving\" line")?)
}

/// Issuance at each of `--clients` concurrencies, and the ids of the most
/// certificates one run made (for the reads by id).
async fn issuance(
    args: &BenchArgs,
    key: &str,
    socket: &std::path::Path,
    d: &Daemon,
    keys: &Arc<Vec<String>>,
    raw: &RawResult,
    seconds: f64,
) -> CliResult<(Vec<IssueRun>, Vec<String>)> {
    let warmup = warmup(seconds);
    let mut issuance = Vec::new();
    let mut ids = Vec::new();
    for &c in &args.clients {
        progress(
            args,
            &format!("{key}: issuing with {c} clients for {seconds} s"),
        );
        let work = Work::Issue {
            keys: keys.clone(),
            tag: format!("c{c}"),
        };
        let (load, got) = load::run(socket, d, work, c, warmup, seconds, 2000).await?;
        if got.len() > ids.len() {
            ids = got;
        }
        issuance.push(IssueRun {
            throughput_ratio: load.per_s / raw.signs_per_s,
            efficiency_ratio: raw.cpu_us_per_sign
                / load.daemon_cpu_us_per_op.max(f64::MIN_POSITIVE),
            load,
        });
    }
    Ok((issuance, ids))
}

/// Reads by id (GetClientCertificate) of certificates issued earlier, when
/// there are any.
async fn get_by_id(
    args: &BenchArgs,
    key: &str,
    socket: &std::path::Path,
    d: &Daemon,
    ids: Vec<String>,
    seconds: f64,
) -> CliResult<Option<LoadResult>> {
    Ok(if ids.is_empty() {
        None
    } else {
        progress(
            args,
            &format!("{key}: GetClientCertificate with 16 clients"),
        );
        let work = Work::Get { ids: Arc::new(ids) };
        Some(
            load::run(socket, d, work, 16, warmup(seconds), seconds, 0)
                .await?
                .0,
        )
    })
}

async fn replay(
    socket: &std::path::Path,
    d: &Daemon,
    keys: &Arc<Vec<String>>,
    warmup: Duration,
    seconds: f64,
    issuance: &[IssueRun],
) -> CliResult<Option<ReplayResult>> {
    let mut client = CertificateAuthorityClient::new(connect(socket).await?);
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..8 {
        let req = GenerateClientCertificateRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            public_key: keys[i % keys.len()].clone(),
            common_name: format!("replay-{i}"),
            ..Default::default()
        };
        let reply = client
            .generate_client_certificate(req.clone())
            .await
            .map_err(crate::client::status_error)?
            .into_inner();
        requests.push(req);
        expected.push(reply);
    }
    let work = Work::Replay {
        requests: Arc::new(requests),
        expected: Arc::new(expected),
    };
    let (load, _) = load::run(socket, d, work, 8, warmup, seconds, 0).await?;
    let fresh = issuance
        .iter()
        .find(|r| r.load.clients == 8)
        .map(|r| r.load.per_s);
    Ok(Some(ReplayResult {
        identical_replies: load.errors == 0 && load.ok > 0,
        speedup_ratio: fresh.map_or(0.0, |f| load.per_s / f),
        load,
    }))
}
