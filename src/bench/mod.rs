//! `hsmca bench`: how close the daemon comes to its token. For each CA key
//! type it makes a fresh token (`softhsm-setup/setup.sh`), runs `hsmca
//! init`, measures the token's own C_Sign rate through as many sessions as
//! the daemon uses, then starts `hsmca serve` as a child process and drives
//! it over its Unix socket: issuance at several concurrencies, reads by id,
//! request_id replays, a renewal wave beside an interactive client; and the
//! OpenSSL command line as a peer. The daemon's CPU time and memory come
//! from /proc/PID. Figures are printed as a table, or as JSON with `--json`.

pub mod daemon;
pub mod load;
pub mod peer;
pub mod raw;
pub mod wave;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use der::pem::LineEnding;
use serde::Serialize;
use spki::EncodePublicKey;

use self::{
    daemon::{Daemon, Testbed},
    load::{LoadResult, Work},
    peer::PeerResult,
    raw::RawResult,
    wave::WaveResult,
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
    /// Path of softhsm-setup/setup.sh (default: found from the working
    /// directory, the source tree, or the binary's location).
    #[arg(long)]
    pub setup: Option<PathBuf>,
}

/// Everything measured for one CA key type.
#[derive(Debug, Clone, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub sessions: usize,
    pub raw: RawResult,
    pub issuance: Vec<IssueRun>,
    pub daemon: DaemonFigures,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get_by_id: Option<LoadResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<WaveResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerResult>,
    /// hsmca's certificates/s at the highest concurrency ÷ the peer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ratio: Option<f64>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssueRun {
    #[serde(flatten)]
    pub load: LoadResult,
    /// certificates/s ÷ raw signatures/s.
    pub throughput_ratio: f64,
    /// raw CPU-µs per signature ÷ daemon CPU-µs per certificate.
    pub efficiency_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonFigures {
    /// exec until the socket accepted a connection.
    pub ready_ms: f64,
    /// What the daemon logged for opening the token (module, login, key
    /// lookup, sessions).
    pub token_ms: f64,
    pub ready_excluding_login_ms: f64,
    pub idle_rss_kib: u64,
    /// VmHWM at the end of the run.
    pub peak_rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    #[serde(flatten)]
    pub load: LoadResult,
    /// Every replay was byte-for-byte the original reply (so no new
    /// certificate, and no C_Sign, was made).
    pub identical_replies: bool,
    /// replays/s ÷ fresh certificates/s at the same concurrency.
    pub speedup_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub load_average_before: String,
    pub load_average_after: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub hsmca_version: String,
    pub seconds_per_run: f64,
    pub machine: Machine,
    pub results: Vec<KeyResult>,
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
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 5.0 });
    if !(seconds > 0.0 && seconds <= 600.0) {
        return Err("--seconds must be between 0 and 600".into());
    }
    let wave_n = args.wave.unwrap_or(if args.quick { 500 } else { 2000 });
    let peer_runs = args.peer_runs.unwrap_or(if args.quick { 10 } else { 30 });
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
    let json = serde_json::to_string_pretty(&report)? + "\n";
    if let Some(path) = &args.json_out {
        crate::client::write_out(Some(path), &json)?;
    }
    if args.json {
        crate::client::write_out(None, &json)?;
    } else {
        crate::client::write_out(None, &text(&report))?;
    }
    Ok(())
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
    // The daemon logs its timings right after it binds the socket.
    let mut token_ms = d.logged_token_ms();
    for _ in 0..200 {
        if token_ms.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        token_ms = d.logged_token_ms();
    }
    let token_ms = token_ms.ok_or("the daemon did not log token_ms= in its \"serving\" line")?;
    let ready_ms = d.ready.as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss_kib = d.vm_kib("VmRSS")?;
    let socket = bed.socket();
    let keys = Arc::new(subject_keys(4)?);
    let warmup = Duration::from_secs_f64((seconds / 4.0).clamp(0.2, 1.0));

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
        let (load, got) = load::run(&socket, &d, work, c, warmup, seconds, 2000).await?;
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

    let get_by_id = if ids.is_empty() {
        None
    } else {
        progress(
            args,
            &format!("{key}: GetClientCertificate with 16 clients"),
        );
        let work = Work::Get { ids: Arc::new(ids) };
        Some(
            load::run(&socket, &d, work, 16, warmup, seconds, 0)
                .await?
                .0,
        )
    };

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
        peer,
        peer_ratio,
        targets: Vec::new(),
    };
    r.targets = targets(&r);
    Ok(r)
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

fn target(name: &str, target: String, measured: String, met: bool) -> Target {
    Target {
        name: name.to_owned(),
        target,
        measured,
        met,
    }
}

