//! Who may have what, end to end: clients run as other uids (setpriv)
//! against one daemon; names outside a rule and every spelling trick are
//! PERMISSION_DENIED and never reach C_Sign (watched through pkcs11-spy);
//! rates and quotas; an intermediate's name constraints checked by openssl;
//! the audit log's hash chain; SIGHUP reloads under load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Ca, KeyPair, run, run_ok};
use hsmca::proto::{
    DeleteClientCertificateRequest, GenerateClientCertificateRequest, GetCaCertificatesRequest,
};
use tonic::Code;

const POLICY: &str = r#"
[[policy.rules]]
name = "nobody's services"
uids = [65534]
profiles = ["client", "server"]
common_names = ["{user}"]
dns = ["*.svc.example", "{user}.users.example"]
uris = ["spiffe://example.org/ns/{user}/*"]
ips = ["10.1.0.0/16"]

[[policy.rules]]
name = "mesh admin"
uids = [0]
admin = true
profiles = ["client", "intermediate"]
common_names = ["**"]
dns = ["*.mesh.example"]
"#;

/// `hsmca issue` as `uid`, with `args` after the key.
fn issue_as(ca: &Ca, uid: u32, key: &KeyPair, args: &[&str]) -> Output {
    run(Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(common::HSMCA)
        .args(["issue", "--socket"])
        .arg(ca.socket())
        .arg("--public-key")
        .arg(&key.public)
        .args(args))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn c_sign_calls(spy_log: &std::path::Path) -> usize {
    std::fs::read_to_string(spy_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("C_Sign") && !l.contains("C_SignInit"))
        .count()
}

#[tokio::test]
async fn names_outside_the_rules_and_every_trick_are_refused_before_signing() {
    let mut ca = Ca::with_env("p256", &[("HSMCA_SERVER__SOCKET_MODE", "0666")]);
    ca.set_policy(POLICY);
    let spy = ca.use_spy();
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    std::fs::set_permissions(
        &key.public,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    // Allowed: every kind of name the rule grants uid 65534 (nobody).
    let ok = issue_as(
        &ca,
        65534,
        &key,
        &[
            "--cn",
            "nobody",
            "--dns",
            "api.svc.example",
            "--dns",
            "nobody.users.example",
            "--uri",
            "spiffe://example.org/ns/nobody/web",
            "--ip",
            "10.1.2.3",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));

    let signs_before = c_sign_calls(&spy);
    assert!(signs_before > 0, "the spy saw no C_Sign");
    let tricks: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "a suffix trick",
            vec!["--dns", "a.svc.example.evil.com"],
            "a.svc.example.evil.com",
        ),
        (
            "a literal wildcard",
            vec!["--profile", "server", "--dns", "*.svc.example"],
            "*.svc.example",
        ),
        (
            "uppercase",
            vec!["--dns", "API.SVC.EXAMPLE"],
            "API.SVC.EXAMPLE",
        ),
        (
            "a trailing dot",
            vec!["--dns", "api.svc.example."],
            "api.svc.example.",
        ),
        (
            "an empty label",
            vec!["--dns", "a..svc.example"],
            "a..svc.example",
        ),
        (
            "Unicode (Cyrillic о)",
            vec!["--dns", "nоbody.users.example"],
            "users.example",
        ),
        (
            "an IDNA A-label",
            vec!["--dns", "xn--nbody-7fg.users.example"],
            "xn--nbody-7fg",
        ),
        (
            "another user's name",
            vec!["--dns", "bob.users.example"],
            "bob.users.example",
        ),
        (
            "a name two labels deep",
            vec!["--dns", "a.b.svc.example"],
            "a.b.svc.example",
        ),
        (
            "the bare domain",
            vec!["--dns", "svc.example"],
            "svc.example",
        ),
        (
            "an IP outside the CIDR",
            vec!["--ip", "10.2.0.1"],
            "10.2.0.1",
        ),
        (
            "an IPv4-mapped IPv6 address",
            vec!["--ip", "::ffff:10.1.2.3"],
            "::ffff:10.1.2.3",
        ),
        (
            "a URI with ..",
            vec!["--uri", "spiffe://example.org/ns/nobody/../root/web"],
            "..",
        ),
        (
            "a URI with another scheme",
            vec!["--uri", "https://example.org/ns/nobody/web"],
            "https://",
        ),
        (
            "a URI in another namespace",
            vec!["--uri", "spiffe://example.org/ns/root/web"],
            "ns/root",
        ),
        (
            "a percent-encoded URI",
            vec!["--uri", "spiffe://example.org/ns/nobody/%2e%2e"],
            "%2e",
        ),
        (
            "a URI whose `*` segment is no SPIFFE ID segment",
            vec!["--uri", "spiffe://example.org/ns/nobody/x;y=z"],
            "x;y=z",
        ),
        ("another common name", vec!["--cn", "root"], "\"root\""),
        (
            "a server-only name in a mixed set",
            vec!["--dns", "api.svc.example", "--dns", "evil.example"],
            "evil.example",
        ),
        (
            "the intermediate profile",
            vec!["--profile", "intermediate", "--cn", "nobody"],
            "intermediate",
        ),
    ];
    for (what, args, needle) in &tricks {
        let out = issue_as(&ca, 65534, &key, args);
        assert!(!out.status.success(), "{what} was issued");
        let err = stderr(&out);
        assert!(err.contains("PERMISSION_DENIED"), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
    }
    // A CSR whose SAN hides a name beside the allowed ones.
    let hidden = key_csr_file(&ca, "/CN=nobody", "DNS:api.svc.example,DNS:evil.example");
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::HSMCA)
        .args(["issue", "--socket"])
        .arg(ca.socket())
        .arg("--csr")
        .arg(&hidden));
    let err = stderr(&out);
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("evil.example"),
        "{err}"
    );
    // A uid no rule matches gets nothing at all.
    let out = issue_as(&ca, 65533, &key, &["--dns", "api.svc.example"]);
    let err = stderr(&out);
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("uid 65533"),
        "{err}"
    );
    assert!(err.contains("no policy rule"), "{err}");

    // Nothing refused reached the token.
    assert_eq!(
        c_sign_calls(&spy),
        signs_before,
        "a refused request was signed"
    );
    // And the daemon still serves the allowed.
    let again = issue_as(&ca, 65534, &key, &["--dns", "web.svc.example"]);
    assert!(again.status.success(), "{}", stderr(&again));

    // Every refusal and signature is in the audit log, whose chain verifies.
    let list = run_ok(
        ca.hsmca()
            .args(["audit", "list", "--config"])
            .arg(ca.config()),
    );
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("refused: PERMISSION_DENIED"), "{list}");
    assert!(list.contains("uid=65534(nobody)"), "{list}");
    assert!(list.contains("issued"), "{list}");
    let verify = run_ok(
        ca.hsmca()
            .args(["audit", "verify", "--config"])
            .arg(ca.config()),
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact"));
}

