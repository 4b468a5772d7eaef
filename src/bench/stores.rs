//! `hsmca bench --store postgres [--nodes N]`: issuance with the store in
//! SQLite (one daemon), in PostgreSQL (one daemon), and in PostgreSQL
//! behind N daemons on one token with the load spread over their sockets.
//! PostgreSQL is a private server (scripts/pg-test-server.sh, beside
//! softhsm-setup/) on a Unix socket, started and stopped here. Figures:
//! certificates/s, p99, the daemons' CPU-µs per certificate and the
//! PostgreSQL server's (the postmaster and its backends).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

use super::{
    BenchArgs,
    daemon::{Daemon, Testbed, proc_cpu_us, run_quiet},
    load::{self, Spread, Work},
    progress, subject_keys, warmup,
};
use crate::client::CliResult;

#[derive(Debug, Clone, Serialize)]
pub struct StoreRun {
    pub store: String,
    pub nodes: usize,
    pub clients: usize,
    pub per_s: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub daemon_cpu_us_per_cert: f64,
    /// The PostgreSQL server's CPU per certificate (0 for SQLite).
    pub postgres_cpu_us_per_cert: f64,
}

/// A private PostgreSQL server for the bench, stopped when dropped.
pub(super) struct Server {
    script: PathBuf,
    dir: PathBuf,
}

impl Server {
    pub(super) fn start(setup: &Path, dir: &Path) -> CliResult<Self> {
        let script = setup
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("scripts/pg-test-server.sh"))
            .filter(|p| p.exists())
            .ok_or("scripts/pg-test-server.sh not found beside softhsm-setup/")?;
        run_quiet(
            Command::new("bash").arg(&script).arg("start").arg(dir),
            "scripts/pg-test-server.sh start",
        )?;
        Ok(Self {
            script,
            dir: dir.to_owned(),
        })
    }

    pub(super) fn url(&self, db: &str) -> CliResult<String> {
        let out = run_quiet(
            Command::new("bash")
                .arg(&self.script)
                .arg("url")
                .arg(&self.dir)
                .arg(db),
            "scripts/pg-test-server.sh url",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The postmaster's CPU with its reaped children's, plus its live
    /// children's (the backends), in µs.
    fn cpu_us(&self) -> CliResult<f64> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))?;
        let pid: u32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("postmaster.pid is unreadable")?;
        let mut total = proc_cpu_with_children(pid)?;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = format!("/proc/{child}/stat");
            let Ok(text) = std::fs::read_to_string(&stat) else {
                continue;
            };
            let ppid = text
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                total += proc_cpu_us(&stat).unwrap_or(0.0);
            }
        }
        Ok(total)
    }
}

/// utime + stime + cutime + cstime of `pid`, in µs.
fn proc_cpu_with_children(pid: u32) -> CliResult<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)?;
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let ticks: f64 = (14..=17)
        .map(|i| fields.get(i - 3).copied().unwrap_or(0.0))
        .sum();
    Ok(ticks * 1e6 / rustix::param::clock_ticks_per_second() as f64)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// Issuance at each `--clients` concurrency against `daemons`.
pub(super) async fn measure(
    args: &BenchArgs,
    label: (&str, usize),
    daemons: &[(Daemon, PathBuf)],
    server: Option<&Server>,
    seconds: f64,
) -> CliResult<Vec<StoreRun>> {
    let keys = Arc::new(subject_keys(4)?);
    let sockets: Vec<PathBuf> = daemons.iter().map(|(_, s)| s.clone()).collect();
    let cpu = || -> CliResult<f64> { daemons.iter().map(|(d, _)| d.cpu_us()).sum() };
    let rss = || -> CliResult<u64> { daemons.iter().map(|(d, _)| d.vm_kib("VmHWM")).sum() };
    let pg_cpu = || server.map_or(Ok(0.0), Server::cpu_us);
    let mut runs = Vec::new();
    for &c in &args.clients {
        progress(
            args,
            &format!(
                "store {} on {} node(s): issuing with {c} clients",
                label.0, label.1
            ),
        );
        let spread = Spread {
            sockets: &sockets,
            cpu: &cpu,
            peak_rss_kib: &rss,
        };
        let work = Work::Issue {
            keys: keys.clone(),
            tag: format!("{}-{}-{c}", label.0, label.1),
        };
        let (r, _, pg) =
            load::run_measured(spread, Some(&pg_cpu), work, c, warmup(seconds), seconds, 0).await?;
        runs.push(StoreRun {
            store: label.0.to_owned(),
            nodes: label.1,
            clients: c,
            per_s: r.per_s,
            p99_ms: r.latency.p99_ms,
            errors: r.errors,
            daemon_cpu_us_per_cert: r.daemon_cpu_us_per_op,
            postgres_cpu_us_per_cert: pg,
        });
    }
    Ok(runs)
}

