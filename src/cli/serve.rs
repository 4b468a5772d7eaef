//! `hsmca serve`: log in, check that the token key and the CA certificate
//! belong together, bind the socket (or take the one systemd passed), serve
//! until SIGTERM/SIGINT. systemd hears `READY=1` only once all of that is
//! done, and the watchdog pings come from signatures (see [`crate::systemd`]).

use std::{path::Path, sync::Arc, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use super::CliResult;
use crate::{
    ca::CaChain,
    config::{Config, JwtConfig, LogFormat},
    crl::CrlPublisher,
    issue::Issuer,
    jwt::JwtAlg,
    metrics::{self, http::MetricsListener},
    policy::{Authorizer, Policy},
    requests::Requests,
    server::{
        self, ServeOptions,
        inflight::InFlight,
        requests::RequestsService,
        service::CaService,
        socket::{self, Activated, BoundSocket, SocketFile},
    },
    signing::{DigestSigner, SignError, SignatureScheme},
    systemd::{self as sd, Probe},
    token::{
        CaKey, KeySelector, Token,
        faults::FaultInjector,
        jwt_key::{self, JwtKeyPair},
        pool::{ExtraKey, PoolOptions, RebuildPlan, SignerPool},
    },
};

/// Time given to written replies to leave the socket once the last request
/// has been answered.
const FLUSH: Duration = Duration::from_millis(200);

/// Sets a new log filter on the running subscriber (SIGHUP).
type SetFilter = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

static SET_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

pub fn init_logging(cfg: &Config) -> CliResult {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .map_err(|e| format!("config key log.level: {e}"))?;
    // A second init (tests running several commands in one process) is harmless.
    match cfg.log.format {
        LogFormat::Text => {
            // Colour only on a terminal: under systemd the journal would
            // store the escape sequences.
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = SET_FILTER.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
        LogFormat::Json => {
            let builder = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = SET_FILTER.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
    }
    Ok(())
}

/// SIGHUP: read the config again and apply its policy and log level. An
/// invalid config is refused with the reason logged, and the running one
/// stays; connections and requests in flight are not touched (a request
/// already past its policy check finishes under the policy that granted it).
async fn reload_on_hup(
    path: std::path::PathBuf,
    auth: Arc<Authorizer>,
    workload: Option<crate::workload::Workload>,
) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        let loaded = Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                let policy = Policy::compile(&cfg.policy).map_err(|e| e.to_string())?;
                let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
                    .map_err(|e| format!("config key log.level: {e}"))?;
                Ok((cfg, policy, filter))
            });
        match loaded {
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: the new configuration is invalid; keeping the running one"
            ),
            Ok((cfg, policy, filter)) => {
                auth.replace(policy);
                if let Some(w) = &workload
                    && let Err(e) = w.reload(&cfg.workload)
                {
                    tracing::warn!(error = %e, "SIGHUP: workload entries not reloaded");
                }
                if let Some(set) = SET_FILTER.get()
                    && let Err(e) = set(filter)
                {
                    tracing::warn!(error = %e, "SIGHUP: could not change the log level");
                }
                tracing::info!(
                    rules = cfg.policy.rules.len(),
                    log_level = %cfg.log.level,
                    "SIGHUP: reloaded the policy and the log level (other settings need a restart)"
                );
            }
        }
    }
}

/// Opens the token, logs in, finds the existing CA key and starts the
/// signing threads. Runs the blocking PKCS#11 work off the async runtime.
pub async fn open_signer(cfg: &Config, sessions: usize) -> CliResult<(Arc<SignerPool>, CaKey)> {
    let (pool, key, _) = open_signers(cfg, sessions, None).await?;
    Ok((pool, key))
}

