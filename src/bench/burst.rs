//! A burst of large-RSA CSRs beside an interactive client: N requests (200 by default),
//! each carrying the same RSA-8192 CSR (whose signature the daemon must
//! verify before anything is signed), sent at once over 4 connections and
//! repeated back to back for the measurement window, while one P-256
//! client asks for certificates one after another. What matters is how far
//! that client's latency moves, not how fast the burst goes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{interactive::Interactive, load::Latency};
use crate::{
    client::{CliResult, connect},
    proto::{
        GenerateClientCertificateRequest, certificate_authority_client::CertificateAuthorityClient,
    },
};

/// The CSR every burst request carries (OpenSSL-made; a CSR holds only the
/// public half of its key).
const RSA8192_CSR: &str = include_str!("data/rsa8192-csr.pem");
const CONNECTIONS: usize = 4;

#[derive(Debug, Clone, Serialize)]
pub struct BurstResult {
    pub csrs_per_burst: usize,
    pub bursts: usize,
    /// Mean wall time of one burst of `csrs_per_burst` requests.
    pub burst_s: f64,
    /// The interactive client (1 connection, sequential requests): alone.
    pub client_before: Latency,
    /// …while the bursts were in flight.
    pub client_during: Latency,
    pub client_errors: u64,
    pub burst_errors: u64,
}

pub async fn run(
    socket: &std::path::Path,
    keys: Arc<Vec<String>>,
    burst: usize,
    seconds: f64,
) -> CliResult<BurstResult> {
    let client = Interactive::start(socket, keys, "burst-client").await?;
    let window = Duration::from_secs_f64(seconds);
    let base_from = Instant::now() + Duration::from_millis(300);
    let base_to = base_from + window;
    let mut burst_clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        burst_clients.push(CertificateAuthorityClient::new(connect(socket).await?));
    }
    tokio::time::sleep_until(base_to.into()).await;

    let during_from = Instant::now();
    let mut bursts = 0usize;
    let mut burst_errors = 0u64;
    while bursts == 0 || during_from.elapsed() < window {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..burst {
            let mut c = burst_clients[i % CONNECTIONS].clone();
            set.spawn(async move {
                c.generate_client_certificate(GenerateClientCertificateRequest {
                    pem_csr: RSA8192_CSR.to_owned(),
                    ..Default::default()
                })
                .await
                .is_ok()
            });
        }
        while let Some(r) = set.join_next().await {
            if !matches!(r, Ok(true)) {
                burst_errors += 1;
            }
        }
        bursts += 1;
    }
    let during_to = Instant::now();
    let seen = client.finish().await;
    Ok(BurstResult {
        csrs_per_burst: burst,
        bursts,
        burst_s: during_to.duration_since(during_from).as_secs_f64() / bursts as f64,
        client_before: seen.latency(base_from, base_to),
        client_during: seen.latency(during_from, during_to),
        client_errors: seen.errors,
        burst_errors,
    })
}
