//! Envoy SDS on the workload socket, end to end: a real daemon on a real
//! SoftHSM2 token, and Envoy's side played by Envoy's own generated protos
//! (PyPI xds-protos) over grpcio (`tests/sds_client.py`). The secrets it
//! is served are checked with openssl: the key is the leaf's, the chain
//! verifies against the ROOTCA secret, the leaf carries the caller's
//! SPIFFE ID.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Ca, python, repo, run, run_ok};
use hsmca::{cli::status::scrape, metrics::summary::Scrape};

const TRUST_DOMAIN: &str = "hsmca.test";

/// Turns the workload endpoint on with one entry for uid 0 (the tests),
/// replacing whatever `[workload]` section the config had.
fn workload_config(ca: &Ca, ttl: &str) {
    let text = std::fs::read_to_string(ca.config()).unwrap();
    let mut kept = String::new();
    let mut in_workload = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_workload = t.starts_with("[workload") || t.starts_with("[[workload");
        }
        if !in_workload {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    // The tables go last, after every top-level key of the file.
    kept.push_str(&format!(
        "\n[workload]\nsocket = \"{}\"\ntrust_domain = \"{TRUST_DOMAIN}\"\nmin_ttl = \"2s\"\n\n\
         [[workload.entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/sds/{{user}}\"\nuid = 0\n\
         ttl = \"{ttl}\"\n",
        workload_socket(ca).display()
    ));
    std::fs::write(ca.config(), kept).unwrap();
}

fn workload_socket(ca: &Ca) -> PathBuf {
    ca.path("workload.sock")
}

