//! SPIFFE workloads: a cold start of N distinct workloads (N identities,
//! one registration entry each, selected by executable; see [`super::peers`])
//! that all ask the workload socket for their X509-SVID at once, timed until
//! every one holds it; then, with one interactive client issuing
//! certificates on the API socket, the rotation wave of those N SVIDs, and
//! the client's latency before and during it.
//!
//! The yardstick, measured in the same run: the time the token needs for N
//! signatures (N ÷ the raw C_Sign rate measured beforehand) plus the time
//! to make N workload keys of the entries' type in memory, one thread per
//! CPU. The cold start is measured from the first call, after the peer
//! processes have connected; starting the processes is not part of it.
//!
//! The entries' TTL is chosen so that rotation (half the TTL, no jitter)
//! comes after the cold start and the client's baseline, and the SVIDs
//! rotate in the order, and at the pace, they were first signed.

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{
    Request,
    transport::{Endpoint, Uri},
};

use super::{
    daemon::{Daemon, Testbed, proc_cpu_us},
    interactive::Interactive,
    load::Latency,
    peers::{self, Peers},
    raw::RawResult,
};
use crate::{
    client::CliResult,
    config::WorkloadKeyType,
    proto::workload::{X509svidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient},
    server::workload_api::SECURITY_HEADER,
    workload::{SPIFFE_ID_TAG, keys},
};

/// The entries' key type.
const KEY_TYPE: WorkloadKeyType = WorkloadKeyType::P256;

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadsResult {
    pub workloads: usize,
    pub key_type: String,
    /// Starting the peer processes and collecting their connections (not
    /// part of the cold start).
    pub peers_start_s: f64,
    /// From the first call until every workload held its SVID.
    pub cold_start_s: f64,
    /// SVIDs signed (records in the store) by the end of the cold start.
    pub cold_start_signatures: i64,
    /// CPU the daemon spent in the cold start (user + system), and the
    /// bench process's own (the 1,000 workloads' gRPC clients), in
    /// seconds: where the cold start's time goes on two shared cores.
    pub cold_start_daemon_cpu_s: f64,
    pub cold_start_clients_cpu_s: f64,
    /// N ÷ the raw C_Sign rate.
    pub token_sign_s: f64,
    /// N workload keys made in memory, one thread per CPU.
    pub keygen_s: f64,
    /// cold_start_s ÷ (token_sign_s + keygen_s).
    pub cold_start_ratio: f64,
    pub ttl_s: f64,
    /// Workloads that were sent a new SVID by the rotation.
    pub rotated: usize,
    /// SVIDs signed from the end of the cold start to the end of the wave.
    pub rotation_signatures: i64,
    /// From the first new SVID a workload received to the last.
    pub rotation_s: f64,
    /// The interactive client (1 connection, sequential requests): before
    /// the wave…
    pub client_before: Latency,
    pub client_before_samples: usize,
    /// …and while the wave was being signed.
    pub client_during_rotation: Latency,
    pub client_during_samples: usize,
    pub client_errors: u64,
    /// Workload streams that failed.
    pub workload_errors: usize,
}

enum Event {
    First(Instant),
    Rotated(Instant),
    Failed(String),
}

/// Seconds from an SVID's issue to its rotation: after the cold start
/// (budgeted at 10 ms a workload, at least 3 s) and the baseline.
fn rotation_delay_s(n: usize, baseline_seconds: f64) -> u64 {
    let cold_budget = (n as f64 * 0.01).max(3.0);
    (cold_budget + baseline_seconds + 1.0).ceil() as u64
}

/// The testbed's configuration with its registration entries replaced by
/// one entry per peer (selected by the peer's executable), no rotation
/// jitter and a lower bound on TTLs of 1 s. `text` is what setup.sh
/// writes: the `[[workload.entries]]` tables are dropped up to the next
/// table header, the `[workload]` keys go right after its header, the new
/// entries at the end.
fn workloads_config(text: &str, dir: &std::path::Path, n: usize, ttl_s: u64) -> CliResult<String> {
    let mut out = String::with_capacity(text.len() + n * 160);
    let mut in_entry = false;
    let mut has_workload = false;
    let mut trust_domain = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_entry = t == "[[workload.entries]]";
        }
        if in_entry {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t == "[workload]" {
            has_workload = true;
            out.push_str("rotation_jitter = 0.0\nmin_ttl = \"1s\"\n");
        }
        if let Some(v) = t.strip_prefix("trust_domain") {
            trust_domain = v
                .trim()
                .strip_prefix('=')
                .map(|v| v.trim().trim_matches('"').to_owned());
        }
    }
    if !has_workload {
        return Err("the testbed's configuration has no [workload] section".into());
    }
    let td = trust_domain.ok_or("the testbed's configuration has no workload.trust_domain")?;
    for i in 0..n {
        // Debug quoting is TOML's basic string for the ASCII paths of a
        // temporary directory.
        out.push_str(&format!(
            "\n[[workload.entries]]\nspiffe_id = \"spiffe://{td}/bench/w{i}\"\nexe = {:?}\nkey_type = \"{}\"\nttl = \"{ttl_s}s\"\n",
            peers::exe_path(dir, i).display().to_string(),
            KEY_TYPE.name()
        ));
    }
    Ok(out)
}

