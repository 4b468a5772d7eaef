//! The daemon's life: start-up checks, the socket's rules, shutdown that
//! finishes in-flight work, PIN hygiene, and the intermediate-CA set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{os::unix::fs::PermissionsExt, process::Command};

use common::{Ca, KeyPair, run, run_ok};
use hsmca::proto::{GenerateClientCertificateRequest, GetCaCertificatesRequest};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_removes_the_socket() {
    // RSA-3072 signing is slow enough that many requests are in flight.
    let mut ca = Ca::new("rsa3072");
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let client = ca.client().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = client.clone();
        let req = GenerateClientCertificateRequest {
            public_key: key.clone(),
            common_name: format!("in-flight-{i}"),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            c.generate_client_certificate(req).await
        }));
    }
    // Wait until the daemon has answered one, so the rest are in its hands.
    while !tasks.iter().any(|t| t.is_finished()) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    ca.signal("TERM");
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => panic!(
                "an in-flight request was dropped at shutdown: {e:?}\n{}",
                ca.log()
            ),
        }
    }
    assert_eq!(ok, 40);
    let status = ca.stop_after_signal();
    assert!(status.success(), "exit {status}\n{}", ca.log());
    assert!(!ca.socket().exists(), "socket left behind");
    assert!(ca.log().contains("SIGTERM"));
}

#[test]
fn idle_client_does_not_delay_shutdown() {
    let mut ca = Ca::started("p256");
    let idle = std::os::unix::net::UnixStream::connect(ca.socket()).unwrap();
    let started = std::time::Instant::now();
    assert!(ca.stop().success());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop(idle);
}