/// A daemon serving the workload socket, its SVIDs living `ttl`.
fn daemon(ttl: &str) -> Ca {
    let mut ca = Ca::new("p256");
    workload_config(&ca, ttl);
    ca.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(workload_socket(&ca)).is_err() {
        assert!(
            Instant::now() < deadline,
            "no workload socket:\n{}",
            ca.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ca
}

fn client_command(ca: &Ca, scenario: &str, out: &Path) -> Command {
    std::fs::create_dir_all(out).unwrap();
    let mut c = Command::new(python());
    c.arg(repo().join("tests/sds_client.py"))
        .arg(scenario)
        .arg(workload_socket(ca))
        .arg(out);
    c
}

/// Runs a scenario of the client; its JSON summary.
fn client(ca: &Ca, scenario: &str, out: &Path) -> serde_json::Value {
    let o = run(&mut client_command(ca, scenario, out));
    assert!(
        o.status.success(),
        "sds_client.py {scenario} failed: {}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        ca.log()
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn openssl(args: &[&str]) -> String {
    String::from_utf8(run_ok(Command::new("openssl").args(args)).stdout).unwrap()
}

/// The PEM certificates of a file, in order.
fn split_pem(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .map(str::trim)
        .filter(|p| p.starts_with("-----BEGIN CERTIFICATE-----"))
        .map(|p| format!("{p}\n"))
        .collect()
}

/// The served tls_certificate `name` and validation_context `ca_name` (as
/// files in `out`): the key is the leaf's, the chain verifies against the
/// trusted CA with -x509_strict, the leaf's URI SAN is `spiffe_id`.
fn check_served(out: &Path, name: &str, ca_name: &str, spiffe_id: &str) {
    let chain = out.join(format!("{name}.chain.pem"));
    let key = out.join(format!("{name}.key.pem"));
    let root = out.join(format!("{ca_name}.ca.pem"));
    let certs = split_pem(&chain);
    assert!(!certs.is_empty(), "no certificate in {}", chain.display());
    let leaf = out.join(format!("{name}.leaf.pem"));
    let rest = out.join(format!("{name}.untrusted.pem"));
    std::fs::write(&leaf, &certs[0]).unwrap();
    std::fs::write(&rest, certs[1..].concat()).unwrap();

    let leaf_s = leaf.to_str().unwrap();
    let cert_pub = openssl(&["x509", "-in", leaf_s, "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(cert_pub, key_pub, "the served key is not the leaf's");

    let mut verify = vec!["verify", "-x509_strict", "-CAfile", root.to_str().unwrap()];
    if certs.len() > 1 {
        verify.extend(["-untrusted", rest.to_str().unwrap()]);
    }
    verify.push(leaf_s);
    let v = openssl(&verify);
    assert!(v.contains(": OK"), "openssl verify: {v}");

    let san = openssl(&["x509", "-in", leaf_s, "-noout", "-ext", "subjectAltName"]);
    assert!(san.contains(&format!("URI:{spiffe_id}")), "{san}");
}

fn sds_streams(s: &Scrape) -> f64 {
    s.select("hsmca_workload_streams", &[("api", "sds")])
        .map(|x| x.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_protocol_and_refusals() {
    let ca = daemon("1h");
    let out = ca.path("sds-out");
    let seen = client(&ca, "protocol", &out);
    let id = format!("spiffe://{TRUST_DOMAIN}/sds/root");

    // request -> response -> ACK: answered once, then silence
    assert_eq!(
        seen["first"]["names"],
        serde_json::json!(["ROOTCA", "default"])
    );
    let version = seen["first"]["version"].as_str().unwrap();
    assert!(!version.is_empty());
    assert!(!seen["first"]["nonce"].as_str().unwrap().is_empty());
    assert_eq!(seen["ack_silent"], true);
    assert_eq!(seen["nack_silent"], true);
    assert_eq!(seen["stale_ignored"], true);
    assert_eq!(seen["names_change"]["version"], version);
    assert_ne!(seen["names_change"]["nonce"], seen["first"]["nonce"]);
    // empty names: the SVID under its SPIFFE ID and the bundle under the
    // trust domain's ID
    assert_eq!(
        seen["all"],
        serde_json::json!({
            id.clone(): "tls_certificate",
            format!("spiffe://{TRUST_DOMAIN}"): "validation_context",
        })
    );
    assert_eq!(seen["fetch"]["version"], version);
    // the refusals, each naming what was refused
    assert!(
        seen["unknown_stream"]
            .as_str()
            .unwrap()
            .contains(&format!("spiffe://{TRUST_DOMAIN}/not/mine")),
        "{seen}"
    );
    assert!(
        seen["unknown_fetch"]
            .as_str()
            .unwrap()
            .contains("\"rootca\"")
    );
    assert!(seen["delta"].is_string());
    assert_eq!(seen["served_after"].as_array().unwrap().len(), 9, "{seen}");

    // openssl on what was served
    check_served(&out, "default", "ROOTCA", &id);
    let file = id.replace("spiffe://", "").replace('/', "_");
    check_served(&out, &file, TRUST_DOMAIN, &id);
    assert_eq!(
        std::fs::read(out.join("ROOTCA.ca.pem")).unwrap(),
        std::fs::read(out.join(format!("{TRUST_DOMAIN}.ca.pem"))).unwrap()
    );

    // the NACK was logged with its detail; no key in the log
    let log = ca.log();
    assert!(log.contains("rejected by the test"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    // the API socket still serves too
    ca.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_pushes_a_new_version_to_every_stream() {
    // Rotated at half its lifetime (± 10 %): about 3 s.
    let ca = daemon("6s");
    let out = ca.path("sds-out");
    let seen = client(&ca, "rotation", &out);
    let versions = seen["versions"].as_array().unwrap();
    assert_ne!(versions[0], versions[1], "{seen}");
    let nonces = seen["nonces"].as_array().unwrap();
    let distinct: std::collections::BTreeSet<_> = nonces.iter().map(|n| n.to_string()).collect();
    assert_eq!(distinct.len(), nonces.len(), "a nonce was reused: {seen}");
    // The pushed SVID's key is its leaf's; the chain is a new certificate.
    let leaf = |f: &str| split_pem(&out.join(f))[0].clone();
    assert_ne!(leaf("before.chain.pem"), leaf("default.chain.pem"));
    let pushed = out.join("pushed.leaf.pem");
    std::fs::write(&pushed, leaf("default.chain.pem")).unwrap();
    let cert_pub = openssl(&["x509", "-in", pushed.to_str().unwrap(), "-noout", "-pubkey"]);
    let key = out.join("default.key.pem");
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(cert_pub, key_pub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_counted() {
    let ca = daemon("1h");
    let metrics = ca.path("hsmca-metrics.sock");
    let before = Scrape::parse(&scrape(&metrics).await.unwrap());
    assert_eq!(sds_streams(&before), 0.0);
    let out = ca.path("sds-out");
    let mut child = client_command(&ca, "hold", &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "holding 3", "{}", ca.log());
    let during = Scrape::parse(&scrape(&metrics).await.unwrap());
    assert_eq!(sds_streams(&during), 3.0);
    let status = run_ok(ca.hsmca().arg("status").arg("--config").arg(ca.config()));
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(text.contains("3 streams open  (sds 3)"), "{text}");
    child.stdin.take().unwrap().write_all(b"done\n").unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = Scrape::parse(&scrape(&metrics).await.unwrap());
        if sds_streams(&after) == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "SDS streams still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_an_entry_is_denied() {
    let ca = daemon("1h");
    // The client runs as nobody, for whom no entry exists; the socket is
    // connectable by all, and so are the venv and the test's files.
    use std::os::unix::fs::PermissionsExt;
    let out = ca.path("sds-out-nobody");
    std::fs::create_dir_all(&out).unwrap();
    for (dir, mode) in [(ca.dir.path(), 0o755), (out.as_path(), 0o777)] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let c = client_command(&ca, "denied", &out);
    let program = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut nobody = Command::new("setpriv");
    nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .args(args);
    let o = run(&mut nobody);
    assert!(
        o.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        ca.log()
    );
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        seen["stream"].is_string() && seen["fetch"].is_string(),
        "{seen}"
    );
    ca.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_svid_is_replaced_on_the_stream() {
    let mut ca = Ca::new("p256");
    ca.make_root_admin();
    workload_config(&ca, "1h");
    ca.start();
    let out = ca.path("sds-out");
    let mut child = client_command(&ca, "push", &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut version = String::new();
    reader.read_line(&mut version).unwrap();
    assert!(!version.trim().is_empty(), "{}", ca.log());

    let id = format!("spiffe://{TRUST_DOMAIN}/sds/root");
    let list = run_ok(
        ca.hsmca()
            .args(["list", "--json", "--tag"])
            .arg(format!("hsmca:spiffe-id={id}"))
            .arg("--socket")
            .arg(ca.socket()),
    );
    let records: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let records = records["client_certificates"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = records[0]["certificate_id"].as_str().unwrap();
    run_ok(
        ca.hsmca()
            .args(["revoke", record, "--reason", "keyCompromise", "--socket"])
            .arg(ca.socket()),
    );
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}\n{}", ca.log());
    let seen: serde_json::Value = serde_json::from_str(&rest).unwrap();
    let versions = seen["versions"].as_array().unwrap();
    assert_eq!(versions[0], version.trim());
    assert!(versions.len() >= 2, "{seen}");
    let leaf = |f: &str| split_pem(&out.join(f))[0].clone();
    assert_ne!(leaf("before.chain.pem"), leaf("default.chain.pem"));
    let serial = |f: &str| {
        let p = out.join(format!("{f}.serial.pem"));
        std::fs::write(&p, leaf(f)).unwrap();
        openssl(&["x509", "-in", p.to_str().unwrap(), "-noout", "-serial"])
    };
    let old = serial("before.chain.pem");
    assert!(
        old.to_lowercase()
            .contains(&records[0]["serial_number"].as_str().unwrap().to_lowercase()),
        "{old} vs {records:?}"
    );
    assert_ne!(old, serial("default.chain.pem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_stops_cleanly_with_sds_streams_open() {
    let mut ca = daemon("1h");
    let out = ca.path("sds-out");
    let mut child = client_command(&ca, "hold", &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "holding 3", "{}", ca.log());
    let status = ca.stop();
    assert!(status.success(), "{status}\n{}", ca.log());
    assert!(
        !workload_socket(&ca).exists(),
        "the workload socket was left behind"
    );
    child.stdin.take().unwrap().write_all(b"done\n").unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let _ = child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_entry_ends_the_stream_with_permission_denied() {
    let ca = daemon("1h");
    let out = ca.path("sds-out");
    let mut child = client_command(&ca, "dropped", &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut version = String::new();
    reader.read_line(&mut version).unwrap();
    assert!(!version.trim().is_empty(), "{}", ca.log());
    // The entry now selects another uid; SIGHUP reloads it.
    let text = std::fs::read_to_string(ca.config()).unwrap();
    std::fs::write(ca.config(), text.replace("\nuid = 0\n", "\nuid = 12345\n")).unwrap();
    ca.signal("HUP");
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}\n{}", ca.log());
    let seen: serde_json::Value = serde_json::from_str(&rest).unwrap();
    assert!(
        seen["stream"]
            .as_str()
            .unwrap()
            .contains("no registration entry"),
        "{seen}"
    );
    ca.assert_serves().await;
}
