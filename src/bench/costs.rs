//! `hsmca bench --costs`: the cost model of one certificate. The daemon's
//! CPU per certificate at C=64 is broken into its parts, each measured on
//! its own in the same run:
//!
//! - **token**: one C_Sign in the token's library (SoftHSM2 runs inside the
//!   daemon, so its signature is daemon CPU here; on a network HSM it is
//!   not), from the raw signing run in a child process;
//! - **gRPC floor**: an empty unary call over the socket (the health
//!   check): HTTP/2, the `:authority` fix, protobuf, tonic, the bounds
//!   layer — daemon CPU per call at the same concurrency;
//! - **checks and policy**: the caller's identity, the request checks, the
//!   policy decision and the certificate's fields (`check`, `authorize`,
//!   `decide`);
//! - **build and encode**: the TBS, its digest, the certificate and its PEM,
//!   with a signer that answers at once;
//! - **signer hand-off**: the queue to a signing thread and the reply back
//!   (the pool's job queue + oneshot), with a thread that answers at once;
//! - **store commit**: the record and its audit entry through the
//!   group-commit writer, with as many commits in flight as clients;
//! - **reply**: the reply message from the record, encoded.
//!
//! In-process parts are timed with the process's own CPU (getrusage), a
//! loop long enough for the clock; the sum is set against the measured
//! total, and the gap is reported: it is what no part accounts for
//! (scheduling, allocation across threads, the log line, metrics).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{
    BenchArgs,
    daemon::{Daemon, Testbed},
    load::{self, Work},
    progress, raw, subject_keys, warmup,
};
use crate::{
    audit::AuditEntry,
    ca::CaChain,
    client::CliResult,
    config::KeyType,
    issue::{IssueRequest, Issuer},
    peer::Peer,
    policy::{Authorizer, Policy},
    server::replies,
    signing::{DigestSigner, SignFuture, SignatureScheme},
    store::Record,
};

#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub name: String,
    pub cpu_us: f64,
    /// How it was measured (operations, concurrency).
    pub how: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub key: String,
    pub clients: usize,
    /// Daemon CPU per certificate, measured.
    pub total_cpu_us: f64,
    pub certificates_per_s: f64,
    pub parts: Vec<Part>,
    pub sum_cpu_us: f64,
    /// (total − sum) ÷ total.
    pub gap: f64,
}

/// Process CPU (user + system, every thread) so far, in µs.
fn cpu_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

/// Runs `op` until at least `min` has passed (and `min_ops` were done);
/// returns CPU-µs per operation.
async fn per_op<F, Fut>(min: Duration, min_ops: u64, mut op: F) -> CliResult<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = CliResult>,
{
    // Warm caches and lazy statics first.
    for i in 0..(min_ops / 10).max(10) {
        op(i).await?;
    }
    let start = Instant::now();
    let cpu0 = cpu_now();
    let mut n = 0;
    while n < min_ops || start.elapsed() < min {
        op(n).await?;
        n += 1;
    }
    Ok((cpu_now() - cpu0) / n as f64)
}

/// Answers at once with a signature of the scheme's size: what the token
/// would hand back, without the token.
struct InstantSigner {
    scheme: SignatureScheme,
    spki: spki::SubjectPublicKeyInfoOwned,
    signature: Vec<u8>,
}

impl InstantSigner {
    fn new(
        scheme: SignatureScheme,
        spki: spki::SubjectPublicKeyInfoOwned,
        key_type: KeyType,
    ) -> CliResult<Self> {
        // What the token returns: r||s for ECDSA, the modulus' size for RSA.
        let raw_len = match key_type {
            KeyType::P256 => 64,
            KeyType::P384 => 96,
            rsa => rsa.rsa_bits().unwrap_or(2048) as usize / 8,
        };
        let signature = scheme.signature_value(&vec![0x31; raw_len])?;
        Ok(Self {
            scheme,
            spki,
            signature,
        })
    }
}

impl DigestSigner for InstantSigner {
    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
    fn public_key(&self) -> &spki::SubjectPublicKeyInfoOwned {
        &self.spki
    }
    fn sign_digest(&self, _digest: Vec<u8>) -> SignFuture<'_> {
        let sig = self.signature.clone();
        Box::pin(async move { Ok(sig) })
    }
}

fn request(keys: &[String], n: u64) -> IssueRequest {
    IssueRequest {
        profile: String::new(),
        public_key: keys[n as usize % keys.len()].clone(),
        pem_csr: String::new(),
        common_name: format!("cost-{n}"),
        dns_names: Vec::new(),
        uri_sans: Vec::new(),
        ip_addresses: Vec::new(),
        lifetime: None,
        description: String::new(),
        tags: Default::default(),
        request_id: String::new(),
    }
}