fn key_csr_file(ca: &Ca, subject: &str, san: &str) -> std::path::PathBuf {
    let key = KeyPair::new(ca.dir.path(), "p256");
    let path = ca.path(&format!("hidden-{}.csr", san.len()));
    std::fs::write(&path, key.csr(subject, Some(san))).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    path
}

#[tokio::test]
async fn a_burst_of_a_thousand_is_rate_limited() {
    let mut ca = Ca::new("p256");
    ca.set_policy(
        r#"
[[policy.rules]]
name = "limited"
uids = [0]
common_names = ["**"]
rate = 10.0
burst = 10
"#,
    );
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    // 1,000 requests at once: the bucket lets its burst through, then 10 a
    // second for as long as the wave lasts.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut c = ca.client().await;
        let pem = key.public_pem();
        tasks.push(tokio::spawn(async move {
            c.generate_client_certificate(GenerateClientCertificateRequest {
                public_key: pem,
                common_name: format!("burst-{i}"),
                ..Default::default()
            })
            .await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("retry in"), "{}", e.message());
                limited += 1;
            }
        }
    }
    let refill = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        ok >= 10 && ok <= 10 + refill + 1,
        "{ok} got through in {:?}",
        started.elapsed()
    );
    assert_eq!(ok + limited, 1000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ca.assert_serves().await;
}

#[tokio::test]
async fn quotas() {
    let mut ca = Ca::new("p256");
    ca.set_policy(
        r#"
[[policy.rules]]
name = "limited"
uids = [0]
common_names = ["**"]
max_live = 15
"#,
    );
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    // 15 live certificates; the 16th is refused until one is revoked.
    let mut issued = Vec::new();
    let mut quota_hit = None;
    for i in 0..40 {
        match ca
            .client()
            .await
            .generate_client_certificate(GenerateClientCertificateRequest {
                public_key: key.public_pem(),
                common_name: format!("quota-{i}"),
                ..Default::default()
            })
            .await
        {
            Ok(r) => issued.push(r.into_inner()),
            Err(e) => {
                quota_hit = Some(e);
                break;
            }
        }
    }
    let e = quota_hit.expect("the quota never applied");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("max_live = 15"), "{}", e.message());
    assert_eq!(issued.len(), 15);
    ca.client()
        .await
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: issued[0].certificate_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    ca.issue_cn(&key, "after-revoking-one").await;
}

