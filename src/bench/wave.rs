//! A renewal wave: N certificate requests (different names, one key) filed
//! at once, first-issued by the background worker, and then all due for
//! renewal at the same second, while one interactive client keeps asking
//! for certificates and its latency is measured. The daemon runs with
//! `requests.renew_after` small enough (see [`RENEW_AFTER`]) that the
//! renewals of 1-hour certificates fall due seconds after their issue.

use std::{
    str::FromStr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use der::{EncodePem, pem::LineEnding};
use serde::Serialize;
use x509_cert::builder::Builder;

use super::{daemon::Testbed, interactive::Interactive, load::Latency};
use crate::{
    client::{CliResult, connect},
    proto::{
        CertificateRequestSpec, CreateCertificateRequestRequest,
        certificate_requests_client::CertificateRequestsClient,
    },
};

/// `requests.renew_after` for the bench daemon: a 1-hour certificate is due
/// for renewal 3.6 s after its issue.
pub const RENEW_AFTER: &str = "0.001";

#[derive(Debug, Clone, Serialize)]
pub struct WaveResult {
    pub requests: usize,
    /// From the first Create until every request had its first certificate.
    pub first_issue_s: f64,
    /// Renewal certificates made for the wave before it ended (the earliest
    /// requests may be renewed twice while the last are still waiting).
    pub renewed: usize,
    /// From the first renewal seen until the last.
    pub renewal_s: f64,
    /// The interactive client (1 connection, sequential requests): before the wave.
    pub client_before: Latency,
    pub client_before_per_s: f64,
    /// …while the first issues were being made.
    pub client_during_first_issue: Latency,
    /// …while the renewals were being made.
    pub client_during_renewals: Latency,
    pub client_errors: u64,
}

fn p256_csr(cn: &str, key: &p256::ecdsa::SigningKey) -> CliResult<String> {
    let subject = x509_cert::name::Name::from_str(&format!("CN={cn}"))?;
    let builder = x509_cert::request::RequestBuilder::new(subject)?;
    let csr = builder.build::<_, p256::ecdsa::DerSignature>(key)?;
    Ok(csr.to_pem(LineEnding::LF)?)
}

/// Counts the certificates the worker has made for certificate requests,
/// straight from the store (read-only; WAL lets it read beside the writer).
async fn request_certs(db: &std::path::Path) -> CliResult<i64> {
    count_tagged(db, crate::requests::REQUEST_TAG).await
}

/// Counts the certificates in the store that carry the tag `tag`.
pub(super) async fn count_tagged(db: &std::path::Path, tag: &'static str) -> CliResult<i64> {
    let db = db.to_owned();
    let n = tokio::task::spawn_blocking(move || {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.query_row(
            "SELECT COUNT(*) FROM certificate_tags WHERE tag_key = ?1",
            [tag],
            |r| r.get::<_, i64>(0),
        )
    })
    .await??;
    Ok(n)
}

pub async fn run(
    bed: &Testbed,
    keys: Arc<Vec<String>>,
    n: usize,
    baseline_seconds: f64,
) -> CliResult<WaveResult> {
    let socket = bed.socket();
    // The interactive client runs from the baseline to the end.
    let client = Interactive::start(&socket, keys, "wave-client").await?;
    let base_from = Instant::now() + Duration::from_millis(300);
    let base_to = base_from + Duration::from_secs_f64(baseline_seconds);
    // Meanwhile: the CSRs (one key, a name each).
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let key = p256::ecdsa::SigningKey::from_slice(&secret)?;
    let csrs: Vec<String> = (0..n)
        .map(|i| p256_csr(&format!("wave-{i}.bench"), &key))
        .collect::<CliResult<_>>()?;
    let db = bed.path("state/hsmca.db");
    tokio::time::sleep_until(base_to.into()).await;

    // The wave: every request filed at once (16 connections).
    let t_create = Instant::now();
    let csrs = Arc::new(csrs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (csrs, next) = (csrs.clone(), next.clone());
        let mut rc = CertificateRequestsClient::new(connect(&socket).await?);
        creators.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(csr) = csrs.get(i) else {
                    return Ok::<(), String>(());
                };
                rc.create_certificate_request(CreateCertificateRequestRequest {
                    spec: Some(CertificateRequestSpec {
                        pem_csr: csr.clone(),
                        cert_duration: Some(prost_types::Duration {
                            seconds: 3600,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| {
                    format!("CreateCertificateRequest: {:?}: {}", s.code(), s.message())
                })?;
            }
        });
    }
    while let Some(r) = creators.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let deadline = t_create + Duration::from_secs(120);
    let n64 = n as i64;
    while request_certs(&db).await? < n64 {
        if Instant::now() > deadline {
            return Err("the wave's first issues did not finish within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t_issued = Instant::now();
    // Renewals: due 3.6 s after each first issue.
    let mut t_first_renewal = None;
    let mut count = n64;
    while count < 2 * n64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        count = request_certs(&db).await?;
        if count > n64 && t_first_renewal.is_none() {
            t_first_renewal = Some(Instant::now());
        }
    }
    let t_renewed = Instant::now();
    let seen = client.finish().await;

    let before_count = seen.count(base_from, base_to);
    let renewal_from = t_first_renewal.unwrap_or(t_renewed);
    Ok(WaveResult {
        requests: n,
        first_issue_s: t_issued.duration_since(t_create).as_secs_f64(),
        renewed: usize::try_from(count - n64).unwrap_or(0),
        renewal_s: t_renewed.duration_since(renewal_from).as_secs_f64(),
        client_before: seen.latency(base_from, base_to),
        client_before_per_s: before_count as f64 / baseline_seconds,
        client_during_first_issue: seen.latency(t_create, t_issued),
        client_during_renewals: seen.latency(renewal_from, t_renewed),
        client_errors: seen.errors,
    })
}