pub(super) fn start_nodes(bed: &Testbed, n: usize) -> CliResult<Vec<(Daemon, PathBuf)>> {
    (1..=n)
        .map(|i| {
            let dir = bed.path(&format!("node{i}"));
            std::fs::create_dir_all(&dir)?;
            let socket = dir.join("hsmca.sock");
            let d = Daemon::start_at(bed, &socket, &dir.join("daemon.log"))?;
            Ok((d, socket))
        })
        .collect()
}

pub async fn run(args: &BenchArgs, setup: &Path, seconds: f64) -> CliResult {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let key = args.keys.first().map_or("p256", String::as_str);
    let mut runs = Vec::new();

    progress(args, &format!("{key}: one daemon on SQLite"));
    let bed = Testbed::new(setup, key, &[])?;
    let nodes = start_nodes(&bed, 1)?;
    runs.extend(measure(args, ("sqlite", 1), &nodes, None, seconds).await?);
    for (d, _) in nodes {
        d.stop()?;
    }

    progress(args, "starting a private PostgreSQL server");
    let pg_dir = bed.path("postgres");
    let server = Server::start(setup, &pg_dir)?;
    let url = server.url("hsmca")?;
    let pg_bed = Testbed::new(setup, key, &[("HSMCA_STATE__DATABASE", &url)])?;
    let mut counts = vec![1];
    if args.nodes > 1 {
        counts.push(args.nodes);
    }
    for n in counts {
        let nodes = start_nodes(&pg_bed, n)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        runs.extend(measure(args, ("postgres", n), &nodes, Some(&server), seconds).await?);
        for (d, _) in nodes {
            d.stop()?;
        }
    }
    drop(server);

    super::report::emit_with(&runs, args.json, args.json_out.as_deref(), || {
        let mut t = format!(
            "{key}: issuance by store and nodes ({} CPUs)\n{:<9} {:>5} {:>7} {:>10} {:>9} {:>7} {:>12} {:>12}\n",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            "store",
            "nodes",
            "clients",
            "certs/s",
            "p99 ms",
            "errors",
            "daemon µs/c",
            "pg µs/c"
        );
        for r in &runs {
            t += &format!(
                "{:<9} {:>5} {:>7} {:>10.0} {:>9.2} {:>7} {:>12.0} {:>12.0}\n",
                r.store,
                r.nodes,
                r.clients,
                r.per_s,
                r.p99_ms,
                r.errors,
                r.daemon_cpu_us_per_cert,
                r.postgres_cpu_us_per_cert
            );
        }
        let at = |store: &str, nodes: usize, c: usize| {
            runs.iter()
                .find(|r| r.store == store && r.nodes == nodes && r.clients == c)
                .map(|r| r.per_s)
        };
        let top = args.clients.iter().copied().max().unwrap_or(64);
        if let (Some(s), Some(p)) = (at("sqlite", 1, top), at("postgres", 1, top)) {
            t += &format!(
                "PostgreSQL one node / SQLite at C={top}: {:.2} (target >= 0.8)\n",
                p / s.max(f64::MIN_POSITIVE)
            );
        }
        if let (Some(one), Some(n)) = (at("postgres", 1, top), at("postgres", args.nodes, top))
            && args.nodes > 1
        {
            t += &format!(
                "PostgreSQL {} nodes / one node at C={top}: {:.2} (target >= 1; the nodes share this machine's CPUs)\n",
                args.nodes,
                n / one.max(f64::MIN_POSITIVE)
            );
        }
        t
    })
}
