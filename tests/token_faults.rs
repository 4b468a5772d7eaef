//! The signer under PKCS#11 faults, on a real SoftHSM2 token: eight clients
//! issue without pause while the daemon's fault hook (`HSMCA_TEST_FAULTS`)
//! makes one C_Sign fail with CKR_SESSION_HANDLE_INVALID, then makes every
//! PKCS#11 call fail with CKR_DEVICE_ERROR for 3 s (the rebuild's calls
//! too), then really closes every session underneath the signing threads.
//! Nothing may hang, nothing but UNAVAILABLE may come back, every
//! certificate handed out must be recorded and verify, health must go
//! NOT_SERVING and back, and the same daemon process must keep issuing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashSet,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Ca, KeyPair, run_ok};
use hsmca::proto::{
    ClientCertificate, GenerateClientCertificateRequest, GetClientCertificateRequest,
    ListClientCertificatesRequest,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SERVICE: &str = "hsmca.v1.CertificateAuthority";
/// Every call's deadline: a call that takes longer counts as a hang.
const DEADLINE: Duration = Duration::from_secs(10);

/// Replaces the fault plan atomically (the daemon re-reads it every 20 ms).
fn plan(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[derive(Default)]
struct Outcomes {
    issued: Vec<(Instant, ClientCertificate)>,
    refused: Vec<(Instant, Code, String)>,
    hung: usize,
}

async fn health(ca: &Ca, service: &str) -> Option<ServingStatus> {
    let channel = hsmca::cli::client::connect(&ca.socket()).await.ok()?;
    let mut client = HealthClient::new(channel);
    let r = tokio::time::timeout(
        DEADLINE,
        client.check(HealthCheckRequest {
            service: service.into(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuance_survives_session_token_and_closed_session_faults() {
    let mut ca = Ca::new("p256");
    let control = ca.path("faults");
    ca.env
        .push(("HSMCA_TEST_FAULTS".into(), control.display().to_string()));
    ca.start();
    let pid = ca.pid();
    assert_eq!(health(&ca, SERVICE).await, Some(ServingStatus::Serving));
    assert_eq!(health(&ca, "").await, Some(ServingStatus::Serving));
    let ca = Arc::new(ca);

    // Health, sampled every 20 ms for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<(Instant, Option<ServingStatus>)>::new()));
    let poller = {
        let (ca, stop, samples) = (ca.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            let channel = hsmca::cli::client::connect(&ca.socket()).await.unwrap();
            let mut client = HealthClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let r = tokio::time::timeout(
                    DEADLINE,
                    client.check(HealthCheckRequest {
                        service: SERVICE.into(),
                    }),
                )
                .await;
                let status = match r {
                    Ok(Ok(r)) => ServingStatus::try_from(r.into_inner().status).ok(),
                    _ => None,
                };
                samples.lock().unwrap().push((Instant::now(), status));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Eight clients, each on its own connection, issuing without pause.
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (ca, stop, outcomes, key) = (ca.clone(), stop.clone(), outcomes.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let mut client = ca.client().await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut req = tonic::Request::new(GenerateClientCertificateRequest {
                    public_key: key.clone(),
                    common_name: format!("client-{c}-{n}"),
                    ..Default::default()
                });
                req.set_timeout(DEADLINE);
                let r = tokio::time::timeout(
                    DEADLINE + Duration::from_secs(1),
                    client.generate_client_certificate(req),
                )
                .await;
                let now = Instant::now();
                let refused = {
                    let mut o = outcomes.lock().unwrap();
                    match r {
                        Ok(Ok(cert)) => o.issued.push((now, cert.into_inner())),
                        Ok(Err(status)) => {
                            o.refused
                                .push((now, status.code(), status.message().to_string()))
                        }
                        Err(_) => o.hung += 1,
                    }
                    o.refused.last().is_some_and(|(t, _, _)| *t == now)
                };
                if refused {
                    // Refusals come back at once; do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    let issued_since = |t: Instant| {
        outcomes
            .lock()
            .unwrap()
            .issued
            .iter()
            .filter(|(at, _)| *at > t)
            .count()
    };
    let wait_for_issues = |t: Instant, what: &'static str| {
        let issued_since = &issued_since;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while issued_since(t) < 20 {
                assert!(Instant::now() < deadline, "no issuance after {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let t0 = Instant::now();
    wait_for_issues(t0, "start-up").await;

    // 1. A session-level fault on one C_Sign: recovered inside the pool.
    let t_session = Instant::now();
    plan(&control, "# 1\nfault sign SESSION_HANDLE_INVALID count=1\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_issues(t_session, "the session-level fault").await;

    // 2. The device fails every call for 3 s, the rebuild's calls included.
    let t_token = Instant::now();
    plan(&control, "# 2\nfault * DEVICE_ERROR for=3s\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let saw = |s: ServingStatus, after: Instant| {
        samples
            .lock()
            .unwrap()
            .iter()
            .any(|(t, st)| *t > after && *st == Some(s))
    };
    while !saw(ServingStatus::NotServing, t_token) {
        assert!(Instant::now() < deadline, "health never went NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t_not_serving = Instant::now();
    while !saw(ServingStatus::Serving, t_not_serving) {
        assert!(
            Instant::now() < deadline,
            "health never came back to SERVING\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t_recovered = Instant::now();
    assert!(
        t_recovered - t_token >= Duration::from_millis(2900),
        "recovered while the device was still failing"
    );
    wait_for_issues(t_recovered, "the token-level fault").await;

    // 3. Every real session closed underneath the signing threads.
    let t_reset = Instant::now();
    plan(&control, "# 3\nreset-sessions\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_issues(t_reset, "the closed sessions").await;
    let t_end = Instant::now();

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    poller.await.unwrap();

    let log = ca.log();
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let samples = std::mem::take(&mut *samples.lock().unwrap());

    // No call hung; every refusal is UNAVAILABLE, saying why.
    assert_eq!(outcomes.hung, 0, "calls passed their deadline");
    for (_, code, message) in &outcomes.refused {
        assert_eq!(*code, Code::Unavailable, "{message}");
        assert!(message.contains("HSM"), "{message}");
    }
    let refused_in = |a: Instant, b: Instant| {
        outcomes
            .refused
            .iter()
            .filter(|(t, _, _)| *t > a && *t <= b)
            .count()
    };
    assert!(
        refused_in(t_token, t_recovered) > 0,
        "nothing was refused while the device failed"
    );
    // The session-level fault and the closed sessions were absorbed by a
    // new session and one retry: nothing failed, health stayed SERVING.
    assert_eq!(refused_in(t0, t_token), 0, "session-level fault leaked");
    assert_eq!(
        refused_in(t_reset, t_end),
        0,
        "closed sessions leaked:\n{log}"
    );
    for (t, st) in &samples {
        if (*t > t0 && *t < t_token) || *t > t_reset {
            assert_eq!(
                *st,
                Some(ServingStatus::Serving),
                "health outside the token fault"
            );
        }
    }
    assert_eq!(
        samples.last().unwrap().1,
        Some(ServingStatus::Serving),
        "health at the end"
    );
    assert_eq!(health(&ca, "").await, Some(ServingStatus::Serving));

    // The recovery paths really ran, in this same process.
    assert!(log.contains("signing session lost"), "{log}");
    assert!(log.contains("token reconnected"), "{log}");
    assert!(log.contains("every PKCS#11 session was closed"), "{log}");
    assert!(
        log.contains("token rebuild failed"),
        "the rebuild met the fault too"
    );
    let mut ca = Arc::into_inner(ca).unwrap();
    assert!(ca.is_running(), "the daemon exited:\n{log}");
    assert_eq!(ca.pid(), pid);

    // Every certificate handed out is recorded, once, with its own serial.
    let issued: Vec<ClientCertificate> = outcomes.issued.into_iter().map(|(_, c)| c).collect();
    let mut client = ca.client().await;
    let mut serials = HashSet::new();
    for c in &issued {
        assert!(serials.insert(c.serial_number.clone()), "serial repeated");
        let stored = client
            .get_client_certificate(GetClientCertificateRequest {
                certificate_id: c.certificate_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{} not recorded: {e:?}", c.certificate_id))
            .into_inner();
        assert_eq!(stored.pem_certificate, c.pem_certificate);
    }
    let mut recorded = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list_client_certificates(ListClientCertificatesRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        recorded += page.client_certificates.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        recorded,
        issued.len(),
        "records without a reply, or replies without a record"
    );

    // And every one verifies against the CA with openssl.
    let dir = ca.path("issued");
    std::fs::create_dir(&dir).unwrap();
    let mut files = Vec::new();
    for (i, c) in issued.iter().enumerate() {
        let f = dir.join(format!("{i}.pem"));
        std::fs::write(&f, &c.pem_certificate).unwrap();
        files.push(f);
    }
    std::fs::write(dir.join("root.pem"), &issued[0].ca_cert).unwrap();
    std::fs::write(
        dir.join("chain.pem"),
        issued[0].pem_certificate_chain[1..].concat(),
    )
    .unwrap();
    for chunk in files.chunks(500) {
        let out = run_ok(
            Command::new("openssl")
                .args(["verify", "-x509_strict", "-CAfile"])
                .arg(dir.join("root.pem"))
                .arg("-untrusted")
                .arg(dir.join("chain.pem"))
                .args(chunk),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches(": OK").count(), chunk.len(), "{text}");
    }
    for line in log.lines().filter(|l| {
        ["hook", "session", "token", "rebuild"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        eprintln!("daemon: {line}");
    }
    eprintln!(
        "issued {} (verified and recorded), refused {} (all UNAVAILABLE), health samples {}",
        issued.len(),
        outcomes.refused.len(),
        samples.len()
    );
    assert!(ca.stop().success());
}

/// One signing session, one request at a time, so each fault meets a known
/// C_Sign: a request-level fault fails only its request (the session and
/// health stay); a session-level fault that survives the fresh session and
/// retry is treated as token-level: UNAVAILABLE, NOT_SERVING, a rebuild,
/// then SERVING and issuing again.
#[tokio::test]
async fn request_faults_stay_local_and_persistent_session_faults_rebuild() {
    let mut ca = Ca::with_env("p256", &[("HSMCA_TOKEN__SESSIONS", "1")]);
    let control = ca.path("faults");
    ca.env
        .push(("HSMCA_TEST_FAULTS".into(), control.display().to_string()));
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let mut client = ca.client().await;
    let mut issue = async |cn: &str| {
        let mut req = tonic::Request::new(GenerateClientCertificateRequest {
            public_key: key.clone(),
            common_name: cn.into(),
            ..Default::default()
        });
        req.set_timeout(DEADLINE);
        tokio::time::timeout(DEADLINE, client.generate_client_certificate(req))
            .await
            .expect("the call hung")
    };
    issue("before").await.unwrap();

    plan(&control, "# 1\nfault sign DATA_LEN_RANGE count=1\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = issue("refused").await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("HSM refused"), "{e:?}");
    assert!(e.message().contains("nothing was issued"), "{e:?}");
    assert_eq!(health(&ca, SERVICE).await, Some(ServingStatus::Serving));
    issue("after-refusal").await.unwrap();
    assert!(!ca.log().contains("token unavailable"), "{}", ca.log());

    plan(&control, "# 2\nfault sign USER_NOT_LOGGED_IN count=2\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = issue("escalated").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = issue("after-rebuild").await {
            assert!(r.into_inner().pem_certificate.contains("BEGIN CERTIFICATE"));
            break;
        }
        assert!(Instant::now() < deadline, "no recovery:\n{}", ca.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&ca, SERVICE).await, Some(ServingStatus::Serving));
    let log = ca.log();
    assert!(log.contains("token unavailable"), "{log}");
    assert!(log.contains("token reconnected"), "{log}");
    assert!(ca.is_running());
    assert!(ca.stop().success());
}