#[tokio::test]
async fn socket_mode_stale_socket_and_a_second_daemon() {
    let mut ca = Ca::new("p256");
    // A stale socket (no listener) is replaced.
    drop(std::os::unix::net::UnixListener::bind(ca.socket()).unwrap());
    ca.start();
    let mode = std::fs::metadata(ca.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A live socket is not stolen.
    let second = run(ca.hsmca().args(["serve", "--config"]).arg(ca.config()));
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("another process is listening"),
        "{}",
        stderr(&second)
    );
    ca.assert_serves().await;
    assert!(ca.stop().success());

    let mut ca = Ca::with_env("p256", &[("HSMCA_SERVER__SOCKET_MODE", "0600")]);
    ca.start();
    let mode = std::fs::metadata(ca.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn bad_config_fails_fast_naming_the_key() {
    let ca = Ca::new("p256");
    for (k, v, needle) in [
        ("HSMCA_TOKEN__SESSIONS", "0", "token.sessions"),
        ("HSMCA_SERVER__SOCKET_MODE", "rwx", "server.socket_mode"),
        ("HSMCA_CA__KEY_TYPE", "ed25519", "key_type"),
        ("HSMCA_TOKEN__TOKEN_LABEL", "no-such-token", "no-such-token"),
        ("HSMCA_CA__KEY_TYPE", "p384", "p384"),
    ] {
        let out = run(ca
            .hsmca()
            .env(k, v)
            .args(["serve", "--config"])
            .arg(ca.config()));
        assert!(!out.status.success(), "{k}={v} accepted");
        assert!(stderr(&out).contains(needle), "{k}={v}: {}", stderr(&out));
        assert!(!ca.socket().exists());
    }
    let toml = std::fs::read_to_string(ca.config()).unwrap();
    std::fs::write(ca.config(), format!("{toml}\n[extra]\nunknown = 1\n")).unwrap();
    let out = run(ca.hsmca().args(["serve", "--config"]).arg(ca.config()));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("extra"), "{}", stderr(&out));
}

#[tokio::test]
async fn the_pin_never_reaches_a_log_or_an_error() {
    let mut ca = Ca::with_env("p256", &[("HSMCA_LOG__LEVEL", "trace")]);
    let pin = ca.pin();
    ca.start();
    ca.assert_serves().await;
    ca.stop();
    let log = ca.log();
    assert!(log.contains("issued certificate"));
    assert!(!log.contains(&pin), "PIN in the daemon log");

    // A wrong PIN: a clear error, without either PIN in it.
    let wrong = format!("{pin}x");
    let pin_file = ca.path("wrong-pin");
    std::fs::write(&pin_file, &wrong).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(ca
        .hsmca()
        .env("HSMCA_TOKEN__PIN_FILE", &pin_file)
        .args(["serve", "--config"])
        .arg(ca.config()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("PIN was rejected"), "{err}");
    assert!(!err.contains(&pin) && !err.contains(&wrong));

    // A PIN file others can read is refused before it is used.
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(ca
        .hsmca()
        .env("HSMCA_TOKEN__PIN_FILE", &pin_file)
        .args(["serve", "--config"])
        .arg(ca.config()));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));

    // The PIN from the environment works when no file is configured.
    let mut toml = std::fs::read_to_string(ca.config()).unwrap();
    toml = toml
        .lines()
        .filter(|l| !l.trim_start().starts_with("pin_file"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(ca.config(), toml).unwrap();
    ca.env.push(("HSMCA_PIN".into(), pin.clone()));
    let mut with_env = Command::new(common::HSMCA);
    with_env.envs(ca.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let child = with_env
        .args(["serve", "--config"])
        .arg(ca.config())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(ca.socket()).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon with HSMCA_PIN did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run_ok(
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string()),
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&pin));
}

/// An external root (made with openssl) signs the CSR from `init --csr`;
/// after `init --import-chain` the daemon issues as an intermediate.
#[tokio::test]
async fn intermediate_under_an_external_root() {
    let mut ca = Ca::token_only("p384", &[]);
    let csr = ca.path("ca.csr");
    run_ok(
        ca.hsmca()
            .args(["init", "--config"])
            .arg(ca.config())
            .arg("--csr")
            .arg(&csr),
    );
    assert!(!ca.path("ca.pem").exists());
    let d = ca.dir.path().to_path_buf();
    let d = d.as_path();
    run_ok(Command::new("openssl").current_dir(d).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=External Root",
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "3650",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    std::fs::write(
        d.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    run_ok(Command::new("openssl").current_dir(d).args([
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-out",
        "inter.pem",
        "-days",
        "365",
        "-extfile",
        "ext.cnf",
    ]));
    let inter = std::fs::read_to_string(d.join("inter.pem")).unwrap();
    let root = std::fs::read_to_string(d.join("root.pem")).unwrap();

    // A chain without its root, or for another key, is refused.
    std::fs::write(d.join("no-root.pem"), &inter).unwrap();
    let out = run(ca
        .hsmca()
        .args(["init", "--config"])
        .arg(ca.config())
        .arg("--import-chain")
        .arg(d.join("no-root.pem")));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("root"), "{}", stderr(&out));
    std::fs::write(d.join("root-only.pem"), format!("{root}{root}")).unwrap();
    let out = run(ca
        .hsmca()
        .args(["init", "--config"])
        .arg(ca.config())
        .arg("--import-chain")
        .arg(d.join("root-only.pem")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not the token's CA key"),
        "{}",
        stderr(&out)
    );

    std::fs::write(d.join("chain.pem"), format!("{inter}{root}")).unwrap();
    run_ok(
        ca.hsmca()
            .args(["init", "--config"])
            .arg(ca.config())
            .arg("--import-chain")
            .arg(d.join("chain.pem")),
    );
    ca.start();
    let mut client = ca.client().await;
    let cas = client
        .get_ca_certificates(GetCaCertificatesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cas.pem_certificate_chain.len(), 2);
    assert_eq!(cas.ca_cert.trim(), root.trim());
    let key = KeyPair::new(d, "p256");
    let r = client
        .generate_client_certificate(GenerateClientCertificateRequest {
            public_key: key.public_pem(),
            common_name: "under-intermediate".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.pem_certificate_chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(r.pem_certificate_chain[1].trim(), inter.trim());
    assert_eq!(r.ca_cert.trim(), root.trim());
    ca.check_with_openssl(
        &r.pem_certificate,
        &r.pem_certificate_chain[1..],
        &r.ca_cert,
    );
}

#[tokio::test]
async fn setup_sh_is_idempotent_for_an_existing_dir() {
    let mut ca = Ca::new("p256");
    let snapshot = |ca: &Ca| {
        ["pin", "so-pin", "hsmca.toml", "softhsm2.conf", "ca.pem"]
            .map(|f| std::fs::read(ca.path(f)).unwrap())
    };
    let before = snapshot(&ca);
    run_ok(
        Command::new("bash")
            .arg(common::repo().join("softhsm-setup/setup.sh"))
            .arg(ca.dir.path())
            .stdin(std::process::Stdio::null()),
    );
    assert!(
        before == snapshot(&ca),
        "setup.sh changed an existing directory"
    );
    // The token and its CA key are untouched: the daemon starts and issues.
    ca.start();
    ca.assert_serves().await;
}
