//! Several daemons on one SoftHSM2 token directory and one PostgreSQL
//! database (a private server per test, see common::postgres): what one
//! daemon guarantees must hold across them. request_id retries on another
//! node, the CRL after a revocation elsewhere, watches of changes made
//! elsewhere, one audit chain, migrations, and a server that goes away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::HashSet, time::Duration};

use common::{Ca, KeyPair, SOFTHSM, nodes::Node, postgres::PgServer, run, run_ok, spy_module};
use hsmca::proto::{
    DeleteClientCertificateRequest, GenerateClientCertificateRequest, GetClientCertificateRequest,
    GetCrlRequest,
};
use prost::Message;
use tonic::Code;

/// A CA on a fresh token whose daemons use database `db` on `pg`.
fn ca_on(pg: &PgServer) -> (Ca, String) {
    let db = pg.create_db();
    let url = pg.url(&db);
    let ca = Ca::with_env("p256", &[("HSMCA_STATE__DATABASE", &url)]);
    (ca, db)
}

/// Routes `node`'s PKCS#11 calls through pkcs11-spy; returns its log.
fn spy(node: &mut Node) -> std::path::PathBuf {
    let log = node.dir.join("spy.log");
    node.env.push((
        "HSMCA_TOKEN__MODULE".into(),
        spy_module().display().to_string(),
    ));
    node.env.push(("PKCS11SPY".into(), SOFTHSM.into()));
    node.env
        .push(("PKCS11SPY_OUTPUT".into(), log.display().to_string()));
    log
}

/// Signatures the token made (one C_SignInit each; C_Sign comes twice, the
/// first time for the length).
fn signs(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(": C_SignInit\n")
        .count()
}

fn req(key: &KeyPair, cn: &str) -> GenerateClientCertificateRequest {
    GenerateClientCertificateRequest {
        public_key: key.public_pem(),
        common_name: cn.into(),
        ..Default::default()
    }
}

/// Serial numbers of the CRL in `pem`, by openssl.
fn crl_serials(ca: &Ca, pem: &str) -> (u64, Vec<String>) {
    let path = ca.path(&format!("crl-{}.pem", rand::random_u32()));
    std::fs::write(&path, pem).unwrap();
    let out = run_ok(
        std::process::Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&path),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let mut number = 0;
    while let Some(l) = lines.next() {
        if l.contains("X509v3 CRL Number") {
            number = lines.next().unwrap().trim().parse().unwrap();
            break;
        }
    }
    let serials = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.to_ascii_lowercase())
        .collect();
    (number, serials)
}

mod rand {
    pub fn random_u32() -> u32 {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).unwrap();
        u32::from_le_bytes(b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_records_replies_crl_and_one_audit_chain() {
    let pg = PgServer::start();
    let (ca, db) = ca_on(&pg);
    let mut a = Node::new(&ca, "node1");
    let mut b = Node::new(&ca, "node2");
    let spy_a = spy(&mut a);
    let spy_b = spy(&mut b);
    // Started together: the schema is migrated once.
    a.spawn(&ca);
    b.spawn(&ca);
    a.wait_serving();
    b.wait_serving();
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM _sqlx_migrations"),
        "1",
        "migrations ran more than once"
    );

    // A record made on one node is seen on the other.
    let key = KeyPair::new(ca.dir.path(), "p256");
    let one = a
        .client()
        .await
        .generate_client_certificate(req(&key, "one"))
        .await
        .unwrap()
        .into_inner();
    let seen = b
        .client()
        .await
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: one.certificate_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.pem_certificate, one.pem_certificate);