/// N keys of the entries' type, one thread per CPU: seconds taken.
fn keygen_seconds(n: usize) -> CliResult<f64> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let t0 = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                scope.spawn(move || {
                    for _ in 0..count {
                        keys::generate(KEY_TYPE).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// One workload: gRPC over its connection, its first SVID, then the next.
async fn workload(conn: OwnedFd, events: mpsc::UnboundedSender<Event>) {
    let r = async {
        let std_stream = std::os::unix::net::UnixStream::from(conn);
        std_stream.set_nonblocking(true)?;
        let slot = Arc::new(Mutex::new(Some(tokio::net::UnixStream::from_std(
            std_stream,
        )?)));
        let channel = Endpoint::try_from("http://localhost")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let taken = slot.lock().ok().and_then(|mut s| s.take());
                async move {
                    taken.map(TokioIo::new).ok_or_else(|| {
                        std::io::Error::other("the workload's one connection is gone")
                    })
                }
            }))
            .await?;
        let mut client = SpiffeWorkloadApiClient::new(channel);
        let mut req = Request::new(X509svidRequest {});
        req.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut stream = client
            .fetch_x509svid(req)
            .await
            .map_err(crate::client::status_error)?
            .into_inner();
        let mut first: Option<Vec<u8>> = None;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(crate::client::status_error)?;
            let Some(svid) = msg.svids.first() else {
                continue;
            };
            match &first {
                None => {
                    first = Some(svid.x509_svid.clone());
                    let _ = events.send(Event::First(Instant::now()));
                }
                Some(f) if *f != svid.x509_svid => {
                    let _ = events.send(Event::Rotated(Instant::now()));
                    return Ok(());
                }
                Some(_) => {}
            }
        }
        Err::<(), Box<dyn std::error::Error + Send + Sync>>("the stream ended".into())
    }
    .await;
    if let Err(e) = r {
        let _ = events.send(Event::Failed(e.to_string()));
    }
}