#[tokio::test]
async fn an_intermediate_is_bound_by_its_rules_names() {
    let mut ca = Ca::new("p256");
    ca.set_policy(POLICY);
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let inter = ca
        .client()
        .await
        .generate_client_certificate(GenerateClientCertificateRequest {
            public_key: key.public_pem(),
            common_name: "mesh agent".into(),
            profile: "intermediate".into(),
            dns_names: vec!["agent.mesh.example".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let inter_pem = ca.path("inter.pem");
    std::fs::write(&inter_pem, &inter.pem_certificate).unwrap();
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&inter_pem),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("X509v3 Name Constraints: critical"), "{text}");
    assert!(text.contains("DNS:mesh.example"), "{text}");
    // No e-mail address may be signed, and leaves are for client auth only
    // (the rule's profiles).
    assert!(text.contains("email:hsmca.invalid"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let chain = ca
        .client()
        .await
        .get_ca_certificates(GetCaCertificatesRequest {})
        .await
        .unwrap()
        .into_inner();
    let root = ca.path("root.pem");
    std::fs::write(&root, &chain.ca_cert).unwrap();
    let lint = run(Command::new(common::py_tool("lint_pkix_cert"))
        .args(["lint", "-s", "ERROR"])
        .arg(&inter_pem));
    assert!(
        lint.status.success(),
        "pkilint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );

    // The intermediate's key signs two leaves with openssl: one inside its
    // constraints, one outside.
    let leaf = |name: &str| {
        let k = KeyPair::new(ca.dir.path(), "p256");
        let csr = ca.path(&format!("{name}.csr"));
        std::fs::write(
            &csr,
            k.csr(&format!("/CN={name}"), Some(&format!("DNS:{name}"))),
        )
        .unwrap();
        let ext = ca.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{name}\nbasicConstraints=critical,CA:FALSE\n"),
        )
        .unwrap();
        let cert = ca.path(&format!("{name}.pem"));
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&inter_pem)
                .arg("-CAkey")
                .arg(&key.private)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        );
        run(Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&root)
            .arg("-untrusted")
            .arg(&inter_pem)
            .arg(&cert))
    };
    let inside = leaf("web.mesh.example");
    assert!(
        inside.status.success(),
        "{}",
        String::from_utf8_lossy(&inside.stdout)
    );
    let outside = leaf("web.evil.example");
    assert!(!outside.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&outside.stdout),
        String::from_utf8_lossy(&outside.stderr)
    );
    assert!(said.contains("permitted subtree violation"), "{said}");
    // RFC 5280 constraints cannot say "subdomains only": the apex of
    // `*.mesh.example` is inside them (the README says so).
    assert!(leaf("mesh.example").status.success());
}