pub async fn run(args: &BenchArgs, setup: &Path, seconds: f64) -> CliResult {
    let key = args.keys.first().map_or("p256", String::as_str).to_owned();
    let clients = args.clients.iter().copied().max().unwrap_or(64);
    let bed = Testbed::new(setup, &key, &[])?;
    let cfg = bed.load_config()?;
    let keys = Arc::new(subject_keys(4)?);
    let min = Duration::from_secs_f64(seconds.clamp(0.2, 5.0));
    let mut parts = Vec::new();

    progress(args, &format!("{key}: raw C_Sign (the token's share)"));
    let raw = raw::in_child(&bed, seconds)?;
    parts.push(Part {
        name: "token: C_Sign".into(),
        cpu_us: raw.cpu_us_per_sign,
        how: format!("{} signatures on {} sessions", raw.signs, raw.sessions),
    });

    progress(
        args,
        &format!("{key}: issuing with {clients} clients, then empty calls"),
    );
    let d = Daemon::start(&bed)?;
    let socket = bed.socket();
    let issue = Work::Issue {
        keys: keys.clone(),
        tag: "costs".into(),
    };
    let (total, _) = load::run(&socket, &d, issue, clients, warmup(seconds), seconds, 0).await?;
    let (floor, _) = load::run(
        &socket,
        &d,
        Work::Health,
        clients,
        warmup(seconds),
        seconds,
        0,
    )
    .await?;
    d.stop()?;
    parts.push(Part {
        name: "gRPC floor: an empty unary call".into(),
        cpu_us: floor.daemon_cpu_us_per_op,
        how: format!("{} health checks, {clients} clients", floor.ok),
    });

    // The daemon's own pieces, in this process, on the testbed's CA.
    let ca = Arc::new(CaChain::load(&cfg.ca)?);
    let scheme = SignatureScheme::for_ca(&cfg.ca);
    let spki = ca
        .issuing
        .tbs_certificate()
        .subject_public_key_info()
        .clone();
    let signer = Arc::new(InstantSigner::new(scheme, spki, cfg.ca.key_type)?);
    let issuer = Arc::new(Issuer::new(
        signer,
        ca.clone(),
        cfg.profiles.clone(),
        cfg.ca.backdate,
    ));
    let auth = Arc::new(Authorizer::new(Policy::compile(&cfg.policy)?));
    let me = Peer {
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        pid: Some(std::process::id() as i32),
    };

    progress(
        args,
        "in-process: checks and policy, build and encode, reply",
    );
    let checks = per_op(min, 2000, |n| {
        let (issuer, auth, keys) = (issuer.clone(), auth.clone(), keys.clone());
        async move {
            let who = auth.identify(&me).await;
            let policy = auth.current();
            let checked = issuer.check(request(&keys, n))?;
            let grant = policy.authorize(&who, checked.profile(), &checked.raw_names())?;
            let decided = issuer.decide(checked, grant.limits())?;
            policy.check_rate(&grant, &who)?;
            std::hint::black_box(decided);
            Ok(())
        }
    })
    .await?;
    parts.push(Part {
        name: "checks, identity and policy".into(),
        cpu_us: checks,
        how: "check + identify + authorize + decide, one at a time".into(),
    });

    // Build: decided requests made ahead, so only sign() is timed.
    let grant_limits = {
        let who = auth.identify(&me).await;
        let checked = issuer.check(request(&keys, 0))?;
        auth.current()
            .authorize(&who, checked.profile(), &checked.raw_names())?
            .limits()
    };
    let mut decided = Vec::new();
    // About a second's worth on a fast machine per second measured.
    let ahead = (min.as_secs_f64() * 10_000.0).clamp(500.0, 30_000.0) as u64;
    for n in 0..ahead {
        decided.push(issuer.decide(issuer.check(request(&keys, n))?, grant_limits.clone())?);
    }
    let mut decided = decided.into_iter();
    let mut issued_one = None;
    let cpu0 = cpu_now();
    let mut built = 0u64;
    for d in decided.by_ref() {
        let issued = issuer.sign(d).await?;
        built += 1;
        issued_one.get_or_insert(issued);
    }
    let build = (cpu_now() - cpu0) / built.max(1) as f64;
    parts.push(Part {
        name: "build and encode: TBS, digest, certificate, PEM".into(),
        cpu_us: build,
        how: format!("{built} certificates, signer answering at once"),
    });
    let issued = issued_one.ok_or("no certificate was built")?;

    progress(args, "in-process: signer hand-off");
    let handoff = handoff_cost(clients, min).await?;
    parts.push(Part {
        name: "signer hand-off: queue to the signing thread and back".into(),
        cpu_us: handoff,
        how: format!("job queue + oneshot round trips, {clients} in flight"),
    });

    let who = auth.identify(&me).await;
    let record = Record::issued(&issued, &me, String::new());
    let reply_cost = per_op(min, 5000, |_| {
        let (record, ca) = (record.clone(), ca.clone());
        async move {
            let reply = replies::to_reply(&record, &ca, crate::time::unix_now());
            std::hint::black_box(prost::Message::encode_to_vec(&reply));
            Ok(())
        }
    })
    .await?;

    progress(args, "in-process: store commits");
    let store_dir = tempfile::Builder::new().prefix("hsmca-costs-").tempdir()?;
    let state = crate::config::StateConfig {
        dir: store_dir.path().to_owned(),
        ..cfg.state.clone()
    };
    let store = crate::store::open(&state).await?;
    let audit = AuditEntry::issued(&issued, Some(&who), "GenerateClientCertificate");
    let commit = store_cost(store, &record, &audit, clients, min).await?;
    parts.push(Part {
        name: "store commit: record and audit entry".into(),
        cpu_us: commit,
        how: format!("{clients} commits in flight (group commit), SQLite"),
    });
    parts.push(Part {
        name: "reply: message from the record, encoded".into(),
        cpu_us: reply_cost,
        how: "one at a time".into(),
    });

    let sum: f64 = parts.iter().map(|p| p.cpu_us).sum();
    let report = CostReport {
        key: key.clone(),
        clients,
        total_cpu_us: total.daemon_cpu_us_per_op,
        certificates_per_s: total.per_s,
        sum_cpu_us: sum,
        gap: (total.daemon_cpu_us_per_op - sum) / total.daemon_cpu_us_per_op.max(f64::MIN_POSITIVE),
        parts,
    };
    super::report::emit_with(&report, args.json, args.json_out.as_deref(), || {
        let mut t = format!(
            "{key}: one certificate's daemon CPU at C={clients} ({:.0} certificates/s)\n{:<56} {:>9} {:>7}\n",
            report.certificates_per_s, "part", "CPU-µs", "share"
        );
        for p in &report.parts {
            t += &format!(
                "{:<56} {:>9.1} {:>6.0}%   {}\n",
                p.name,
                p.cpu_us,
                100.0 * p.cpu_us / report.total_cpu_us.max(f64::MIN_POSITIVE),
                p.how
            );
        }
        t += &format!(
            "{:<56} {:>9.1}\n{:<56} {:>9.1}\ngap (total − sum) / total: {:+.0}% (target within ±15%)\n",
            "sum of the parts",
            report.sum_cpu_us,
            "measured total (daemon CPU per certificate)",
            report.total_cpu_us,
            100.0 * report.gap
        );
        t
    })
}