    // The same request_id and body sent to both nodes at once, many times:
    // one certificate, one signature, byte-identical replies.
    let mut r = req(&key, "retried");
    r.request_id = "3d0c7a8e-5b1f-4c55-9d2e-8a7f6b5c4d3e".into();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut c = if i % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            c.generate_client_certificate(r)
                .await
                .unwrap()
                .into_inner()
                .encode_to_vec()
        }));
    }
    let mut replies = HashSet::new();
    for t in tasks {
        replies.insert(t.await.unwrap());
    }
    assert_eq!(replies.len(), 1, "the replies differ between nodes");
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM certificates WHERE request_id = '3d0c7a8e-5b1f-4c55-9d2e-8a7f6b5c4d3e'"),
        "1"
    );
    // A different body under that id, on either node.
    let mut other = r.clone();
    other.common_name = "different".into();
    for n in [&a, &b] {
        let e = n
            .client()
            .await
            .generate_client_certificate(other.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    }

    // Issued on both nodes at once: every serial distinct (also a constraint).
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = if i % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        let r = req(&key, &format!("many-{i}"));
        tasks.push(tokio::spawn(async move {
            c.generate_client_certificate(r)
                .await
                .unwrap()
                .into_inner()
                .serial_number
        }));
    }
    let mut serials = HashSet::new();
    for t in tasks {
        assert!(serials.insert(t.await.unwrap()));
    }
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(DISTINCT serial) = count(*) FROM certificates"
        ),
        "t"
    );

    // Revoked on A; B's CRL lists it as soon as A has answered, with a
    // higher number than any CRL before it, whichever node signed those.
    let (n0, _) = crl_serials(
        &ca,
        &b.client()
            .await
            .get_crl(GetCrlRequest {})
            .await
            .unwrap()
            .into_inner()
            .pem_crl,
    );
    a.client()
        .await
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: one.certificate_id.clone(),
            reason: "keyCompromise".into(),
        })
        .await
        .unwrap();
    let (n1, listed) = crl_serials(
        &ca,
        &b.client()
            .await
            .get_crl(GetCrlRequest {})
            .await
            .unwrap()
            .into_inner()
            .pem_crl,
    );
    assert!(n1 > n0, "CRL numbers {n0} then {n1}");
    assert!(
        listed
            .iter()
            .any(|s| s.replace(':', "") == one.serial_number.to_ascii_lowercase()),
        "node2's CRL does not list {}: {listed:?}",
        one.serial_number
    );
    // One CRL per number (the primary key), numbers from one sequence.
    assert_eq!(
        pg.psql(&db, "SELECT count(DISTINCT number) = count(*) FROM crls"),
        "t"
    );

    // One audit chain, written by both nodes, verifies.
    let out = run(a
        .hsmca(&ca)
        .args(["audit", "verify", "--config"])
        .arg(ca.config()));
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: usize = pg
        .psql(&db, "SELECT count(*) FROM audit_log")
        .parse()
        .unwrap();
    assert!(entries >= 43, "{entries} audit entries");
    a.stop();
    b.stop();
    // Every C_Sign the token saw (pkcs11-spy, flushed at exit) is one of
    // the two start-up self-tests per node (the CA key's, and the JWT-SVID
    // key's: the development config turns the workload endpoint on) or one
    // audited signature: the retried request_id was signed once, on one node.
    let audited: usize = pg
        .psql(&db, "SELECT count(*) FROM audit_log WHERE entry LIKE '%\"outcome\":\"issued\"%' OR entry LIKE '%\"outcome\":\"signed\"%'")
        .parse()
        .unwrap();
    assert_eq!(
        signs(&spy_a) + signs(&spy_b),
        4 + audited,
        "C_Sign calls beyond the audited signatures; audit log:\n{}",
        pg.psql(&db, "SELECT seq, entry FROM audit_log ORDER BY seq")
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM audit_log WHERE entry LIKE '%CN:retried%'"
        ),
        "1"
    );
}

/// (not_before, serial) of every certificate issued for request `id`.
fn issued_for(pg: &PgServer, db: &str, id: &str) -> Vec<(i64, String)> {
    let out = pg.psql(
        db,
        &format!(
            "SELECT c.not_before || ' ' || c.serial FROM certificates c JOIN certificate_tags t \
             ON t.cert_id = c.id WHERE t.tag_key = 'hsmca:certificate-request' AND t.tag_value = '{id}' \
             ORDER BY c.not_before"
        ),
    );
    out.lines()
        .map(|l| {
            let (t, s) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), s.to_owned())
        })
        .collect()
}

