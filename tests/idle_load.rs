//! Acceptance for the resource bounds (issue 7): with 1,000 idle HTTP/2
//! connections held open, a normal client keeps its usual issue rate; a
//! message announcing 64 MiB is refused with INVALID_ARGUMENT and the
//! daemon's resident memory does not jump.
//!
//! The rate is measured in alternating rounds (ABBA ×4: A without, B with
//! the idle connections), each a run of sequential issues from one client.
//! Each adjacent A/B pair gives one ratio, and the median of the eight is
//! printed (runs here: 0.87–1.00). A drift in the machine's load falls
//! on both halves of a pair alike, but single rounds still move by ±30 %
//! on a shared 2-core machine, so the test fails only below 0.5: what it
//! guards against is a pathology such as per-request work that grows with
//! the number of open connections, not a few percent. This file holds one
//! test so that nothing else runs while it measures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Ca, KeyPair};
use hsmca::proto::{
    GenerateClientCertificateRequest, certificate_authority_client::CertificateAuthorityClient,
};
use tokio::net::UnixStream;
use tonic::transport::Channel;

const IDLE: usize = 1000;
const PER_ROUND: usize = 200;

struct Idle {
    _send: h2::client::SendRequest<Bytes>,
    conn: tokio::task::JoinHandle<()>,
}

async fn open_idle(ca: &Ca, n: usize) -> Vec<Idle> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let io = UnixStream::connect(ca.socket()).await.unwrap();
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        let send = send.ready().await.unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        out.push(Idle { _send: send, conn });
    }
    out
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Seconds for `PER_ROUND` sequential issues.
async fn round(client: &mut CertificateAuthorityClient<Channel>, key: &str, tag: &str) -> f64 {
    let start = Instant::now();
    for i in 0..PER_ROUND {
        client
            .generate_client_certificate(GenerateClientCertificateRequest {
                public_key: key.to_owned(),
                common_name: format!("{tag}-{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_slow_issuance_and_64_mib_is_refused() {
    let ca = Ca::started("p256");
    let pid = ca.pid();
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let mut client = ca.client().await;
    round(&mut client, &key, "warm-up").await;

    // A gRPC message announcing 64 MiB, of which 8 MiB are actually sent.
    let rss_before = status_kib(pid, "VmRSS:");
    let hwm_before = status_kib(pid, "VmHWM:");
    let io = UnixStream::connect(ca.socket()).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/hsmca.v1.CertificateAuthority/GenerateClientCertificate")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(64u32 << 20).to_be_bytes());
    body.send_data(Bytes::from(frame), false).unwrap();
    let chunk = Bytes::from(vec![0x41u8; 1 << 20]);
    for _ in 0..8 {
        if body.send_data(chunk.clone(), false).is_err() {
            break;
        }
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("no answer to a 64 MiB message")
        .unwrap();
    let (parts, mut resp_body) = resp.into_parts();
    let mut status = parts.headers.get("grpc-status").cloned();
    let mut message = parts.headers.get("grpc-message").cloned();
    if status.is_none() {
        while let Some(d) = resp_body.data().await {
            let _ = d;
        }
        let trailers = resp_body.trailers().await.unwrap().unwrap_or_default();
        status = trailers.get("grpc-status").cloned();
        message = trailers.get("grpc-message").cloned();
    }
    assert_eq!(
        status.as_ref().map(|v| v.to_str().unwrap()),
        Some("3"),
        "{parts:?} {message:?}"
    );
    let message = message.map(|m| m.to_str().unwrap().replace("%20", " "));
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("65536-byte limit")),
        "{message:?}"
    );
    drop(body);

    // The same through an ordinary client: a 64 MiB public_key.
    let err = ca
        .client()
        .await
        .generate_client_certificate(GenerateClientCertificateRequest {
            public_key: "A".repeat(64 << 20),
            common_name: "huge".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = status_kib(pid, "VmRSS:");
    let hwm_after = status_kib(pid, "VmHWM:");
    eprintln!(
        "daemon RSS before the 64 MiB messages: {rss_before} KiB (peak {hwm_before} KiB); \
         after: {rss_after} KiB (peak {hwm_after} KiB)"
    );
    assert!(
        hwm_after < hwm_before.max(rss_before) + 16 * 1024,
        "the daemon's peak RSS jumped from {hwm_before} KiB to {hwm_after} KiB"
    );
    assert!(rss_after < rss_before + 16 * 1024);

    let base_fds = fds(pid);
    let mut without = Vec::new();
    let mut with = Vec::new();
    for (n, loaded) in [false, true, true, false].repeat(4).into_iter().enumerate() {
        if loaded {
            let idle = open_idle(&ca, IDLE).await;
            // Held open by the daemon: one descriptor each.
            let deadline = Instant::now() + Duration::from_secs(20);
            while fds(pid) < base_fds + IDLE {
                assert!(
                    Instant::now() < deadline,
                    "the daemon holds {} fds",
                    fds(pid)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Let the handshakes' SETTINGS exchanges finish: the rounds
            // measure idle connections, not 1,000 arriving ones.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let secs = round(&mut client, &key, &format!("with-{n}")).await;
            assert!(fds(pid) >= base_fds + IDLE, "idle connections were dropped");
            assert!(idle.iter().all(|c| !c.conn.is_finished()));
            with.push(PER_ROUND as f64 / secs);
            for c in idle {
                c.conn.abort();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while fds(pid) > base_fds + 8 {
                assert!(
                    Instant::now() < deadline,
                    "idle connections were not released"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The same pause before a round without them.
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            let secs = round(&mut client, &key, &format!("without-{n}")).await;
            without.push(PER_ROUND as f64 / secs);
        }
    }
    let total = |v: &[f64]| v.len() as f64 / v.iter().map(|r| 1.0 / r).sum::<f64>();
    let (rate_without, rate_with) = (total(&without), total(&with));
    // Rounds 2k and 2k+1 are adjacent in time (A B, B A, A B, …): the
    // k-th A/B pair is without[k] and with[k].
    let mut pairs: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w / o).collect();
    let ratio = median(&mut pairs);
    eprintln!(
        "issue rate without {IDLE} idle connections: {rate_without:.1}/s (rounds {without:.1?}); \
         with: {rate_with:.1}/s (rounds {with:.1?}); overall ratio {:.3}; \
         pair ratios {pairs:.3?}, median {ratio:.3}",
        rate_with / rate_without
    );
    // The figure itself is measured and printed (quoted in the issue's
    // closing note); adjacent rounds on a shared 2-core machine differ by
    // up to ±30 %, so the assertion only catches a pathology such as
    // per-request work that grows with the number of open connections.
    assert!(
        ratio >= 0.5,
        "with {IDLE} idle connections the rate fell to {:.0} % of the rate without (median of A/B pairs)",
        ratio * 100.0
    );

    ca.assert_serves().await;
}