/// CPU per round trip through the signer pool's job queue to a thread that
/// answers on a oneshot at once, with `inflight` callers.
async fn handoff_cost(inflight: usize, min: Duration) -> CliResult<f64> {
    use crate::token::queue::{JobQueue, Priority};
    type Job = (Vec<u8>, tokio::sync::oneshot::Sender<Vec<u8>>);
    let queue = Arc::new(JobQueue::<Job>::new(inflight.max(1)));
    let worker = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            while let Some((digest, reply)) = queue.pop() {
                let _ = reply.send(digest);
            }
        })
    };
    let run = |until: Instant| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..inflight {
            let queue = queue.clone();
            tasks.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let (reply, rx) = tokio::sync::oneshot::channel();
                    if queue
                        .try_push(Priority::Interactive, (vec![0u8; 32], reply))
                        .is_err()
                    {
                        break;
                    }
                    if rx.await.is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            });
        }
        tasks
    };
    let mut warm = run(Instant::now() + Duration::from_millis(200));
    while warm.join_next().await.is_some() {}
    let cpu0 = cpu_now();
    let mut tasks = run(Instant::now() + min);
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.map_err(|e| format!("a hand-off task failed: {e}"))?;
    }
    let per = (cpu_now() - cpu0) / n.max(1) as f64;
    queue.close();
    let _ = worker.join();
    Ok(per)
}

/// CPU per committed record (with its audit entry), `inflight` commits at
/// once so the writer groups them as under load.
async fn store_cost(
    store: Arc<dyn crate::store::Store>,
    record: &Record,
    audit: &AuditEntry,
    inflight: usize,
    min: Duration,
) -> CliResult<f64> {
    let run = |until: Instant, base: u64| {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..inflight {
            let (store, record, audit) = (store.clone(), record.clone(), audit.clone());
            tasks.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let mut r = record.clone();
                    r.id = uuid::Uuid::now_v7().to_string();
                    r.serial = format!("{base:x}{c:04x}{n:012x}");
                    r.create_time_us = crate::time::unix_us(SystemTime::now());
                    store.insert_audited(r, Some(audit.clone())).await?;
                    n += 1;
                }
                Ok::<u64, crate::store::StoreError>(n)
            });
        }
        tasks
    };
    let mut warm = run(Instant::now() + Duration::from_millis(300), 1);
    while let Some(r) = warm.join_next().await {
        r.map_err(|e| format!("a commit task failed: {e}"))??;
    }
    let cpu0 = cpu_now();
    let mut tasks = run(Instant::now() + min, 2);
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.map_err(|e| format!("a commit task failed: {e}"))??;
    }
    Ok((cpu_now() - cpu0) / n.max(1) as f64)
}