fn csr_spec(csr: &str, secs: i64) -> hsmca::proto::CertificateRequestSpec {
    hsmca::proto::CertificateRequestSpec {
        pem_csr: csr.to_owned(),
        cert_duration: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_hear_other_nodes_and_each_renewal_happens_once_though_a_node_dies() {
    use hsmca::proto::{
        CreateCertificateRequestRequest, DeleteCertificateRequestRequest,
        UpdateCertificateRequestRequest, WatchCertificateRequestRequest,
        certificate_request_status::State,
    };
    use tokio_stream::StreamExt;

    let pg = PgServer::start();
    let db = pg.create_db();
    let url = pg.url(&db);
    let ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_STATE__DATABASE", &url),
            ("HSMCA_PROFILES__CLIENT__MIN_DURATION", "10s"),
            ("HSMCA_REQUESTS__RETRY_AFTER", "1s"),
            ("HSMCA_REQUESTS__RENEWAL_LIMIT", "100"),
        ],
    );
    ca.make_root_admin();
    let mut a = Node::new(&ca, "node1");
    let mut b = Node::new(&ca, "node2");
    a.start(&ca);
    b.start(&ca);

    // Watched on B, changed on A: B's watcher hears it within a second.
    let key = KeyPair::new(ca.dir.path(), "p256");
    let created = a
        .requests()
        .await
        .create_certificate_request(CreateCertificateRequestRequest {
            spec: Some(csr_spec(
                &key.csr("/CN=watched", Some("DNS:watched.example")),
                3600,
            )),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut w = b
        .requests()
        .await
        .watch_certificate_request(WatchCertificateRequestRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let finished = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let r = w.next().await.unwrap().unwrap();
            if r.status
                .as_ref()
                .is_some_and(|s| s.state() == State::Finished)
            {
                return r;
            }
        }
    })
    .await
    .expect("node2's watcher never saw the certificate");
    let mut changed = finished.spec.clone().unwrap();
    changed.description = "changed on node1".into();
    let sent = std::time::Instant::now();
    a.requests()
        .await
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: created.id.clone(),
            spec: Some(hsmca::proto::CertificateRequestSpec {
                description: "changed on node1".into(),
                pem_csr: String::new(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let r = w.next().await.unwrap().unwrap();
            if r.spec.as_ref().unwrap().description == "changed on node1" {
                return r;
            }
        }
    })
    .await
    .expect("node2's watcher did not hear node1's change within a second");
    assert!(seen.generation > finished.generation);
    eprintln!("update seen on the other node after {:?}", sent.elapsed());
    let sent = std::time::Instant::now();
    a.requests()
        .await
        .delete_certificate_request(DeleteCertificateRequestRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match w.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => panic!("the watch ended without NOT_FOUND"),
            }
        }
    })
    .await
    .expect("node2's watcher did not hear of the delete within a second");
    assert_eq!(end.code(), Code::NotFound);
    eprintln!("delete seen on the other node after {:?}", sent.elapsed());

    // Ten requests on 12-second certificates, renewed at 2/3 of their life
    // by whichever node claims them; node1 is killed in the middle of the
    // renewals and comes back later.
    let mut ids = Vec::new();
    for i in 0..10 {
        let key = KeyPair::new(ca.dir.path(), "p256");
        let csr = key.csr(
            &format!("/CN=renew-{i}"),
            Some(&format!("DNS:renew-{i}.example")),
        );
        let node = if i % 2 == 0 { &a } else { &b };
        let r = node
            .requests()
            .await
            .create_certificate_request(CreateCertificateRequestRequest {
                spec: Some(csr_spec(&csr, 12)),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(r.id);
    }
    tokio::time::sleep(Duration::from_secs(9)).await;
    a.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    a.start(&ca);
    tokio::time::sleep(Duration::from_secs(10)).await;
    a.stop();
    b.stop();
    for id in &ids {
        let issued = issued_for(&pg, &db, id);
        // First issue at ~0 s, renewals at ~8 s and ~16 s (and ~24 s).
        assert!(issued.len() >= 3, "request {id}: {issued:?}");
        for pair in issued.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= 5,
                "request {id}: two certificates for one renewal: {issued:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_newer_schema_a_wrong_password_and_a_missing_database_are_refused_by_name() {
    let pg = PgServer::start();
    let (ca, db) = ca_on(&pg);
    let mut a = Node::new(&ca, "node1");
    a.start(&ca);
    a.stop();

    // A schema migrated by a newer hsmca.
    pg.psql(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00', 0)",
    );
    let out = run(a.hsmca(&ca).args(["serve", "--config"]).arg(ca.config()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("state.database") && err.contains("version 99") && err.contains("version 1"),
        "{err}"
    );
    pg.psql(&db, "DELETE FROM _sqlx_migrations WHERE version = 99");

    // A database that does not exist.
    let mut missing = Node::new(&ca, "node2");
    missing
        .env
        .push(("HSMCA_STATE__DATABASE".into(), pg.url("no_such_db")));
    let out = run(missing
        .hsmca(&ca)
        .args(["serve", "--config"])
        .arg(ca.config()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("state.database") && err.contains("no_such_db"),
        "{err}"
    );

    // A wrong password (the server asks for one from this user).
    pg.psql(
        "postgres",
        "CREATE ROLE hsmca_pw LOGIN PASSWORD 'right-password'",
    );
    pg.psql(&db, "GRANT ALL ON SCHEMA public TO hsmca_pw");
    let hba = pg.data.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all hsmca_pw scram-sha-256\n{text}")).unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let pw = ca.path("db-password");
    std::fs::write(&pw, "wrong-password\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut wrong = Node::new(&ca, "node3");
    wrong.env.push((
        "HSMCA_STATE__DATABASE".into(),
        pg.url(&db).replace("postgres@", "hsmca_pw@"),
    ));
    wrong.env.push((
        "HSMCA_STATE__DATABASE_PASSWORD_FILE".into(),
        pw.display().to_string(),
    ));
    let out = run(wrong
        .hsmca(&ca)
        .args(["serve", "--config"])
        .arg(ca.config()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("state.database") && err.contains("password authentication failed"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-password"),
        "the password was printed: {err}"
    );
    // A password in the URL is refused before anything is touched.
    let mut in_url = Node::new(&ca, "node4");
    in_url.env.push((
        "HSMCA_STATE__DATABASE".into(),
        pg.url(&db).replace("postgres@", "postgres:secret-in-url@"),
    ));
    let out = run(in_url
        .hsmca(&ca)
        .args(["serve", "--config"])
        .arg(ca.config()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("state.database") && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains("secret-in-url"), "{err}");
}

async fn health(node: &Node) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = hsmca::cli::client::connect(&node.socket()).await.ok()?;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        HealthClient::new(channel).check(HealthCheckRequest {
            service: "hsmca.v1.CertificateAuthority".into(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    tonic_health::pb::health_check_response::ServingStatus::try_from(r.into_inner().status).ok()
}

/// Issues on `sockets` in turn from `clients` tasks until `stop` is set;
/// returns every serial handed out and every refusal's code.
async fn load(
    sockets: Vec<std::path::PathBuf>,
    key: String,
    clients: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<String>, Vec<Code>) {
    let mut tasks = Vec::new();
    for t in 0..clients {
        let sockets = sockets.clone();
        let key = key.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (Vec::new(), Vec::new());
            let mut i = t;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let socket = &sockets[i % sockets.len()];
                let Ok(channel) = hsmca::cli::client::connect(socket).await else {
                    // A node being restarted.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut c =
                    hsmca::proto::certificate_authority_client::CertificateAuthorityClient::new(
                        channel,
                    );
                let r = GenerateClientCertificateRequest {
                    public_key: key.clone(),
                    common_name: format!("load-{t}-{i}"),
                    ..Default::default()
                };
                match tokio::time::timeout(
                    Duration::from_secs(20),
                    c.generate_client_certificate(r),
                )
                .await
                {
                    Ok(Ok(resp)) => ok.push(resp.into_inner().serial_number),
                    Ok(Err(e)) => {
                        refused.push(e.code());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => panic!("a request hung for 20 s"),
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        let (o, r) = t.await.unwrap();
        ok.extend(o);
        refused.extend(r);
    }
    (ok, refused)
}

fn stored_serials(pg: &PgServer, db: &str) -> HashSet<String> {
    pg.psql(db, "SELECT serial FROM certificates")
        .lines()
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_fails_unavailable_then_issuance_resumes() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let pg = PgServer::start();
    let db = pg.create_db();
    let url = pg.url(&db);
    let ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_STATE__DATABASE", &url),
            ("HSMCA_STATE__DATABASE_TIMEOUT", "1s"),
        ],
    );
    let mut a = Node::new(&ca, "node1");
    let mut b = Node::new(&ca, "node2");
    a.start(&ca);
    b.start(&ca);
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = tokio::spawn(load(vec![a.socket(), b.socket()], key, 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    pg.stop();
    let down = std::time::Instant::now();
    let mut not_serving = false;
    while down.elapsed() < Duration::from_secs(5) {
        if health(&a).await == Some(ServingStatus::NotServing)
            && health(&b).await == Some(ServingStatus::NotServing)
        {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        not_serving,
        "health did not say NOT_SERVING with PostgreSQL down"
    );
    // Longer than a request's wait for a connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start_again();
    let up = std::time::Instant::now();
    while health(&a).await != Some(ServingStatus::Serving)
        || health(&b).await != Some(ServingStatus::Serving)
    {
        assert!(
            up.elapsed() < Duration::from_secs(15),
            "the nodes did not come back:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "serving again {:?} after PostgreSQL restarted",
        up.elapsed()
    );
    let before = stored_serials(&pg, &db).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (issued, refused) = running.await.unwrap();
    assert!(
        stored_serials(&pg, &db).len() > before,
        "issuance did not resume"
    );
    assert!(
        !refused.is_empty(),
        "nothing failed while PostgreSQL was down"
    );
    assert!(
        refused.iter().all(|c| *c == Code::Unavailable),
        "failures other than UNAVAILABLE: {refused:?}"
    );
    // Every certificate a client received is on record.
    let stored = stored_serials(&pg, &db);
    for s in &issued {
        assert!(
            stored.contains(&s.to_ascii_lowercase()),
            "certificate {s} was handed out unrecorded"
        );
    }
    eprintln!(
        "{} issued, {} refused UNAVAILABLE",
        issued.len(),
        refused.len()
    );
    for n in [&a, &b] {
        assert!(n.log().contains("state.database"), "{}", n.log());
    }
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_again_and_again_under_load_lose_no_certificate() {
    let pg = PgServer::start();
    let (ca, db) = ca_on(&pg);
    let mut nodes = [Node::new(&ca, "node1"), Node::new(&ca, "node2")];
    for n in nodes.iter_mut() {
        n.start(&ca);
    }
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sockets = nodes.iter().map(|n| n.socket()).collect();
    let running = tokio::spawn(load(sockets, key, 6, stop.clone()));
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let n = &mut nodes[round % 2];
        n.kill();
        n.start(&ca);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (issued, _) = running.await.unwrap();
    let stored = stored_serials(&pg, &db);
    let mut seen = HashSet::new();
    for s in &issued {
        assert!(seen.insert(s.clone()), "serial {s} handed out twice");
        assert!(
            stored.contains(&s.to_ascii_lowercase()),
            "certificate {s} was handed out unrecorded"
        );
    }
    assert!(
        issued.len() > 50,
        "only {} certificates under load",
        issued.len()
    );
    eprintln!(
        "{} certificates through 6 kills, {} records",
        issued.len(),
        stored.len()
    );
    for n in nodes.iter_mut() {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_sqlite_deployment_to_postgres() {
    use hsmca::proto::CreateCertificateRequestRequest;
    let pg = PgServer::start();
    // A single-host deployment on SQLite (whatever the suite's backend).
    let mut ca = Ca::new("p256");
    ca.env.retain(|(k, _)| k != "HSMCA_STATE__DATABASE");
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let mut r = req(&key, "moved");
    r.request_id = "7a1d3c5e-2b4f-4a6c-8e0d-1f3b5d7f9a2c".into();
    let first = ca
        .client()
        .await
        .generate_client_certificate(r.clone())
        .await
        .unwrap()
        .into_inner();
    let revoked = ca.issue_cn(&key, "revoked").await;
    ca.client()
        .await
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: revoked.certificate_id.clone(),
            reason: "superseded".into(),
        })
        .await
        .unwrap();
    let requests = hsmca::proto::certificate_requests_client::CertificateRequestsClient::new(
        hsmca::cli::client::connect(&ca.socket()).await.unwrap(),
    );
    let kept = requests
        .clone()
        .create_certificate_request(CreateCertificateRequestRequest {
            spec: Some(csr_spec(
                &key.csr("/CN=kept", Some("DNS:kept.example")),
                3600,
            )),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new CSR: the request is issued again, which counts towards the
    // names' renewal limit (a row the copy must carry over).
    let new_key = KeyPair::new(ca.dir.path(), "p256");
    requests
        .clone()
        .update_certificate_request(hsmca::proto::UpdateCertificateRequestRequest {
            id: kept.id.clone(),
            spec: Some(csr_spec(
                &new_key.csr("/CN=kept", Some("DNS:kept.example")),
                3600,
            )),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (n_before, _) = crl_serials(
        &ca,
        &ca.client()
            .await
            .get_crl(GetCrlRequest {})
            .await
            .unwrap()
            .into_inner()
            .pem_crl,
    );
    assert!(ca.stop().success());
    // Retention has cut the audit log's first two records, as it does:
    // the checkpoint keeps the third one's predecessor hash.
    {
        let db = rusqlite::Connection::open(ca.path("state").join("hsmca.db")).unwrap();
        db.execute_batch(
            "INSERT OR REPLACE INTO audit_checkpoint (id, seq, prev_hash) \
             SELECT 1, seq, prev_hash FROM audit_log WHERE seq = 3; \
             DELETE FROM audit_log WHERE seq < 3;",
        )
        .unwrap();
    }

    let db = pg.create_db();
    let url = pg.url(&db);
    let from = format!("sqlite:{}", ca.path("state").display());
    let out = run_ok(
        ca.hsmca()
            .args(["store", "copy", "--from", &from, "--to", &url]),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("verified"), "{said}");
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM certificates"),
        "4",
        "{said}"
    );
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM certificate_requests"),
        "1"
    );
    assert!(said.contains("1 renewal times"), "{said}");
    // The cut log moved with its checkpoint, and verifies from there (below).
    assert_eq!(
        pg.psql(&db, "SELECT seq FROM audit_checkpoint"),
        "3",
        "{said}"
    );
    assert_eq!(pg.psql(&db, "SELECT min(seq) FROM audit_log"), "3");
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM renewals WHERE names_key LIKE '%DNS:kept.example%'"
        ),
        "1",
        "{said}"
    );
    // A second copy into the now non-empty database is refused.
    let again = run(ca
        .hsmca()
        .args(["store", "copy", "--from", &from, "--to", &url]));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // A daemon on the copy: the replay is byte for byte, the revocation is
    // on its CRL, numbered after the old ones, and the chain verifies.
    let mut node = Node::new(&ca, "node1");
    node.env.push(("HSMCA_STATE__DATABASE".into(), url.clone()));
    node.start(&ca);
    let replay = node
        .client()
        .await
        .generate_client_certificate(r)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay.encode_to_vec(), first.encode_to_vec());
    let (n_after, listed) = crl_serials(
        &ca,
        &node
            .client()
            .await
            .get_crl(GetCrlRequest {})
            .await
            .unwrap()
            .into_inner()
            .pem_crl,
    );
    assert!(n_after >= n_before, "CRL number {n_after} after {n_before}");
    assert!(
        listed
            .iter()
            .any(|s| s.replace(':', "") == revoked.serial_number.to_ascii_lowercase())
    );
    node.stop();
    let v = run(node
        .hsmca(&ca)
        .args(["audit", "verify", "--config"])
        .arg(ca.config()));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_count_every_node_and_rates_are_per_node() {
    let pg = PgServer::start();
    let (ca, _db) = ca_on(&pg);
    ca.set_policy(
        r#"
[[policy.rules]]
name = "limited"
uids = [0]
common_names = ["**"]
max_live = 6
rate = 0.01
burst = 2
"#,
    );
    let mut a = Node::new(&ca, "node1");
    let mut b = Node::new(&ca, "node2");
    a.start(&ca);
    b.start(&ca);
    let key = KeyPair::new(ca.dir.path(), "p256");
    let ask = |n: &Node, cn: &str| {
        let r = req(&key, cn);
        let socket = n.socket();
        async move {
            hsmca::proto::certificate_authority_client::CertificateAuthorityClient::new(
                hsmca::cli::client::connect(&socket).await.unwrap(),
            )
            .generate_client_certificate(r)
            .await
        }
    };
    // The rate is per daemon: a burst of 2 on each node, then both refuse.
    for n in [&a, &b] {
        for i in 0..2 {
            ask(n, &format!("{}-{i}", n.name)).await.unwrap();
        }
        let e = ask(n, "over-rate").await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("rate"), "{}", e.message());
    }
    a.stop();
    b.stop();

    // The quota counts both nodes' certificates: with the rate lifted, 4
    // live already, two more fit (on either node), then none on any node.
    ca.set_policy(
        "[[policy.rules]]\nname = \"limited\"\nuids = [0]\ncommon_names = [\"**\"]\nmax_live = 6\n",
    );
    a.start(&ca);
    b.start(&ca);
    ask(&a, "fifth").await.unwrap();
    ask(&b, "sixth").await.unwrap();
    for n in [&a, &b] {
        let e = ask(n, "seventh").await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("max_live = 6"), "{}", e.message());
    }
    a.stop();
    b.stop();
}

/// The serial the test hook forces (HSMCA_TEST_SERIAL).
const FORCED_SERIAL: &str = "7a5e1a1c0111de00000000000000c0de";

/// With serials forced by the test hook: the first certificate gets one;
/// the next request collides with it in the store twice (its first new
/// serial is forced too), each discarded certificate is audited as such
/// and signed again, until a fresh serial is stored; a certificate
/// request's issue by the background worker collides once and does the
/// same. Every certificate handed out has its record, and the audit chain
/// verifies.
async fn serial_collisions_are_signed_again(mut ca: Ca) {
    use hsmca::proto::{
        CreateCertificateRequestRequest, GetCertificateRequestRequest,
        certificate_request_status::State,
    };
    // The first certificate; the second (twice, then a fresh serial); the
    // certificate request's check at creation (which decides a certificate
    // it does not sign) and its issue (then a fresh serial).
    let plan = format!("{0} {0} {0} - {0} {0} -", FORCED_SERIAL);
    ca.env.push(("HSMCA_TEST_SERIAL".into(), plan));
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let first = ca.issue_cn(&key, "first").await;
    assert_eq!(first.serial_number.to_ascii_lowercase(), FORCED_SERIAL);
    let second = ca.issue_cn(&key, "second").await;
    assert_ne!(second.serial_number.to_ascii_lowercase(), FORCED_SERIAL);
    // openssl reads the serial the reply names from the certificate itself.
    let pem = ca.path("second.pem");
    std::fs::write(&pem, &second.pem_certificate).unwrap();
    let out = run_ok(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&pem),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .to_ascii_lowercase(),
        format!("serial={}", second.serial_number.to_ascii_lowercase())
    );
    // Both records are in the store.
    for c in [&first, &second] {
        let got = ca
            .client()
            .await
            .get_client_certificate(GetClientCertificateRequest {
                certificate_id: c.certificate_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.pem_certificate, c.pem_certificate);
    }

    // A certificate request's background issue collides too.
    let mut requests = hsmca::proto::certificate_requests_client::CertificateRequestsClient::new(
        hsmca::cli::client::connect(&ca.socket()).await.unwrap(),
    );
    let id = requests
        .create_certificate_request(CreateCertificateRequestRequest {
            spec: Some(csr_spec(
                &key.csr("/CN=requested", Some("DNS:requested.example")),
                3600,
            )),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let r = requests
            .get_certificate_request(GetCertificateRequestRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        let status = r.status.unwrap_or_default();
        if status.state() == State::Finished {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not issued: {status:?}\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let requested = &status.certificates[0].serial_number;
    assert_ne!(requested.to_ascii_lowercase(), FORCED_SERIAL);
    assert!(status.error.is_empty(), "{}", status.error);

    // The audit log says what happened: the forced serial issued once, then
    // discarded twice by GenerateClientCertificate (whose entry commits
    // with the record) and once by the worker (which audits the signature
    // before it commits).
    assert!(ca.stop().success());
    let out = run_ok(
        ca.hsmca()
            .args(["audit", "list", "--json", "--config"])
            .arg(ca.config()),
    );
    let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["entry"].clone())
        .collect();
    let outcomes_of = |serial: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["serial"].as_str() == Some(serial))
            .map(|e| e["outcome"].as_str().unwrap().to_owned())
            .collect()
    };
    let forced = outcomes_of(FORCED_SERIAL);
    assert_eq!(forced.len(), 5, "{entries:#?}");
    assert_eq!(forced.iter().filter(|o| *o == "issued").count(), 2);
    assert_eq!(
        forced.iter().filter(|o| o.starts_with("discarded")).count(),
        3,
        "{forced:?}"
    );
    for s in [&second.serial_number, requested] {
        assert_eq!(outcomes_of(&s.to_ascii_lowercase()), ["issued"]);
    }
    assert!(ca.log().contains("already in the store"), "{}", ca.log());
    let v = run(ca
        .hsmca()
        .args(["audit", "verify", "--config"])
        .arg(ca.config()));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_collision_is_signed_again_with_a_new_serial_on_sqlite() {
    let mut ca = Ca::new("p256");
    ca.env.retain(|(k, _)| k != "HSMCA_STATE__DATABASE");
    serial_collisions_are_signed_again(ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_collision_is_signed_again_with_a_new_serial_on_postgres() {
    let pg = PgServer::start();
    let (ca, db) = ca_on(&pg);
    serial_collisions_are_signed_again(ca).await;
    assert_eq!(
        pg.psql(
            &db,
            &format!("SELECT count(*) FROM certificates WHERE serial = '{FORCED_SERIAL}'")
        ),
        "1"
    );
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM certificates"), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_names_requested_on_two_nodes_at_once_is_created_once() {
    use hsmca::proto::CreateCertificateRequestRequest;
    let pg = PgServer::start();
    let (ca, db) = ca_on(&pg);
    let mut a = Node::new(&ca, "node1");
    let mut b = Node::new(&ca, "node2");
    a.start(&ca);
    b.start(&ca);
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        // One CSR (one key, one set of names), created three times on each
        // node at once: each Create passes the duplicate lookup before any
        // row exists, and the unique index on the key and names decides.
        let key = KeyPair::new(ca.dir.path(), "p256");
        let csr = key.csr(
            &format!("/CN=dup-{round}"),
            Some(&format!("DNS:dup-{round}.example")),
        );
        let mut clients = Vec::new();
        for i in 0..6 {
            clients.push(if i % 2 == 0 {
                a.requests().await
            } else {
                b.requests().await
            });
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
        let mut tasks = Vec::new();
        for mut c in clients {
            let spec = csr_spec(&csr, 3600);
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                c.create_certificate_request(CreateCertificateRequestRequest {
                    spec: Some(spec),
                    request_id: String::new(),
                })
                .await
            }));
        }
        let mut created = Vec::new();
        let mut refused = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => created.push(r.into_inner().id),
                Err(e) => refused.push(e),
            }
        }
        assert_eq!(created.len(), 1, "round {round}: {created:?} {refused:?}");
        for e in &refused {
            assert_eq!(e.code(), Code::AlreadyExists, "round {round}: {e:?}");
            assert!(
                e.message().contains("already has this key and these names")
                    || e.message().contains("created at the same time"),
                "{}",
                e.message()
            );
        }
        assert_eq!(
            pg.psql(
                &db,
                &format!(
                    "SELECT count(*) FROM certificate_requests WHERE names_key LIKE '%dup-{round}.example%'"
                )
            ),
            "1"
        );
    }
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM certificate_requests"),
        ROUNDS.to_string()
    );
    a.stop();
    b.stop();
    // How many losers got past the lookup and were caught by the index
    // (timing decides; the outcome above is the same either way).
    let caught = [&a, &b]
        .iter()
        .map(|n| n.log().matches("created at the same time as one").count())
        .sum::<usize>();
    eprintln!("{caught} duplicate creates caught by the unique index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_a_running_daemon_fails_unavailable_by_name_until_fixed() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let pg = PgServer::start();
    let db = pg.create_db();
    pg.psql(
        "postgres",
        "CREATE ROLE hsmca_rt LOGIN PASSWORD 'first-password'",
    );
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {db} OWNER TO hsmca_rt"),
    );
    pg.psql(&db, "GRANT ALL ON SCHEMA public TO hsmca_rt");
    let hba = pg.data.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all hsmca_rt scram-sha-256\n{text}")).unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("db-password");
    std::fs::write(&pw, "first-password\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let url = pg.url(&db).replace("postgres@", "hsmca_rt@");
    let pw_path = pw.display().to_string();
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_STATE__DATABASE", &url),
            ("HSMCA_STATE__DATABASE_PASSWORD_FILE", &pw_path),
            // Room for a SCRAM login (a debug build's PBKDF2) on a busy
            // machine: a login slower than this is a PoolTimedOut refusal,
            // which names state.database_timeout instead.
            ("HSMCA_STATE__DATABASE_TIMEOUT", "5s"),
        ],
    );
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let mut handed_out = vec![ca.issue_cn(&key, "before").await.serial_number];
    let health_of = || async {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = hsmca::cli::client::connect(&ca.socket()).await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            HealthClient::new(channel).check(HealthCheckRequest {
                service: "hsmca.v1.CertificateAuthority".into(),
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("health did not answer within 15 s:\n{}", ca.log()))
        .unwrap();
        ServingStatus::try_from(r.into_inner().status).unwrap()
    };
    assert_eq!(health_of().await, ServingStatus::Serving);
    // Waits up to 30 s for health to say `want`; `stuck` says otherwise.
    let health_becomes = async |want: ServingStatus, stuck: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while health_of().await != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{stuck}:\n{}",
                ca.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // The password changes under the daemon and its sessions are cut: every
    // new connection is refused.
    pg.psql("postgres", "ALTER ROLE hsmca_rt PASSWORD 'second-password'");
    // A login that began before the change completes with the old
    // password (and is a valid session): cut sessions until none is left.
    for _ in 0..20 {
        pg.psql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'hsmca_rt'",
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let left = pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'hsmca_rt'",
        );
        if left == "0" {
            break;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let refused = loop {
        let r = ca
            .client()
            .await
            .generate_client_certificate(req(&key, "meanwhile"))
            .await;
        match r {
            Ok(c) => handed_out.push(c.into_inner().serial_number),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}\n{}", ca.log());
                assert!(
                    e.message().contains("state.database"),
                    "{}\n{}",
                    e.message(),
                    ca.log()
                );
                if e.message().contains("password authentication failed") {
                    break e;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal naming the password check:\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !refused.message().contains("password'") && !refused.message().contains("-password"),
        "{}",
        refused.message()
    );
    // Health still answers, and says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while health_of().await != ServingStatus::NotServing {
        assert!(
            std::time::Instant::now() < deadline,
            "health stayed SERVING; sessions: {}\n{}",
            pg.psql(
                "postgres",
                "SELECT pid, state, backend_start FROM pg_stat_activity WHERE usename = 'hsmca_rt'"
            ),
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Other calls are refused the same way, and the daemon stays up.
    let e = ca
        .client()
        .await
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: "01a2b3c4-0000-7000-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}\n{}", ca.log());

    // The password is set back: the daemon reconnects by itself.
    pg.psql("postgres", "ALTER ROLE hsmca_rt PASSWORD 'first-password'");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        match ca
            .client()
            .await
            .generate_client_certificate(req(&key, "after"))
            .await
        {
            Ok(c) => {
                handed_out.push(c.into_inner().serial_number);
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}\n{}", ca.log()),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "issuance did not resume:\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health_becomes(ServingStatus::Serving, "health stayed NOT_SERVING").await;
    // Every certificate handed out is on the record; no password was logged.
    let stored = stored_serials(&pg, &db);
    for s in &handed_out {
        assert!(stored.contains(&s.to_ascii_lowercase()), "{s} not stored");
    }

    // The database is dropped under the daemon: refused by name too, and
    // health still answers.
    pg.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let e = ca
            .client()
            .await
            .generate_client_certificate(req(&key, "dropped"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}\n{}", ca.log());
        if e.message().contains("state.database") && e.message().contains("does not exist") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal naming the missing database: {e:?}\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health_becomes(
        ServingStatus::NotServing,
        "health stayed SERVING with the database dropped",
    )
    .await;
    let stopped = ca.stop();
    assert!(stopped.success(), "{stopped}:\n{}", ca.log());
    let log = ca.log();
    assert!(log.contains("password authentication failed"), "{log}");
    assert!(
        !log.contains("first-password") && !log.contains("second-password"),
        "a password was logged"
    );
}
