//! Load generators: C clients, each on its own connection to the daemon's
//! socket, sending one request after another for a fixed time. Latency is
//! counted per request, from send to reply, on requests that start inside
//! the measured window (after a warm-up).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::daemon::Daemon;
use crate::{
    client::{CliResult, connect},
    proto::{
        ClientCertificate, GenerateClientCertificateRequest, GetClientCertificateRequest,
        certificate_authority_client::CertificateAuthorityClient,
    },
};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut us: Vec<u32>) -> Self {
        if us.is_empty() {
            return Self::default();
        }
        us.sort_unstable();
        let at = |q: f64| {
            let i = ((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1;
            f64::from(us[i]) / 1000.0
        };
        Self {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub seconds: f64,
    pub ok: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub per_s: f64,
    pub latency: Latency,
    /// The daemon's CPU time (user + system) in the window ÷ successful requests.
    pub daemon_cpu_us_per_op: f64,
    /// The daemon's VmHWM after the run.
    pub daemon_peak_rss_kib: u64,
}

/// What each client sends.
#[derive(Clone)]
pub enum Work {
    /// Fresh certificates: public keys round-robin, a new common name each time.
    Issue { keys: Arc<Vec<String>>, tag: String },
    /// `GetClientCertificate` of these ids, round-robin.
    Get { ids: Arc<Vec<String>> },
    /// The health check: an empty unary call, the floor of every RPC.
    Health,
    /// Client i sends `requests[i % len]` again and again (same request_id);
    /// every reply must equal `expected[i % len]`.
    Replay {
        requests: Arc<Vec<GenerateClientCertificateRequest>>,
        expected: Arc<Vec<ClientCertificate>>,
    },
}

struct ClientOutcome {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
    ids: Vec<String>,
}

/// Runs `work` with `clients` clients: `warmup`, then `seconds` measured.
/// Returns the figures and (for `Issue`) up to `keep_ids` certificate ids.
pub async fn run(
    socket: &Path,
    daemon: &Daemon,
    work: Work,
    clients: usize,
    warmup: Duration,
    seconds: f64,
    keep_ids: usize,
) -> CliResult<(LoadResult, Vec<String>)> {
    let cpu = || daemon.cpu_us();
    let spread = Spread {
        sockets: &[socket.to_owned()],
        cpu: &cpu,
        peak_rss_kib: &|| daemon.vm_kib("VmHWM"),
    };
    let (r, ids, _) = run_spread(spread, work, clients, warmup, seconds, keep_ids).await?;
    Ok((r, ids))
}

/// Several daemons behind one load: the clients go round-robin over the
/// sockets; `cpu` is the daemons' CPU time (µs) and `other_cpu` anything
/// else measured in the same window (a database server), per operation.
pub struct Spread<'a> {
    pub sockets: &'a [std::path::PathBuf],
    pub cpu: &'a dyn Fn() -> CliResult<f64>,
    pub peak_rss_kib: &'a dyn Fn() -> CliResult<u64>,
}

/// [`run`] over several sockets; also returns `other_cpu` (µs) per
/// operation when given.
pub async fn run_spread(
    spread: Spread<'_>,
    work: Work,
    clients: usize,
    warmup: Duration,
    seconds: f64,
    keep_ids: usize,
) -> CliResult<(LoadResult, Vec<String>, f64)> {
    run_measured(spread, None, work, clients, warmup, seconds, keep_ids).await
}

/// [`run_spread`] measuring `other_cpu` (µs) in the window too.
pub async fn run_measured(
    spread: Spread<'_>,
    other_cpu: Option<&dyn Fn() -> CliResult<f64>>,
    work: Work,
    clients: usize,
    warmup: Duration,
    seconds: f64,
    keep_ids: usize,
) -> CliResult<(LoadResult, Vec<String>, f64)> {
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let socket = &spread.sockets[i % spread.sockets.len().max(1)];
        let channel = connect(socket).await?;
        conns.push((
            CertificateAuthorityClient::new(channel.clone()),
            HealthClient::new(channel),
        ));
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (client, health)) in conns.into_iter().enumerate() {
        let work = work.clone();
        let per_client_ids = keep_ids.div_ceil(clients.max(1));
        tasks.spawn(client_loop(
            i,
            (client, health),
            work,
            start,
            measure_from,
            end,
            per_client_ids,
        ));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let other = || other_cpu.map_or(Ok(0.0), |f| f());
    let cpu0 = (spread.cpu)()?;
    let other0 = other()?;
    let t0 = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = (spread.cpu)()?;
    let other1 = other()?;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut ok = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| format!("a bench client failed: {e}"))?;
        ok += r.ok;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        latencies.extend(r.latencies_us);
        ids.extend(r.ids);
    }
    ids.truncate(keep_ids);
    Ok((
        LoadResult {
            clients,
            seconds: elapsed,
            ok,
            errors,
            first_error,
            per_s: ok as f64 / elapsed,
            latency: Latency::of(latencies),
            daemon_cpu_us_per_op: (cpu1 - cpu0) / ok.max(1) as f64,
            daemon_peak_rss_kib: (spread.peak_rss_kib)()?,
        },
        ids,
        (other1 - other0) / ok.max(1) as f64,
    ))
}

async fn client_loop(
    i: usize,
    (mut client, mut health): (CertificateAuthorityClient<Channel>, HealthClient<Channel>),
    work: Work,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    keep_ids: usize,
) -> ClientOutcome {
    let mut out = ClientOutcome {
        ok: 0,
        errors: 0,
        first_error: None,
        latencies_us: Vec::with_capacity(16 * 1024),
        ids: Vec::new(),
    };
    tokio::time::sleep_until(start.into()).await;
    let mut n: u64 = 0;
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        n += 1;
        let result: Result<Option<String>, String> = match &work {
            Work::Issue { keys, tag } => {
                let req = GenerateClientCertificateRequest {
                    public_key: keys[(i + n as usize) % keys.len()].clone(),
                    common_name: format!("bench-{tag}-{i}-{n}"),
                    ..Default::default()
                };
                client
                    .generate_client_certificate(req)
                    .await
                    .map(|r| Some(r.into_inner().certificate_id))
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Work::Get { ids } => {
                let req = GetClientCertificateRequest {
                    certificate_id: ids[(i * 7919 + n as usize) % ids.len()].clone(),
                };
                client
                    .get_client_certificate(req)
                    .await
                    .map(|_| None)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Work::Health => health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| None)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            Work::Replay { requests, expected } => {
                let k = i % requests.len();
                match client
                    .generate_client_certificate(requests[k].clone())
                    .await
                {
                    Ok(r) if r.get_ref() == &expected[k] => Ok(None),
                    Ok(_) => Err("a replay returned a different reply".to_owned()),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        };
        let done = Instant::now();
        let counted = t >= measure_from && done <= end;
        match result {
            Ok(id) => {
                if counted {
                    out.ok += 1;
                    out.latencies_us.push(
                        u32::try_from(done.duration_since(t).as_micros()).unwrap_or(u32::MAX),
                    );
                }
                if let Some(id) = id
                    && out.ids.len() < keep_ids
                {
                    out.ids.push(id);
                }
            }
            Err(e) => {
                if counted {
                    out.errors += 1;
                }
                if out.first_error.is_none() {
                    out.first_error = Some(e);
                }
            }
        }
    }
    out
}
