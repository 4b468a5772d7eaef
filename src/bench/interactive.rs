//! One interactive client beside a load (the renewal wave, the CSR burst):
//! a single connection asking for P-256 certificates one after another,
//! each request's start and latency kept, so that a scenario can read the
//! client's latency before and during its load.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use super::load::Latency;
use crate::{
    client::{CliResult, connect},
    proto::{
        GenerateClientCertificateRequest, certificate_authority_client::CertificateAuthorityClient,
    },
};

struct Sample {
    start: Instant,
    us: u32,
}

/// The running client; [`Interactive::finish`] stops it.
pub struct Interactive {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    errors: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// What the client saw, read by time window.
pub struct Seen {
    samples: Vec<Sample>,
    pub errors: u64,
}

impl Interactive {
    /// Connects and starts asking; common names are `{prefix}-{n}`.
    pub async fn start(
        socket: &std::path::Path,
        keys: Arc<Vec<String>>,
        prefix: &'static str,
    ) -> CliResult<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::<Sample>::with_capacity(64 * 1024)));
        let errors = Arc::new(AtomicU64::new(0));
        let mut client = CertificateAuthorityClient::new(connect(socket).await?);
        let task = {
            let (stop, samples, errors) = (stop.clone(), samples.clone(), errors.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let req = GenerateClientCertificateRequest {
                        public_key: keys[n % keys.len()].clone(),
                        common_name: format!("{prefix}-{n}"),
                        ..Default::default()
                    };
                    let t = Instant::now();
                    let r = client.generate_client_certificate(req).await;
                    let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                    match r {
                        Ok(_) => {
                            if let Ok(mut s) = samples.lock() {
                                s.push(Sample { start: t, us });
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Ok(Self {
            stop,
            samples,
            errors,
            task,
        })
    }

    /// Stops the client after its request in flight.
    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Seen {
            samples: self
                .samples
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default(),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

impl Seen {
    /// The latency of the requests started in `[from, to)`.
    pub fn latency(&self, from: Instant, to: Instant) -> Latency {
        Latency::of(self.in_window(from, to).map(|s| s.us).collect())
    }

    /// How many requests succeeded that started in `[from, to)`.
    pub fn count(&self, from: Instant, to: Instant) -> usize {
        self.in_window(from, to).count()
    }

    fn in_window(&self, from: Instant, to: Instant) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.start >= from && s.start < to)
    }
}
