//! Retention end to end: a daemon with a short `state.retention` deletes the
//! records of certificates expired for longer than that and the audit
//! entries older than that, keeps live and recently expired records, and
//! `hsmca audit verify` still verifies the kept log from its checkpoint.
//! A retention shorter than the request_id retention is refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ca, KeyPair, run, run_ok};
use hsmca::{audit::AuditEntry, proto::ListClientCertificatesRequest, store::Record};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn record(id: &str, expired_ago: i64) -> Record {
    Record {
        id: id.into(),
        serial: format!(
            "5e{}",
            id.len() * 1000 + id.bytes().map(usize::from).sum::<usize>()
        ),
        owner_uid: 0,
        owner_gid: 0,
        owner_pid: 1,
        subject: format!("CN={id}"),
        dns_names: vec![],
        uri_sans: vec![],
        ip_addresses: vec![],
        profile: "client".into(),
        not_before: now() - expired_ago - 3600,
        expire_time: now() - expired_ago,
        create_time_us: (now() - expired_ago - 3600) * 1_000_000,
        request_id: String::new(),
        fingerprint: String::new(),
        description: String::new(),
        tags: Default::default(),
        revoked: None,
        pem: String::new(),
        reply: Vec::new(),
    }
}

async fn listed(ca: &Ca) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = ca
            .client()
            .await
            .list_client_certificates(ListClientCertificatesRequest {
                page_size: 100,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(
            page.client_certificates
                .into_iter()
                .map(|c| c.subject.trim_start_matches("CN=").to_owned()),
        );
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_short_retention_deletes_old_records_and_audit_entries_and_the_chain_verifies() {
    let mut ca = Ca::with_env("p256", &[("HSMCA_STATE__RETENTION", "1h")]);
    // Before the daemon ever ran: audit entries from three hours ago, and
    // records of certificates expired two hours, ten minutes ago.
    {
        // The daemon's own store, whichever engine the suite runs on.
        let env: std::collections::HashMap<String, String> = ca.env.iter().cloned().collect();
        let cfg = hsmca::config::Config::load_with_env(&ca.config(), &env).unwrap();
        let store = hsmca::store::open(&cfg.state).await.unwrap();
        for i in 0..5 {
            store
                .audit(AuditEntry {
                    time_us: (now() - 3 * 3600 + i) * 1_000_000,
                    operation: "GenerateClientCertificate".into(),
                    outcome: "issued".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        // And one recent entry: the old five are never the chain's head
        // (which is never cut), whether or not the daemon has audited its
        // first CRL when the pass at start-up runs.
        store
            .audit(AuditEntry {
                time_us: now() * 1_000_000,
                operation: "crl".into(),
                outcome: "signed".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        for (id, ago) in [("old-a", 7200), ("old-b", 7300), ("old-c", 90_000)] {
            store.insert(record(id, ago)).await.unwrap();
        }
        store.insert(record("recent", 600)).await.unwrap();
    }
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    ca.issue_cn(&key, "live").await;

    // The pass at start-up runs beside issuance; wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut names = listed(&ca).await;
    while names.iter().any(|n| n.starts_with("old-")) {
        assert!(
            Instant::now() < deadline,
            "old records stayed: {names:?}\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        names = listed(&ca).await;
    }
    names.sort();
    assert_eq!(names, ["live", "recent"]);
    assert!(ca.log().contains("retention: deleted"), "{}", ca.log());

    // The kept log verifies from its checkpoint (the five old entries went).
    let out = run_ok(
        ca.hsmca()
            .args(["audit", "verify", "--config"])
            .arg(ca.config()),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("audit log intact"), "{said}");
    assert!(said.contains("kept from record 6"), "{said}");
    ca.issue_cn(&key, "after").await;
    ca.stop();
    let out = run_ok(
        ca.hsmca()
            .args(["audit", "verify", "--config"])
            .arg(ca.config()),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept from record 6"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_retention_shorter_than_the_request_id_retention_is_refused() {
    let ca = Ca::new("p256");
    let out = run(ca
        .hsmca()
        .env("HSMCA_STATE__RETENTION", "2h")
        .env("HSMCA_STATE__REQUEST_ID_RETENTION", "3h")
        .args(["serve", "--config"])
        .arg(ca.config()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state.retention") && err.contains("state.request_id_retention"),
        "{err}"
    );
}
