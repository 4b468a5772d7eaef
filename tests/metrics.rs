//! The metrics endpoint on a real daemon: scraped before and after issuing,
//! refusing, and a token fault, its counters move by exactly what happened;
//! `hsmca status` prints them for a person.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Ca, KeyPair, run_ok};
use hsmca::{
    cli::status::scrape, metrics::summary::Scrape, proto::GenerateClientCertificateRequest,
};
use tonic::Code;

fn request(key: &str, cn: &str, profile: &str) -> GenerateClientCertificateRequest {
    GenerateClientCertificateRequest {
        public_key: key.to_owned(),
        common_name: cn.into(),
        profile: profile.into(),
        ..Default::default()
    }
}

fn counter(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.select(name, labels).map(|x| x.value).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_status_prints_them() {
    let mut ca = Ca::new("p256");
    let control = ca.path("faults");
    ca.env
        .push(("HSMCA_TEST_FAULTS".into(), control.display().to_string()));
    ca.start();
    let socket = ca.path("hsmca-metrics.sock");
    let before = Scrape::parse(&scrape(&socket).await.unwrap());
    assert_eq!(before.get("hsmca_token_ready"), Some(1.0));
    assert_eq!(before.get("hsmca_signer_sessions"), Some(2.0));
    assert!(before.get("hsmca_start_time_seconds").unwrap() > 1.7e9);

    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let mut client = ca.client().await;
    for i in 0..4 {
        client
            .generate_client_certificate(request(&key, &format!("c{i}"), ""))
            .await
            .unwrap();
    }
    client
        .generate_client_certificate(request(&key, "s", "server"))
        .await
        .unwrap();
    let mut bad = request(&key, "short", "client");
    bad.cert_duration = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    assert_eq!(
        client
            .generate_client_certificate(bad)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        client
            .generate_client_certificate(request(&key, "x", "no-such-profile"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // A token-level fault: one request fails, the token is rebuilt.
    std::fs::write(&control, "fault sign DEVICE_ERROR count=1\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = client
        .generate_client_certificate(request(&key, "fault", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let s = Scrape::parse(&scrape(&socket).await.unwrap());
        if s.get("hsmca_token_ready") == Some(1.0) && s.sum("hsmca_token_recoveries_total") >= 1.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the token did not recover:\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client
        .generate_client_certificate(request(&key, "after", ""))
        .await
        .unwrap();
    let after = {
        let s = Scrape::parse(&scrape(&socket).await.unwrap());
        assert_eq!(s.sum("hsmca_token_faults_total"), 1.0);
        assert_eq!(after.sum("hsmca_token_recoveries_total"), 1.0);
        s
    };

    let issued = "hsmca_certificates_issued_total";
    let refused = "hsmca_certificates_refused_total";
    let delta = |name: &str, labels: &[(&str, &str)]| {
        counter(&after, name, labels) - counter(&before, name, labels)
    };
    assert_eq!(delta(issued, &[("profile", "client")]), 5.0);
    assert_eq!(delta(issued, &[("profile", "server")]), 1.0);
    assert_eq!(
        delta(
            refused,
            &[("code", "INVALID_ARGUMENT"), ("profile", "client")]
        ),
        1.0
    );
    // Client input never becomes a label value.
    assert_eq!(
        delta(
            refused,
            &[("code", "INVALID_ARGUMENT"), ("profile", "other")]
        ),
        1.0
    );
    assert_eq!(delta(refused, &[("code", "UNAVAILABLE")]), 1.0);
    // Six certificates signed (and the CRL, and the start-up self-test).
    let signs = delta("hsmca_sign_duration_seconds_count", &[]);
    assert!(signs >= 6.0, "{signs}");
    let p99 = after.quantile("hsmca_sign_duration_seconds", 0.99).unwrap();
    assert!(p99 > 0.0 && p99 < 5.0, "{p99}");
    assert!(delta("hsmca_store_commit_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(delta("hsmca_store_committed_records_total", &[]), 6.0);
    assert!(after.get("hsmca_connections").unwrap() >= 1.0);
    assert_eq!(after.get("hsmca_signer_queue_depth"), Some(0.0));
    assert_eq!(after.get("hsmca_signer_sessions_busy"), Some(0.0));

    // hsmca status, from the config and from the socket.
    for args in [
        vec![
            "status".to_string(),
            "--config".into(),
            ca.config().display().to_string(),
        ],
        vec![
            "status".into(),
            "--metrics-socket".into(),
            socket.display().to_string(),
        ],
    ] {
        let out = run_ok(ca.hsmca().args(&args));
        let text = String::from_utf8(out.stdout).unwrap();
        eprintln!("{text}");
        for want in [
            "token           ready; 1 faults, 1 recoveries",
            "issued          6  (client 5, server 1)",
            "refused         3  (INVALID_ARGUMENT 2, UNAVAILABLE 1)",
            "0 queued (of 4096), 0 of 2 sessions busy",
            "sign latency    p50 ",
            "store commit    p99 ",
            "uptime          ",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
    let raw = run_ok(
        ca.hsmca()
            .args(["status", "--raw", "--metrics-socket"])
            .arg(&socket),
    );
    assert!(
        String::from_utf8_lossy(&raw.stdout)
            .contains("# TYPE hsmca_sign_duration_seconds histogram")
    );
    // Not a daemon's metrics socket: a clear error.
    let out = common::run(
        ca.hsmca()
            .args(["status", "--metrics-socket"])
            .arg(ca.path("nope.sock")),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to the metrics socket"));
}