/// The issue's targets, each checked against this run.
fn targets(r: &KeyResult) -> Vec<Target> {
    let rsa = r.key.starts_with("rsa");
    let p256 = r.key == "p256";
    let mut t = Vec::new();
    let top = r.issuance.iter().max_by_key(|x| x.load.clients);
    if let Some(top) = top {
        let c = top.load.clients;
        let (eff, thr, rate) = if rsa {
            (0.93, 0.85, 2500.0)
        } else {
            (0.70, 0.50, 10_000.0)
        };
        if p256 || r.key == "rsa2048" {
            t.push(target(
                &format!("efficiency at C={c}"),
                format!(">= {eff:.2}"),
                format!("{:.2}", top.efficiency_ratio),
                top.efficiency_ratio >= eff,
            ));
            t.push(target(
                &format!("throughput ratio at C={c}"),
                format!(">= {thr:.2}"),
                format!("{:.2}", top.throughput_ratio),
                top.throughput_ratio >= thr,
            ));
            t.push(target(
                &format!("certificates/s at C={c}"),
                format!(">= {rate:.0}"),
                format!("{:.0}", top.load.per_s),
                top.load.per_s >= rate,
            ));
        }
    }
    if let Some(p) = r.peer_ratio {
        t.push(target(
            "× the OpenSSL CLI peer",
            ">= 150".into(),
            format!("{p:.0}"),
            p >= 150.0,
        ));
    }
    if p256 && let Some(c8) = r.issuance.iter().find(|x| x.load.clients == 8) {
        t.push(target(
            "p99 at C=8",
            "<= 3 ms".into(),
            format!("{:.2} ms", c8.load.latency.p99_ms),
            c8.load.latency.p99_ms <= 3.0,
        ));
    }
    t.push(target(
        "daemon peak RSS",
        "<= 64 MiB".into(),
        format!("{:.1} MiB", r.daemon.peak_rss_kib as f64 / 1024.0),
        r.daemon.peak_rss_kib <= 64 * 1024,
    ));
    t.push(target(
        "daemon idle RSS",
        "<= 24 MiB".into(),
        format!("{:.1} MiB", r.daemon.idle_rss_kib as f64 / 1024.0),
        r.daemon.idle_rss_kib <= 24 * 1024,
    ));
    t.push(target(
        "start to READY, login excluded",
        "<= 150 ms".into(),
        format!("{:.0} ms", r.daemon.ready_excluding_login_ms),
        r.daemon.ready_excluding_login_ms <= 150.0,
    ));
    if let Some(g) = &r.get_by_id {
        t.push(target(
            "GetClientCertificate at C=16",
            ">= 20000/s".into(),
            format!("{:.0}/s", g.per_s),
            g.per_s >= 20_000.0,
        ));
    }
    if let Some(rp) = &r.replay {
        t.push(target(
            "replay vs fresh at C=8 (identical, no C_Sign)",
            ">= 5×".into(),
            format!(
                "{:.1}× ({})",
                rp.speedup_ratio,
                if rp.identical_replies {
                    "identical"
                } else {
                    "NOT identical"
                }
            ),
            rp.speedup_ratio >= 5.0 && rp.identical_replies,
        ));
    }
    t
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn text_for_key(r: &KeyResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== CA key {} ({} token sessions) ==\nraw C_Sign: {:.0} signatures/s, {:.1} CPU-µs per signature",
        r.key, r.sessions, r.raw.signs_per_s, r.raw.cpu_us_per_sign
    );
    let _ = writeln!(
        s,
        "{:>4} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9} {:>10} {:>10} {:>6}",
        "C",
        "certs/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "µs/cert",
        "thr ratio",
        "eff ratio",
        "errors"
    );
    for i in &r.issuance {
        let l = &i.load;
        let _ = writeln!(
            s,
            "{:>4} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>7.1} {:>9.1} {:>10.2} {:>10.2} {:>6}",
            l.clients,
            l.per_s,
            l.latency.p50_ms,
            l.latency.p90_ms,
            l.latency.p99_ms,
            l.latency.max_ms,
            l.daemon_cpu_us_per_op,
            i.throughput_ratio,
            i.efficiency_ratio,
            l.errors
        );
    }
    let d = &r.daemon;
    let _ = writeln!(
        s,
        "daemon: READY {:.0} ms after exec ({:.0} ms token login, {:.0} ms without); RSS idle {}, peak {}",
        d.ready_ms,
        d.token_ms,
        d.ready_excluding_login_ms,
        kib(d.idle_rss_kib),
        kib(d.peak_rss_kib)
    );
    if let Some(g) = &r.get_by_id {
        let _ = writeln!(
            s,
            "GetClientCertificate, C=16: {:.0}/s, p99 {:.2} ms, {:.1} daemon CPU-µs each",
            g.per_s, g.latency.p99_ms, g.daemon_cpu_us_per_op
        );
    }
    if let Some(rp) = &r.replay {
        let _ = writeln!(
            s,
            "request_id replay, C=8: {:.0}/s ({:.1}× fresh), p99 {:.2} ms, {:.1} daemon CPU-µs each, replies {}",
            rp.load.per_s,
            rp.speedup_ratio,
            rp.load.latency.p99_ms,
            rp.load.daemon_cpu_us_per_op,
            if rp.identical_replies {
                "identical"
            } else {
                "NOT identical"
            }
        );
    }
    if let Some(w) = &r.wave {
        let _ = writeln!(
            s,
            "renewal wave: {} requests first-issued in {:.2} s, {} renewed in {:.2} s; one interactive client's p99: {:.2} ms before, {:.2} ms during first issues, {:.2} ms during renewals (max {:.1} ms)",
            w.requests,
            w.first_issue_s,
            w.renewed,
            w.renewal_s,
            w.client_before.p99_ms,
            w.client_during_first_issue.p99_ms,
            w.client_during_renewals.p99_ms,
            w.client_during_renewals.max_ms
        );
    }
    if let (Some(p), Some(ratio)) = (&r.peer, r.peer_ratio) {
        let _ = writeln!(
            s,
            "OpenSSL CLI peer: {:.1} certificates/s over {} runs; hsmca at the highest concurrency: {:.0}×",
            p.per_s, p.runs, ratio
        );
    }
    let _ = writeln!(s, "targets:");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "  [{}] {}: {} (target {})",
            if t.met { "met" } else { "MISSED" },
            t.name,
            t.measured,
            t.target
        );
    }
    s
}

fn text(report: &Report) -> String {
    let mut s = format!(
        "hsmca {} bench: {} s per run, {} CPUs, load average {} before, {} after\n",
        report.hsmca_version,
        report.seconds_per_run,
        report.machine.cpus,
        report.machine.load_average_before,
        report.machine.load_average_after
    );
    for r in &report.results {
        s.push_str(&text_for_key(r));
    }
    s
}