/// [`open_signer`], with the JWT-SVID key of `jwt` (when given) signing
/// through the same sessions as the pool's first extra key.
pub async fn open_signers(
    cfg: &Config,
    sessions: usize,
    jwt: Option<&JwtConfig>,
) -> CliResult<(Arc<SignerPool>, CaKey, Option<JwtKeyPair>)> {
    let pin = crate::pin::load_pin(&cfg.token)?;
    let locator = cfg.token.locator()?;
    let kt = cfg.ca.key_type;
    let scheme = SignatureScheme::for_ca(&cfg.ca);
    let queue = cfg.token.queue_depth;
    let jwt = jwt.cloned();
    // A test hook; without HSMCA_TEST_FAULTS it does nothing.
    let faults = Arc::new(FaultInjector::from_env());
    let (pool, key, jwt_key) = tokio::task::spawn_blocking(move || -> CliResult<_> {
        let token = Token::open_with(&locator, &pin, faults.clone())?;
        let selector = KeySelector::from_locator(&locator);
        let key = token.find_ca_key(&selector, kt)?;
        let jwt_key = match &jwt {
            Some(j) => Some(
                jwt_key::find_jwt_key(
                    &token,
                    &j.key_label,
                    &j.previous_label(),
                    j.key_type,
                    &key.id,
                )
                .map_err(|source| jwt_key::JwtKeyError {
                    label: j.key_label.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let extra_keys = match (&jwt, &jwt_key) {
            (Some(j), Some(pair)) => vec![ExtraKey {
                scheme: JwtAlg::for_key_type(j.key_type).scheme(),
                key_type: j.key_type,
                key: pair.current.clone(),
            }],
            _ => Vec::new(),
        };
        let opts = PoolOptions {
            scheme,
            sessions,
            queue_depth: queue,
            rebuild: RebuildPlan {
                token_label: locator.token_label.clone(),
                selector,
                key_type: kt,
                pin,
                spki: key.spki.clone(),
                extra: Vec::new(),
            },
            faults,
            extra_keys,
        };
        let pool = SignerPool::start(token, &key, opts)?;
        Ok((pool, key, jwt_key))
    })
    .await??;
    Ok((Arc::new(pool), key, jwt_key))
}

/// Signs a random message through the pool and verifies it with the CA
/// certificate's public key: proof that the token key, the mechanism and the
/// certificate agree before any client is served.
pub async fn self_test(pool: &SignerPool, ca: &CaChain) -> CliResult {
    let mut msg = [0u8; 32];
    getrandom::fill(&mut msg)?;
    let scheme = pool.scheme();
    let sig = pool.sign_digest(scheme.digest(&msg)).await?;
    crate::verify::verify(
        ca.issuing.tbs_certificate().subject_public_key_info(),
        &scheme.algorithm_identifier()?,
        &msg,
        &sig,
    )
    .map_err(|e| {
        format!(
            "start-up self-test: a token signature failed to verify against the CA certificate: {e}"
        )
    })?;
    Ok(())
}

/// The watchdog's probe: a real signature of a random digest through the
/// pool, verified with the CA certificate's key. A full queue is retried
/// (the caller's timeout bounds the wait): a busy signer is not a wedged one.
async fn watchdog_probe(pool: &SignerPool, ca: &CaChain) -> Probe {
    let mut msg = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut msg) {
        return Probe::Failed(format!("no random bytes: {e}"));
    }
    let scheme = pool.scheme();
    let alg = match scheme.algorithm_identifier() {
        Ok(a) => a,
        Err(e) => return Probe::Failed(e.to_string()),
    };
    loop {
        match pool.sign_digest(scheme.digest(&msg)).await {
            Ok(sig) => {
                let spki = ca.issuing.tbs_certificate().subject_public_key_info();
                return match crate::verify::verify(spki, &alg, &msg, &sig) {
                    Ok(()) => Probe::Signed,
                    Err(e) => Probe::Failed(format!(
                        "a token signature failed to verify against the CA certificate: {e}"
                    )),
                };
            }
            Err(SignError::Unavailable) => return Probe::Unavailable,
            Err(SignError::Busy) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Probe::Failed(e.to_string()),
        }
    }
}

pub async fn serve(config_path: &Path) -> CliResult {
    let started = std::time::Instant::now();
    let cfg = Config::load(config_path)?;
    // The policy's rules are checked before anything else is touched.
    let policy = Policy::compile(&cfg.policy)?;
    init_logging(&cfg)?;
    // Before any thread that may read the environment from C (the PKCS#11
    // module): this removes LISTEN_FDS/LISTEN_PID.
    let activated = socket::take_activated()?;
    // Refused before the token is touched. An abstract socket passed by
    // systemd has no directory to check.
    match &activated {
        None => socket::check_socket_dir(&cfg.server.socket)?,
        Some(Activated { path: Some(p), .. }) => socket::check_socket_dir(p)?,
        Some(_) => {}
    }
    let mut ca = CaChain::load(&cfg.ca)?;
    ca.issuer.crl_url = cfg.ca.crl_url.clone();
    let ca = Arc::new(ca);
    sd::status("logging in to the token");
    let token_started = std::time::Instant::now();
    let jwt_cfg = super::jwt_key::configured(&cfg);
    let (pool, key, jwt_key) = open_signers(&cfg, cfg.token.sessions, jwt_cfg).await?;
    let jwt = match (jwt_key, jwt_cfg) {
        (Some(pair), Some(j)) => {
            Some(super::jwt_key::authority(&pool, pair, j, &cfg.workload.trust_domain).await?)
        }
        _ => None,
    };
    let timing = StartTiming {
        started,
        token: token_started.elapsed(),
    };
    let loaded = Loaded {
        cfg: &cfg,
        path: config_path,
        policy,
        jwt,
    };
    let result = serve_with(loaded, ca, pool.clone(), &key, activated, timing).await;
    let stopper = pool.clone();
    tokio::task::spawn_blocking(move || stopper.shutdown()).await?;
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// How long start-up took, for the "serving" log line: in total, and in
/// the token (module, C_Initialize, login, key lookup, sessions), which
/// depends on the HSM rather than on hsmca.
/// The configuration as read at start-up, with its policy compiled.
struct Loaded<'a> {
    cfg: &'a Config,
    path: &'a Path,
    policy: Policy,
    /// The JWT-SVID authority, when the workload endpoint is on.
    jwt: Option<Arc<crate::jwt::JwtAuthority>>,
}

struct StartTiming {
    started: std::time::Instant,
    token: Duration,
}

async fn serve_with(
    loaded: Loaded<'_>,
    ca: Arc<CaChain>,
    pool: Arc<SignerPool>,
    key: &CaKey,
    activated: Option<Activated>,
    timing: StartTiming,
) -> CliResult {
    let Loaded {
        cfg,
        path: config_path,
        policy,
        jwt,
    } = loaded;
    sd::status("start-up self-test: signing with the token");
    ca.check_key(&key.spki)?;
    self_test(&pool, &ca).await?;
    let token_state = pool.state();
    sd::status("opening the store");
    let store = crate::store::open(&cfg.state).await?;
    let store_state = store.readiness();
    let probe_pool = pool.clone();
    let issuer = Arc::new(
        Issuer::new(
            pool.clone(),
            ca.clone(),
            cfg.profiles.clone(),
            cfg.ca.backdate,
        )
        .with_key_label(key.label.clone()),
    );
    // Work no client waits on (workload SVIDs, the certificate-request
    // worker) is signed after the requests queued beside it.
    let background = Arc::new(issuer.with_signer(Arc::new(pool.background())));
    let crl = Arc::new(CrlPublisher::new(
        pool,
        store.clone(),
        ca.clone(),
        cfg.crl.validity,
    ));
    // A CRL exists before the first client asks; failures are retried.
    let refresher = tokio::spawn(crl.clone().refresh_forever());
    let auth = Arc::new(Authorizer::new(policy));
    let workload = super::serve_workload::start(
        cfg,
        background.clone(),
        store.clone(),
        &ca,
        crl.clone(),
        jwt,
    )
    .await?;
    let mut reloader = tokio::task::JoinSet::new();
    reloader.spawn(reload_on_hup(
        config_path.to_owned(),
        auth.clone(),
        workload.as_ref().map(|w| w.workload.clone()),
    ));
    let requests = Arc::new(Requests::new(
        auth.clone(),
        background,
        store.clone(),
        crl.clone(),
        cfg.requests.clone(),
        cfg.state.request_id_retention,
        cfg.ca.backdate,
    ));
    // Issues what is due, including renewals that fell due while stopped.
    // Held in a JoinSet so that every way out of here stops it.
    let mut worker = tokio::task::JoinSet::new();
    worker.spawn(requests.clone().run_worker());
    // Changes other daemons sharing the store make reach this one's watchers.
    worker.spawn(requests.clone().follow_changes());
    // Deletes records and audit entries older than state.retention.
    worker.spawn(crate::store::retention::run(
        store.clone(),
        cfg.state.retention,
    ));
    let service = CaService::new(
        issuer,
        store,
        crl,
        cfg.state.request_id_retention,
        auth.clone(),
    );
    // Before the socket exists: a client that sees it may stop the daemon
    // at once, and SIGTERM must then be a clean shutdown, not a kill.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // The metrics endpoint, before the API socket: a client (or a test)
    // that sees the API socket answer finds the metrics socket there too.
    // Its socket file is removed when this returns.
    let (metrics_task, _metrics_file) = start_metrics(cfg, requests.clone()).await?;
    // A socket systemd passed is served as it is and never removed: it
    // belongs to hsmca.socket. One we bind is removed at exit.
    let (listener, _socket_file, socket_path) = match activated {
        Some(a) => {
            let path = a.path.clone().unwrap_or_else(|| "(unnamed)".into());
            tracing::info!(socket = %path.display(), "using the socket passed by systemd (server.socket is not bound)");
            (a.into_tokio()?, None, path)
        }
        None => {
            let bound = BoundSocket::bind(&cfg.server.socket, cfg.server.socket_mode_bits())?;
            let (listener, file) = bound.into_parts();
            (listener, Some(file), cfg.server.socket.clone())
        }
    };

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let in_flight = InFlight::default();
    let opts = ServeOptions {
        max_request_bytes: cfg.server.max_request_bytes,
        in_flight: in_flight.clone(),
        // Health follows the token and, when it can go away, the store.
        readiness: Some(match store_state {
            Some(s) => server::health::both_ready(token_state, s),
            None => token_state,
        }),
        limits: cfg.server.limits(),
    };
    raise_fd_limit(cfg.server.max_connections);
    let requests = RequestsService::new(requests);
    let mut server = tokio::spawn(server::run(service, requests, listener, opts, async {
        let _ = stop_rx.await;
    }));
    tracing::info!(
        socket = %socket_path.display(),
        key = %key.label,
        key_id = %hex::encode(&key.id),
        ca = %ca.issuing.tbs_certificate().subject(),
        startup_ms = timing.started.elapsed().as_secs_f64() * 1000.0,
        token_ms = timing.token.as_secs_f64() * 1000.0,
        "serving"
    );
    sd::ready(&format!("serving on {}", socket_path.display()));
    let mut watchdog = tokio::task::JoinSet::new();
    if let Some(period) = sd::watchdog_period() {
        tracing::info!(
            ?period,
            "systemd watchdog: a test signature every half period"
        );
        let state = probe_pool.state();
        let ca = ca.clone();
        watchdog.spawn(sd::watchdog(period, state, move || {
            let pool = probe_pool.clone();
            let ca = ca.clone();
            async move { watchdog_probe(&pool, &ca).await }
        }));
    }

    tokio::select! {
        r = &mut server => return Ok(r??),
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
    watchdog.abort_all();
    sd::stopping("stopping: finishing in-flight requests");
    let _ = stop_tx.send(());
    // Stop when the server has closed every connection, or when no request
    // is in flight any more (plus a moment to flush the last replies): an
    // idle or stalled client must not hold the daemon up. The grace period
    // caps the wait for requests that do not finish.
    let drained = async {
        in_flight.idle().await;
        tokio::time::sleep(FLUSH).await;
    };
    tokio::select! {
        r = &mut server => r??,
        _ = drained => server.abort(),
        _ = tokio::time::sleep(cfg.server.shutdown_grace) => {
            tracing::warn!(
                grace = ?cfg.server.shutdown_grace,
                in_flight = in_flight.count(),
                "in-flight requests did not finish in time; stopping anyway"
            );
            server.abort();
        }
    }
    refresher.abort();
    worker.abort_all();
    metrics_task.abort();
    Ok(())
}

/// Binds the metrics listeners and serves them in a task of their own.
async fn start_metrics(
    cfg: &Config,
    requests: Arc<Requests>,
) -> CliResult<(tokio::task::JoinHandle<()>, Option<SocketFile>)> {
    let m = metrics::metrics();
    m.mark_started();
    let mut listeners = Vec::new();
    let mut file = None;
    if let Some(path) = cfg.metrics_socket() {
        let bound = BoundSocket::bind(&path, cfg.metrics.socket_mode_bits())
            .map_err(|e| format!("metrics.socket: {e}"))?;
        let (l, f) = bound.into_parts();
        listeners.push(MetricsListener::Unix(l));
        file = Some(f);
        tracing::info!(socket = %path.display(), "metrics endpoint");
    }
    if let Some(addr) = &cfg.metrics.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("metrics.listen: cannot bind {addr}: {e}"))?;
        listeners.push(MetricsListener::Tcp(l));
        tracing::info!(address = %addr, "metrics endpoint (TCP)");
    }
    let refresh: metrics::http::Refresh = Arc::new(move || {
        metrics::metrics().watchers.set(requests.watched() as i64);
    });
    let task = tokio::spawn(metrics::http::serve(
        listeners,
        refresh,
        std::future::pending(),
    ));
    Ok((task, file))
}

/// Every connection is a descriptor: raise the soft limit to the hard one
/// so that `server.max_connections` fits, and say so when it does not.
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    // Room for the store, the token, the listeners and the logs.
    if let Some(soft) = soft
        && soft < max_connections as u64 + 64
    {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-file limit is below server.max_connections + 64; connections beyond it fail to be accepted (raise LimitNOFILE)"
        );
    }
}
