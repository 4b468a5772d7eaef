//! The CertificateRequests service end to end, over the daemon's socket, on
//! a real SoftHSM2 token: issue, renewal, restart, key rotation, re-issue,
//! duplicates, rate limits, watch streams and the sidecar mode of the CLI.
//! Certificates are checked with openssl, never only with hsmca's own code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashSet,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{Ca, KeyPair, run, run_ok};
use hsmca::proto::{
    CertificateRequest, CertificateRequestSpec, CreateCertificateRequestRequest,
    DeleteCertificateRequestRequest, GetCaCertificatesRequest, GetCertificateRequestRequest,
    GetCrlRequest, ListCertificateRequestsRequest, ListClientCertificatesRequest,
    RotateKeysRequest, UpdateCertificateRequestRequest, WatchCertificateRequestRequest,
    certificate_request_status::State, certificate_requests_client::CertificateRequestsClient,
    client_certificate,
};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming, transport::Channel};

async fn requests(ca: &Ca) -> CertificateRequestsClient<Channel> {
    CertificateRequestsClient::new(hsmca::cli::client::connect(&ca.socket()).await.unwrap())
}

fn spec(csr: &str, secs: i64) -> CertificateRequestSpec {
    CertificateRequestSpec {
        pem_csr: csr.to_owned(),
        cert_duration: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

async fn create(ca: &Ca, spec: CertificateRequestSpec) -> CertificateRequest {
    requests(ca)
        .await
        .create_certificate_request(CreateCertificateRequestRequest {
            spec: Some(spec),
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", ca.log()))
        .into_inner()
}

async fn watch(ca: &Ca, id: &str) -> Streaming<CertificateRequest> {
    requests(ca)
        .await
        .watch_certificate_request(WatchCertificateRequestRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Reads states until one satisfies `pred`.
async fn wait_for(
    ca: &Ca,
    stream: &mut Streaming<CertificateRequest>,
    what: &str,
    within: Duration,
    pred: impl Fn(&CertificateRequest) -> bool,
) -> CertificateRequest {
    let found = tokio::time::timeout(within, async {
        while let Some(next) = stream.next().await {
            let r = next.unwrap();
            if pred(&r) {
                return r;
            }
        }
        panic!("the watch ended while waiting for {what}");
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within {within:?}\n{}", ca.log()))
}

fn state(r: &CertificateRequest) -> State {
    r.status.as_ref().unwrap().state()
}

fn serials(r: &CertificateRequest) -> Vec<String> {
    r.status
        .as_ref()
        .unwrap()
        .certificates
        .iter()
        .map(|c| c.serial_number.clone())
        .collect()
}

fn last_serial(r: &CertificateRequest) -> String {
    serials(r).last().cloned().unwrap_or_default()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The request's newest certificate passes openssl against the CA's chain.
async fn check_latest(ca: &Ca, r: &CertificateRequest) {
    let status = r.status.as_ref().unwrap();
    let latest = status.certificates.last().unwrap();
    assert_eq!(status.signed_certificate, latest.pem_certificate);
    let chain = ca
        .client()
        .await
        .get_ca_certificates(GetCaCertificatesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.signing_root_ca, chain.ca_cert);
    ca.check_with_openssl(
        &latest.pem_certificate,
        &chain.pem_certificate_chain,
        &chain.ca_cert,
    );
}

/// openssl's view of the certificate's public key, as PEM.
fn cert_pubkey(dir: &Path, pem: &str) -> String {
    let f = dir.join(format!("pk-{}.pem", now()));
    std::fs::write(&f, pem).unwrap();
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&f),
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn issue_renew_restart_rotate_and_reissue() {
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_PROFILES__CLIENT__MIN_DURATION", "10s"),
            ("HSMCA_REQUESTS__RETRY_AFTER", "1s"),
        ],
    );
    ca.start();
    let key1 = KeyPair::new(ca.dir.path(), "p256");
    let csr1 = key1.csr(
        "/CN=svc",
        Some("DNS:svc.example,URI:https://svc.example/workload"),
    );
    let created = create(&ca, spec(&csr1, 30)).await;
    assert_eq!(created.generation, 1);
    assert_eq!(state(&created), State::Pending);
    assert_eq!(created.status.as_ref().unwrap().observed_generation, 0);
    assert_eq!(created.spec.as_ref().unwrap().auto_renew, Some(true));
    assert_eq!(created.spec.as_ref().unwrap().profile, "client");
    let id = created.id.clone();

    // Issue.
    let mut w = watch(&ca, &id).await;
    let first = wait_for(
        &ca,
        &mut w,
        "the first certificate",
        Duration::from_secs(20),
        |r| state(r) == State::Finished,
    )
    .await;
    assert_eq!(first.status.as_ref().unwrap().observed_generation, 1);
    assert_eq!(serials(&first).len(), 1);
    check_latest(&ca, &first).await;
    let c1 = first.status.as_ref().unwrap().certificates[0].clone();
    // The certificate is an ordinary record too, tagged with its request.
    let recs = ca
        .client()
        .await
        .list_client_certificates(ListClientCertificatesRequest {
            filter: format!("tag:hsmca:certificate-request={id}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .client_certificates;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].serial_number, c1.serial_number);

    // First renewal, once 2/3 of the lifetime has passed.
    let renewed = wait_for(
        &ca,
        &mut w,
        "the first renewal",
        Duration::from_secs(40),
        |r| serials(r).len() == 2,
    )
    .await;
    let c2 = renewed.status.as_ref().unwrap().certificates[1].clone();
    assert_ne!(c2.serial_number, c1.serial_number);
    assert_eq!(serials(&renewed)[0], c1.serial_number);
    let issued1 = c1.not_before.unwrap().seconds + 60;
    let issued2 = c2.not_before.unwrap().seconds + 60;
    assert!(
        issued2 >= issued1 + 19,
        "renewed after {}s of a 30s lifetime",
        issued2 - issued1
    );
    check_latest(&ca, &renewed).await;
    assert_eq!(renewed.generation, 1);

    // Stop, and stay down past the next renewal point.
    drop(w);
    assert!(ca.stop().success());
    let renew_at = issued2 + 20;
    while now() <= renew_at + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ca.start();
    let restarted_at = now();
    let after = requests(&ca)
        .await
        .get_certificate_request(GetCertificateRequestRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.generation, renewed.generation);
    assert_eq!(after.spec, renewed.spec);
    assert!(serials(&after).contains(&c2.serial_number));
    // The renewal missed while down happens at start-up.
    let mut w = watch(&ca, &id).await;
    let third = wait_for(
        &ca,
        &mut w,
        "the renewal missed while stopped",
        Duration::from_secs(20),
        |r| {
            !serials(r).contains(&c1.serial_number)
                && serials(r).len() == 2
                && last_serial(r) != c2.serial_number
        },
    )
    .await;
    let c3 = third.status.as_ref().unwrap().certificates[1].clone();
    assert_eq!(
        serials(&third)[0],
        c2.serial_number,
        "c1 expired and left the status"
    );
    assert!(c3.not_before.unwrap().seconds + 60 >= restarted_at - 1);
    check_latest(&ca, &third).await;

    // Rotate keys: watchers see it; the spec changed, nothing was issued.
    let mut client = requests(&ca).await;
    let rotated = client
        .rotate_keys(RotateKeysRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.spec.as_ref().unwrap().rotate_keys);
    assert_eq!(rotated.generation, third.generation + 1);
    assert_eq!(
        rotated.status.as_ref().unwrap().observed_generation,
        rotated.generation
    );
    assert_eq!(serials(&rotated), serials(&third));
    let seen = wait_for(&ca, &mut w, "rotate_keys", Duration::from_secs(5), |r| {
        r.spec.as_ref().unwrap().rotate_keys
    })
    .await;
    assert_eq!(seen.generation, rotated.generation);
    // A CSR for the same key does not answer a rotation.
    let e = client
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: id.clone(),
            spec: Some(CertificateRequestSpec {
                pem_csr: key1.csr(
                    "/CN=svc",
                    Some("DNS:svc.example,URI:https://svc.example/workload"),
                ),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("new key"), "{}", e.message());

    // Update with a new key: re-issue, earlier certificates revoked.
    let key2 = KeyPair::new(ca.dir.path(), "p256");
    let csr2 = key2.csr(
        "/CN=svc",
        Some("DNS:svc.example,URI:https://svc.example/workload"),
    );
    let updated = client
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: id.clone(),
            spec: Some(CertificateRequestSpec {
                pem_csr: csr2,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.generation, rotated.generation + 1);
    assert!(!updated.spec.as_ref().unwrap().rotate_keys);
    assert_eq!(state(&updated), State::Pending);
    let reissued = wait_for(&ca, &mut w, "the re-issue", Duration::from_secs(20), |r| {
        state(r) == State::Finished
            && r.status.as_ref().unwrap().observed_generation == updated.generation
    })
    .await;
    assert_eq!(
        serials(&reissued).len(),
        1,
        "earlier certificates left the status"
    );
    let c4 = reissued.status.as_ref().unwrap().certificates[0].clone();
    assert!(
        ![&c1, &c2, &c3]
            .iter()
            .any(|c| c.serial_number == c4.serial_number)
    );
    check_latest(&ca, &reissued).await;
    assert_eq!(
        cert_pubkey(ca.dir.path(), &c4.pem_certificate),
        key2.public_pem()
    );

    // The revoked ones are on the CRL (c1 had expired: it needs no entry),
    // and openssl refuses them with it; the new one passes.
    let crl = ca
        .client()
        .await
        .get_crl(GetCrlRequest {})
        .await
        .unwrap()
        .into_inner();
    let crl_file = ca.path("requests.crl");
    std::fs::write(&crl_file, &crl.pem_crl).unwrap();
    let text = run_ok(
        Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&crl_file),
    );
    let text = String::from_utf8_lossy(&text.stdout).to_uppercase();
    for c in [&c2, &c3] {
        assert!(
            text.contains(&c.serial_number.to_uppercase()),
            "{} not on the CRL:\n{text}",
            c.serial_number
        );
    }
    assert!(text.contains("SUPERSEDED"), "{text}");
    let root = ca.path("requests-root.pem");
    let chain = ca
        .client()
        .await
        .get_ca_certificates(GetCaCertificatesRequest {})
        .await
        .unwrap()
        .into_inner();
    std::fs::write(&root, &chain.ca_cert).unwrap();
    let crl_check = |pem: &str| {
        let f = ca.path(&format!("crl-check-{}.pem", rand_name()));
        std::fs::write(&f, pem).unwrap();
        run(Command::new("openssl")
            .args(["verify", "-crl_check", "-CRLfile"])
            .arg(&crl_file)
            .arg("-CAfile")
            .arg(&root)
            .arg(&f))
    };
    let old = crl_check(&c3.pem_certificate);
    assert!(!old.status.success());
    assert!(
        String::from_utf8_lossy(&old.stdout).contains("revoked")
            || String::from_utf8_lossy(&old.stderr).contains("revoked")
    );
    assert!(crl_check(&c4.pem_certificate).status.success());
    // The records say so too.
    let recs = ca
        .client()
        .await
        .list_client_certificates(ListClientCertificatesRequest {
            filter: format!("tag:hsmca:certificate-request={id} state=REVOKED"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .client_certificates;
    let revoked: HashSet<_> = recs.iter().map(|r| r.serial_number.clone()).collect();
    assert!(revoked.contains(&c2.serial_number) && revoked.contains(&c3.serial_number));
    assert!(
        recs.iter()
            .all(|r| r.state == client_certificate::State::Revoked as i32)
    );
}

fn rand_name() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .to_string()
}

#[tokio::test]
async fn duplicates_bad_input_and_failure() {
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_PROFILES__CLIENT__MIN_DURATION", "10s"),
            ("HSMCA_SERVER__SOCKET_MODE", "0666"),
            ("HSMCA_REQUESTS__RETRY_AFTER", "1s"),
        ],
    );
    ca.make_root_admin();
    ca.start();
    let mut client = requests(&ca).await;
    let key = KeyPair::new(ca.dir.path(), "p256");
    let names = "DNS:dup.example,DNS:alt.dup.example";
    let csr = key.csr("/CN=dup", Some(names));
    let first = create(&ca, spec(&csr, 3600)).await;

    // The same CSR, and a new CSR for the same key and names: duplicates.
    for (what, again) in [
        ("the same CSR", csr.clone()),
        (
            "a re-signed CSR",
            key.csr("/CN=dup", Some("DNS:alt.dup.example,DNS:dup.example")),
        ),
    ] {
        let e = client
            .create_certificate_request(CreateCertificateRequestRequest {
                spec: Some(spec(&again, 3600)),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{what}: {e:?}");
        for n in ["CN:dup", "DNS:dup.example", "DNS:alt.dup.example"] {
            assert!(e.message().contains(n), "{what}: {}", e.message());
        }
        assert!(e.message().contains(&first.id), "{}", e.message());
    }
    // The same names with another key are another request.
    let other = KeyPair::new(ca.dir.path(), "p256");
    let second = create(&ca, spec(&other.csr("/CN=dup", Some(names)), 3600)).await;
    assert_ne!(second.id, first.id);
    // An update cannot make a duplicate either.
    let e = client
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: second.id.clone(),
            spec: Some(CertificateRequestSpec {
                pem_csr: csr.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // request_id makes a retried Create return the same request.
    let rid = "6f1c1c4e-5b1d-4d8e-9f57-3a3c2b8f0a11".to_string();
    let k3 = KeyPair::new(ca.dir.path(), "p256");
    let body = CreateCertificateRequestRequest {
        spec: Some(spec(&k3.csr("/CN=retry", None), 3600)),
        request_id: rid.clone(),
    };
    let a = client
        .create_certificate_request(body.clone())
        .await
        .unwrap()
        .into_inner();
    let b = client
        .create_certificate_request(body.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.id, b.id);
    let mut changed = body.clone();
    changed.spec.as_mut().unwrap().description = "other".into();
    let e = client
        .create_certificate_request(changed)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("request_id"), "{}", e.message());

    // Bad input: each refused with INVALID_ARGUMENT and a reason.
    let mut tampered = key.csr("/CN=tampered", Some("DNS:t.example"));
    let body_start = tampered.find('\n').unwrap() + 1;
    let b64: String = tampered[body_start..].chars().take(60).collect();
    let flipped = if b64.as_bytes()[50] == b'A' { 'B' } else { 'A' };
    let mut bytes = tampered.clone().into_bytes();
    bytes[body_start + 50] = flipped as u8;
    tampered = String::from_utf8(bytes).unwrap();
    let no_names = KeyPair::new(ca.dir.path(), "p256").csr("/O=nobody", None);
    let mut rotating = spec(
        &KeyPair::new(ca.dir.path(), "p256").csr("/CN=r", None),
        3600,
    );
    rotating.rotate_keys = true;
    let mut bad_label = spec(
        &KeyPair::new(ca.dir.path(), "p256").csr("/CN=l", None),
        3600,
    );
    bad_label.labels.insert("hsmca:mine".into(), "x".into());
    let cases: Vec<(&str, Option<CertificateRequestSpec>, &str)> = vec![
        ("no spec", None, "spec"),
        ("no CSR", Some(CertificateRequestSpec::default()), "pem_csr"),
        (
            "a CSR that does not verify",
            Some(spec(&tampered, 3600)),
            "pem_csr",
        ),
        ("a CSR without names", Some(spec(&no_names, 3600)), "name"),
        ("rotate_keys at creation", Some(rotating), "RotateKeys"),
        ("a reserved label", Some(bad_label), "reserved"),
        (
            "a lifetime over the bound",
            Some(spec(
                &KeyPair::new(ca.dir.path(), "p256").csr("/CN=long", None),
                90_000,
            )),
            "bounds",
        ),
        (
            "a public key instead of a CSR",
            Some(spec(&key.public_pem(), 3600)),
            "pem_csr",
        ),
    ];
    for (what, s, needle) in cases {
        let e = client
            .create_certificate_request(CreateCertificateRequestRequest {
                spec: s,
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(needle), "{what}: {}", e.message());
    }

    // Unknown ids.
    let unknown = "0b6f3c2e-1c1b-4f6e-9a53-0c4d2f8a9b10".to_string();
    assert_eq!(
        client
            .get_certificate_request(GetCertificateRequestRequest {
                id: unknown.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .rotate_keys(RotateKeysRequest {
                id: unknown.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .watch_certificate_request(WatchCertificateRequestRequest {
                id: unknown.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .delete_certificate_request(DeleteCertificateRequestRequest {
                id: unknown.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Another user sees none of it, and cannot change it.
    let as_nobody = |args: &[&str]| {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::HSMCA)
            .arg("request")
            .args(args)
            .arg("--socket")
            .arg(ca.socket()))
    };
    for (args, code) in [
        (vec!["get", first.id.as_str()], "NOT_FOUND"),
        (vec!["rotate-keys", first.id.as_str()], "NOT_FOUND"),
        (
            vec!["update", first.id.as_str(), "--description", "mine now"],
            "NOT_FOUND",
        ),
        // Deleting is for administrators only.
        (vec!["delete", first.id.as_str()], "PERMISSION_DENIED"),
    ] {
        let out = as_nobody(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(code), "{args:?}: {err}");
    }
    let out = as_nobody(&["list"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&first.id));

    // Delete: an open watch ends with NOT_FOUND; everything after is NOT_FOUND.
    let mut w = watch(&ca, &first.id).await;
    let finished = wait_for(&ca, &mut w, "FINISHED", Duration::from_secs(20), |r| {
        state(r) == State::Finished
    })
    .await;
    client
        .delete_certificate_request(DeleteCertificateRequestRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert_eq!(end.unwrap().unwrap_err().code(), Code::NotFound);
    let e = client
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: first.id.clone(),
            spec: Some(CertificateRequestSpec {
                description: "x".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        client
            .watch_certificate_request(WatchCertificateRequestRequest {
                id: first.id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Its certificate is revoked; its names are free again.
    let recs = ca
        .client()
        .await
        .list_client_certificates(ListClientCertificatesRequest {
            filter: format!("tag:hsmca:certificate-request={} state=REVOKED", first.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .client_certificates;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].serial_number, last_serial(&finished));
    create(&ca, spec(&csr, 3600)).await;

    // A request the daemon can no longer issue for FAILS with a reason, and
    // RotateKeys on it is FAILED_PRECONDITION; fixing the spec retries.
    let k4 = KeyPair::new(ca.dir.path(), "p256");
    let short = create(&ca, spec(&k4.csr("/CN=short", None), 12)).await;
    let mut w = watch(&ca, &short.id).await;
    wait_for(&ca, &mut w, "FINISHED", Duration::from_secs(20), |r| {
        state(r) == State::Finished
    })
    .await;
    drop(w);
    assert!(ca.stop().success());
    ca.env
        .push(("HSMCA_PROFILES__CLIENT__MIN_DURATION".into(), "1m".into()));
    ca.start();
    let mut w = watch(&ca, &short.id).await;
    let failed = wait_for(&ca, &mut w, "FAILED", Duration::from_secs(30), |r| {
        state(r) == State::Failed
    })
    .await;
    let error = &failed.status.as_ref().unwrap().error;
    assert!(
        error.contains("cert_duration") && error.contains("update the request"),
        "{error}"
    );
    let mut client = requests(&ca).await;
    let e = client
        .rotate_keys(RotateKeysRequest {
            id: short.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    client
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: short.id.clone(),
            spec: Some(spec("", 120)),
        })
        .await
        .unwrap();
    let fixed = wait_for(
        &ca,
        &mut w,
        "FINISHED after the fix",
        Duration::from_secs(20),
        |r| state(r) == State::Finished,
    )
    .await;
    assert!(fixed.status.as_ref().unwrap().error.is_empty());
    check_latest(&ca, &fixed).await;
    ca.assert_serves().await;
}

#[tokio::test]
async fn renewals_are_rate_limited_per_set_of_names() {
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_PROFILES__CLIENT__MIN_DURATION", "10s"),
            ("HSMCA_REQUESTS__RENEW_AFTER", "0.5"),
            ("HSMCA_REQUESTS__RENEWAL_LIMIT", "1"),
        ],
    );
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let r = create(
        &ca,
        spec(&key.csr("/CN=limited", Some("DNS:limited.example")), 10),
    )
    .await;
    let mut w = watch(&ca, &r.id).await;
    let renewed = wait_for(&ca, &mut w, "one renewal", Duration::from_secs(30), |r| {
        serials(r).len() == 2
    })
    .await;
    let deferred = wait_for(
        &ca,
        &mut w,
        "a deferred renewal",
        Duration::from_secs(30),
        |r| !r.status.as_ref().unwrap().error.is_empty(),
    )
    .await;
    let error = &deferred.status.as_ref().unwrap().error;
    assert!(
        error.contains("renewal deferred")
            && error.contains("DNS:limited.example")
            && error.contains("next attempt at"),
        "{error}"
    );
    assert_eq!(state(&deferred), State::Finished);
    assert_eq!(
        serials(&deferred),
        serials(&renewed),
        "nothing was issued over the limit"
    );
    ca.assert_serves().await;
}

/// RSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_thousand_watchers_and_ten_thousand_dropped_streams() {
    let mut ca = Ca::new("p256");
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let mut s = spec(&key.csr("/CN=watched", None), 3600);
    s.auto_renew = Some(false);
    let r = create(&ca, s).await;
    let mut w = watch(&ca, &r.id).await;
    wait_for(&ca, &mut w, "FINISHED", Duration::from_secs(20), |r| {
        state(r) == State::Finished
    })
    .await;

    // 1,000 watchers over 10 connections, as 1,000 sidecars would hold them.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(requests(&ca).await);
    }
    let mut watchers = Vec::new();
    for i in 0..1000 {
        let mut c = channels[i % 10].clone();
        watchers.push(
            c.watch_certificate_request(WatchCertificateRequestRequest { id: r.id.clone() })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    for w in &mut watchers {
        let first = w.next().await.unwrap().unwrap();
        assert_eq!(first.generation, 1);
    }
    let update = |d: &str| UpdateCertificateRequestRequest {
        id: r.id.clone(),
        spec: Some(CertificateRequestSpec {
            description: d.into(),
            ..Default::default()
        }),
    };
    let mut client = requests(&ca).await;
    client
        .update_certificate_request(update("seen by all"))
        .await
        .unwrap();
    for w in &mut watchers {
        let next = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.spec.as_ref().unwrap().description, "seen by all");
        assert_eq!(next.generation, 2);
    }

    // 10,000 streams opened and dropped without reading.
    let rss_before = rss_kib(ca.pid());
    let mut tasks = Vec::new();
    for c in &channels {
        let (mut c, id) = (c.clone(), r.id.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut open = Vec::new();
                for _ in 0..100 {
                    open.push(
                        c.watch_certificate_request(WatchCertificateRequestRequest {
                            id: id.clone(),
                        })
                        .await
                        .unwrap(),
                    );
                }
                drop(open);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A slow watcher (the 1,000 above, none reading now) blocks nobody:
    // several changes land, and each watcher then sees the latest one.
    for n in 0..5 {
        client
            .update_certificate_request(update(&format!("change {n}")))
            .await
            .unwrap();
    }
    ca.assert_serves().await;
    for w in watchers.iter_mut().take(50) {
        let mut latest = w.next().await.unwrap().unwrap();
        while latest.spec.as_ref().unwrap().description != "change 4" {
            latest = tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        assert_eq!(latest.generation, 7);
    }
    drop(watchers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(ca.pid());
    eprintln!(
        "daemon RSS: {rss_before} KiB with 1,000 watchers, {rss_after} KiB after 10,000 dropped streams"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let listed = client
        .list_certificate_requests(ListCertificateRequestsRequest {
            filter: "state=FINISHED".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.certificate_requests.len(), 1);
}

#[tokio::test]
async fn cli_sidecar_keeps_a_valid_pair_through_renewals() {
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_PROFILES__CLIENT__MIN_DURATION", "10s"),
            ("HSMCA_REQUESTS__RENEW_AFTER", "0.3"),
            ("HSMCA_REQUESTS__RENEWAL_LIMIT", "100"),
        ],
    );
    ca.make_root_admin();
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let csr = ca.path("sidecar.csr");
    std::fs::write(&csr, key.csr("/CN=sidecar", Some("DNS:sidecar.example"))).unwrap();
    let sock = ca.socket();
    let out = run_ok(
        ca.hsmca()
            .args([
                "request",
                "create",
                "--json",
                "--duration",
                "10s",
                "--label",
                "app=web",
                "--csr",
            ])
            .arg(&csr)
            .arg("--socket")
            .arg(&sock),
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["state"], "FINISHED", "{created}");
    assert_eq!(created["labels"]["app"], "web");
    let id = created["id"].as_str().unwrap().to_string();
    let listed = run_ok(
        ca.hsmca()
            .args(["request", "list", "--filter", "label:app=web", "--socket"])
            .arg(&sock),
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));

    let dir = ca.path("sidecar");
    let watcher = ca
        .hsmca()
        .args(["request", "watch", &id, "--out-dir"])
        .arg(&dir)
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (cert, chain) = (dir.join("cert.pem"), dir.join("chain.pem"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cert.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "cert.pem never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read the pair continuously while renewals land (every 3 s).
    let mut seen = HashSet::new();
    let mut checks = 0;
    let until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < until {
        let v = run(Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&chain)
            .arg(&cert));
        assert!(
            v.status.success(),
            "openssl rejected the pair: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        let s = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(&cert),
        );
        seen.insert(String::from_utf8_lossy(&s.stdout).trim().to_string());
        checks += 1;
    }
    assert!(
        seen.len() >= 3,
        "only {} certificates seen in {checks} reads",
        seen.len()
    );
    eprintln!(
        "{checks} openssl reads of the pair, all valid, across {} certificates",
        seen.len()
    );

    // rotate-keys and delete through the CLI; the watcher ends on delete.
    let rotated = run_ok(
        ca.hsmca()
            .args(["request", "rotate-keys", &id, "--json", "--socket"])
            .arg(&sock),
    );
    let rotated: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(rotated["rotate_keys"], true);
    run_ok(
        ca.hsmca()
            .args(["request", "delete", &id, "--socket"])
            .arg(&sock),
    );
    let status = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.status.success());
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(
        err.contains("NOT_FOUND") && err.contains("deleted"),
        "{err}"
    );
    let lines = String::from_utf8_lossy(&status.stdout);
    assert!(lines.contains("rotate-keys"), "{lines}");
}