/// Waits until `want` events of the kind `pick` selects have come, or
/// `deadline`; returns their times. Failures are counted in `failed`.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    want: usize,
    deadline: Instant,
    failed: &mut Vec<String>,
    other: &mut Vec<Instant>,
    first: bool,
) -> Vec<Instant> {
    let mut got = Vec::with_capacity(want);
    while got.len() + failed.len() < want {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(Event::First(t))) if first => got.push(t),
            Ok(Some(Event::Rotated(t))) if !first => got.push(t),
            Ok(Some(Event::First(t) | Event::Rotated(t))) => other.push(t),
            Ok(Some(Event::Failed(e))) => failed.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

pub async fn run(
    bed: &Testbed,
    api_keys: Arc<Vec<String>>,
    n: usize,
    baseline_seconds: f64,
    raw: &RawResult,
) -> CliResult<WorkloadsResult> {
    let keygen_s = tokio::task::spawn_blocking(move || keygen_seconds(n)).await??;
    let dir = std::fs::canonicalize(bed.dir.path())?.join("peers");
    peers::link_executables(&dir, n)?;
    let delay_s = rotation_delay_s(n, baseline_seconds);
    let ttl_s = 2 * delay_s;
    let text = std::fs::read_to_string(bed.config())?;
    std::fs::write(
        bed.path("hsmca-workloads.toml"),
        workloads_config(&text, &dir, n, ttl_s)?,
    )?;
    let d = Daemon::start_with(
        bed,
        &bed.path("hsmca-workloads.toml"),
        &bed.socket(),
        &bed.path("daemon-workloads.log"),
        &[(
            "HSMCA_SERVER__MAX_CONNECTIONS",
            (n + 64).clamp(1024, 65_536).to_string(),
        )],
    )?;
    let wsock = bed.path("workload.sock");
    let t_peers = Instant::now();
    let (peers, conns) =
        tokio::task::spawn_blocking(move || Peers::start(&dir, n, &wsock)).await??;
    let peers_start_s = t_peers.elapsed().as_secs_f64();
    let db = bed.path("state/hsmca.db");
    let before = super::wave::count_tagged(&db, SPIFFE_ID_TAG).await?;

    // The cold start: every workload asks at once.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cpu0 = (d.cpu_us()?, proc_cpu_us("/proc/self/stat")?);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        tasks.spawn(workload(conn, tx.clone()));
    }
    drop(tx);
    let mut failed = Vec::new();
    let mut early = Vec::new();
    let firsts = collect(
        &mut rx,
        n,
        t0 + Duration::from_secs(120),
        &mut failed,
        &mut early,
        true,
    )
    .await;
    let t_cold = firsts.iter().max().copied().unwrap_or(t0);
    let cpu1 = (d.cpu_us()?, proc_cpu_us("/proc/self/stat")?);
    if firsts.len() < n {
        return Err(format!(
            "cold start: {} of {n} workloads got an SVID within 120 s; failures: {:?}",
            firsts.len(),
            failed.iter().take(3).collect::<Vec<_>>()
        )
        .into());
    }
    let cold_signatures = super::wave::count_tagged(&db, SPIFFE_ID_TAG).await? - before;

    // The wave, beside an interactive client.
    let client = Interactive::start(&bed.socket(), api_keys, "workloads-client").await?;
    let first_issue = firsts.iter().min().copied().unwrap_or(t0);
    let due = first_issue + Duration::from_secs(delay_s);
    let base_from = Instant::now() + Duration::from_millis(300);
    let base_to = (base_from + Duration::from_secs_f64(baseline_seconds))
        .min(due.checked_sub(Duration::from_millis(200)).unwrap_or(due))
        .max(base_from);
    let mut rotations = early;
    let mut late_failed = Vec::new();
    let late = collect(
        &mut rx,
        n.saturating_sub(rotations.len() + failed.len()),
        due + t_cold.duration_since(t0) + Duration::from_secs(120),
        &mut late_failed,
        &mut Vec::new(),
        false,
    )
    .await;
    rotations.extend(late);
    failed.extend(late_failed);
    let seen = client.finish().await;
    let after = super::wave::count_tagged(&db, SPIFFE_ID_TAG).await?;
    tasks.abort_all();
    drop(peers);
    d.stop()?;

    let rot_from = rotations.iter().min().copied().unwrap_or(t_cold);
    let rot_to = rotations.iter().max().copied().unwrap_or(t_cold);
    let sign_s = n as f64 / raw.signs_per_s.max(f64::MIN_POSITIVE);
    let cold_start_s = t_cold.duration_since(t0).as_secs_f64();
    Ok(WorkloadsResult {
        workloads: n,
        key_type: KEY_TYPE.name().to_owned(),
        peers_start_s,
        cold_start_s,
        cold_start_signatures: cold_signatures,
        cold_start_daemon_cpu_s: (cpu1.0 - cpu0.0) / 1e6,
        cold_start_clients_cpu_s: (cpu1.1 - cpu0.1) / 1e6,
        token_sign_s: sign_s,
        keygen_s,
        cold_start_ratio: cold_start_s / (sign_s + keygen_s),
        ttl_s: ttl_s as f64,
        rotated: rotations.len(),
        rotation_signatures: after - before - cold_signatures,
        rotation_s: rot_to.duration_since(rot_from).as_secs_f64(),
        client_before: seen.latency(base_from, base_to),
        client_before_samples: seen.count(base_from, base_to),
        client_during_rotation: seen.latency(rot_from, rot_to),
        client_during_samples: seen.count(rot_from, rot_to),
        client_errors: seen.errors,
        workload_errors: failed.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_entries_are_replaced_by_one_per_peer() {
        let text = "[token]\nsessions = 2\n\n[workload]\nsocket = \"/t/w.sock\"\ntrust_domain = \"hsmca.test\"\n\n[[workload.entries]]\nspiffe_id = \"spiffe://hsmca.test/user/{user}\"\nttl = \"1h\"\n\n[workload.jwt]\nkey_label = \"hsmca-jwt\"\n";
        let cfg = workloads_config(text, std::path::Path::new("/t/peers"), 2, 20).unwrap();
        let doc: toml::Table = toml::from_str(&cfg).unwrap();
        let w: crate::config::WorkloadConfig = doc["workload"].clone().try_into().unwrap();
        assert_eq!(doc["token"]["sessions"].as_integer(), Some(2));
        assert_eq!(w.rotation_jitter, 0.0);
        assert_eq!(w.min_ttl, Duration::from_secs(1));
        assert_eq!(w.entries.len(), 2);
        assert_eq!(w.entries[1].spiffe_id, "spiffe://hsmca.test/bench/w1");
        assert_eq!(
            w.entries[1].exe.as_deref(),
            Some(std::path::Path::new("/t/peers/w1"))
        );
        assert_eq!(w.entries[0].ttl, Some(Duration::from_secs(20)));
        assert_eq!(w.jwt.key_label, "hsmca-jwt");
    }
}