#[tokio::test]
async fn audit_verify_names_the_first_bad_record() {
    let mut ca = Ca::new("p256");
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    for i in 0..6 {
        ca.issue_cn(&key, &format!("audited-{i}")).await;
    }
    assert!(ca.stop().success());
    let verify = |dir: &std::path::Path| {
        run(ca
            .hsmca()
            .env("HSMCA_STATE__DIR", dir)
            .args(["audit", "verify", "--config"])
            .arg(ca.config()))
    };
    let state = ca.path("state");
    let ok = verify(&state);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let said = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(said.contains("intact"), "{said}");

    for (what, sql, expect) in [
        (
            "edit",
            "UPDATE audit_log SET entry = replace(entry, 'audited-2', 'audited-X') WHERE seq = 4",
            "record 4 was edited",
        ),
        (
            "delete",
            "DELETE FROM audit_log WHERE seq = 3",
            "records 3 to 3 are missing",
        ),
        (
            "swap",
            "UPDATE audit_log SET seq = -1 WHERE seq = 3; \
             UPDATE audit_log SET seq = 3 WHERE seq = 4; \
             UPDATE audit_log SET seq = 4 WHERE seq = -1",
            "record 3 does not follow record 2",
        ),
    ] {
        let copy = ca.path(&format!("state-{what}"));
        std::fs::create_dir_all(&copy).unwrap();
        let out = if let Some(pg) = common::postgres::PgServer::shared() {
            // The same tampering on a copy of the PostgreSQL database.
            let url = ca
                .env
                .iter()
                .find(|(k, _)| k == "HSMCA_STATE__DATABASE")
                .unwrap()
                .1
                .clone();
            let db = url.split('/').nth(3).unwrap().split('?').next().unwrap();
            let copy_db = format!("{db}_{what}");
            pg.psql(
                "postgres",
                &format!("CREATE DATABASE {copy_db} TEMPLATE {db}"),
            );
            pg.psql(&copy_db, sql);
            run(ca
                .hsmca()
                .env("HSMCA_STATE__DATABASE", pg.url(&copy_db))
                .args(["audit", "verify", "--config"])
                .arg(ca.config()))
        } else {
            // The store is closed: its file (and any WAL) copy as is.
            for f in std::fs::read_dir(&state).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
            }
            let db = rusqlite::Connection::open(copy.join("hsmca.db")).unwrap();
            db.execute_batch(sql).unwrap();
            assert!(db.changes() > 0, "{what}");
            drop(db);
            verify(&copy)
        };
        assert!(!out.status.success(), "{what} went unnoticed");
        let err = stderr(&out);
        assert!(err.contains(expect), "{what}: {err}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_policy_under_load() {
    let mut ca = Ca::new("p256");
    let rule = |extra: &str| {
        format!("[[policy.rules]]\nname = \"root\"\nuids = [0]\ndns = [\"*.a.example\"{extra}]\n")
    };
    ca.set_policy(&rule(""));
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let ask = |name: &str| {
        let (pem, name) = (key.public_pem(), name.to_owned());
        let socket = ca.socket();
        async move {
            let mut c = hsmca::proto::certificate_authority_client::CertificateAuthorityClient::new(
                hsmca::cli::client::connect(&socket).await.unwrap(),
            );
            c.generate_client_certificate(GenerateClientCertificateRequest {
                public_key: pem,
                dns_names: vec![name],
                ..Default::default()
            })
            .await
        }
    };
    assert_eq!(
        ask("x.b.example").await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Eight clients issue allowed names without pause through the reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for n in 0..8 {
        let (stop, done) = (stop.clone(), done.clone());
        let mut c = ca.client().await;
        let pem = key.public_pem();
        load.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c
                    .generate_client_certificate(GenerateClientCertificateRequest {
                        public_key: pem.clone(),
                        dns_names: vec![format!("load-{n}.a.example")],
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e),
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Widen the policy: the next request sees it.
    ca.set_policy(&rule(", \"*.b.example\""));
    ca.signal("HUP");
    let mut granted = false;
    for _ in 0..100 {
        if ask("x.b.example").await.is_ok() {
            granted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(granted, "the reloaded policy never applied:\n{}", ca.log());

    // An invalid config is refused; the running policy stays.
    ca.set_policy("[[policy.rules]]\nname = \"broken\"\nuids = [0]\ndns = [\"a.*.example\"]\n");
    ca.signal("HUP");
    let mut refused = false;
    for _ in 0..100 {
        if ca.log().contains("the new configuration is invalid") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "{}", ca.log());
    assert!(ca.log().contains("policy.rules[0].dns[0]"), "{}", ca.log());
    assert!(ask("y.b.example").await.is_ok());

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let errors = l.await.unwrap();
        assert!(errors.is_empty(), "the load saw errors: {errors:?}");
    }
    assert!(done.load(Ordering::Relaxed) > 0);
    assert!(ca.is_running());
}

#[test]
fn a_bad_rule_stops_start_up_naming_its_key() {
    for (rule, key) in [
        (
            "[[policy.rules]]\nname = \"x\"\nuids = [0]\ndns = [\"a.*.example\"]\n",
            "policy.rules[0].dns[0]",
        ),
        (
            "[[policy.rules]]\nname = \"x\"\nuids = [0]\nips = [\"10.0.0.0/33\"]\n",
            "policy.rules[0].ips[0]",
        ),
        (
            "[[policy.rules]]\nname = \"x\"\nuids = [0]\ndsn = [\"a.example\"]\n",
            "dsn",
        ),
    ] {
        let ca = Ca::new("p256");
        ca.set_policy(rule);
        let out = run(ca.hsmca().args(["serve", "--config"]).arg(ca.config()));
        assert!(!out.status.success(), "{rule}");
        let err = stderr(&out);
        assert!(err.contains(key), "{rule}: {err}");
        assert!(!ca.socket().exists());
    }
}
