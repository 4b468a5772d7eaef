//! The SPIFFE workload endpoint on a real daemon, with real clients:
//! py-spiffe (tests/workload_client.py) as the workload, OpenSSL and
//! pkilint checking the SVIDs, Python's ssl doing mutual TLS with them,
//! clients run as other uids through setpriv, and the daemon's metrics
//! counting signatures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Ca, python, repo, run_ok};
use hsmca::{
    cli::status::scrape,
    metrics::summary::Scrape,
    proto::workload::{X509svidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient},
};
use serde_json::Value;
use tokio_stream::StreamExt;

/// The part of setup.sh's config that the tests replace.
const WORKLOAD_SECTION: &str = "\n# The SPIFFE Workload API on a second socket";

/// A CA whose config has `toml` as its workload section instead of the
/// development one (`{DIR}` in it: the CA's directory).
fn with_workload(toml: &str) -> Ca {
    let ca = Ca::new("p256");
    set_workload(&ca, toml);
    ca
}

fn set_workload(ca: &Ca, toml: &str) {
    let text = std::fs::read_to_string(ca.config()).unwrap();
    let cut = text
        .find(WORKLOAD_SECTION)
        .expect("setup.sh's workload section");
    let toml = toml.replace("{DIR}", ca.dir.path().to_str().unwrap());
    std::fs::write(
        ca.config(),
        format!("{}{WORKLOAD_SECTION}\n{toml}\n", &text[..cut]),
    )
    .unwrap();
}

/// tests/workload_client.py with `args`, as `uid` when given; its JSON.
fn client_as(uid: Option<u32>, socket: &Path, args: &[&str]) -> Value {
    let script = repo().join("tests/workload_client.py");
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(python());
            c
        }
        None => Command::new(python()),
    };
    cmd.arg(script).arg(socket).args(args);
    let out = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn client(socket: &Path, args: &[&str]) -> Value {
    client_as(None, socket, args)
}

async fn metric(ca: &Ca, name: &str) -> f64 {
    let text = scrape(&ca.path("hsmca-metrics.sock")).await.unwrap();
    Scrape::parse(&text).sum(name)
}

fn openssl_text(pem: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(pem),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory any uid can write (for clients run as other users).
fn shared_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// The records of SVIDs for `id`, as `hsmca list --json` shows them.
fn records_of(ca: &Ca, id: &str) -> Vec<Value> {
    let out = run_ok(
        ca.hsmca()
            .args(["list", "--json", "--tag"])
            .arg(format!("hsmca:spiffe-id={id}"))
            .arg("--socket")
            .arg(ca.socket()),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["client_certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn py_spiffe_gets_an_svid_that_meets_the_x509_svid_profile() {
    let mut ca = Ca::started("p256");
    let sock = ca.path("workload.sock");
    let out = ca.path("svid");
    std::fs::create_dir_all(&out).unwrap();
    let got = client(&sock, &["fetch", out.to_str().unwrap()]);
    assert_eq!(got["spiffe_id"], "spiffe://hsmca.test/user/root", "{got}");
    assert_eq!(got["trust_domains"], serde_json::json!(["hsmca.test"]));
    assert_eq!(got["crls"], 1, "the CRL rides along");

    // OpenSSL: the chain verifies strictly, also against the CRL.
    let svid = out.join("svid.pem");
    let bundle = out.join("bundle.pem");
    run_ok(
        Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(&bundle)
            .arg(&svid),
    );
    run_ok(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-in"])
            .arg(out.join("crl.der"))
            .arg("-out")
            .arg(out.join("crl.pem")),
    );
    run_ok(
        Command::new("openssl")
            .args(["verify", "-x509_strict", "-crl_check", "-CRLfile"])
            .arg(out.join("crl.pem"))
            .arg("-CAfile")
            .arg(&bundle)
            .arg(&svid),
    );
    // X509-SVID.md §4 and §5, field by field.
    let text = openssl_text(&svid);
    for want in [
        "X509v3 Basic Constraints: critical\n                CA:FALSE",
        "X509v3 Key Usage: critical\n                Digital Signature\n",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "X509v3 Subject Alternative Name: critical\n                URI:spiffe://hsmca.test/user/root\n",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert!(!text.contains("Certificate Sign") && !text.contains("CRL Sign"));
    let subject = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&svid),
    );
    assert_eq!(String::from_utf8_lossy(&subject.stdout).trim(), "subject=");

    // pkilint: nothing but its known false alarm on spiffe: URIs.
    let lint = run_ok(
        Command::new(python())
            .arg(repo().join("tests/pkilint_batch.py"))
            .arg(format!("cert={}", svid.display())),
    );
    let lint: Value = serde_json::from_slice(&lint.stdout).unwrap();
    let findings = lint[svid.to_str().unwrap()]["findings"].as_array().unwrap();
    for f in findings {
        assert_eq!(f[1], "pkix.invalid_uri_syntax", "{f}");
        assert!(f[3].as_str().unwrap().contains("spiffe://"), "{f}");
    }

    // Bad calls get the standard's codes; the daemon still serves.
    let no_header = client(&sock, &["raw", "--no-header"]);
    assert_eq!(no_header["code"], "INVALID_ARGUMENT");
    assert_eq!(no_header["message"], "security header missing from request");
    let no_header = client(&sock, &["bundles-raw", "--no-header"]);
    assert_eq!(no_header["code"], "INVALID_ARGUMENT");
    // The JWT methods are served (tests/workload_jwt.rs tests them).
    assert_eq!(client(&sock, &["jwt"])["code"], "OK");
    assert_eq!(client(&sock, &["wit"])["code"], "UNIMPLEMENTED");
    let again = client(&sock, &["raw"]);
    assert_eq!(again["code"], "OK");
    assert_eq!(
        again["result"],
        serde_json::json!(["spiffe://hsmca.test/user/root"])
    );

    // One SVID for the identity, however many calls: an ordinary record.
    let records = records_of(&ca, "spiffe://hsmca.test/user/root");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(metric(&ca, "hsmca_workload_svids_issued_total").await, 1.0);

    // The CLI's fetch writes the same identity, the key 0600.
    let cli_out = ca.path("cli");
    run_ok(
        ca.hsmca()
            .args(["workload", "fetch", "--socket"])
            .arg(&sock)
            .arg("--out-dir")
            .arg(&cli_out),
    );
    let mode = std::fs::metadata(cli_out.join("svid.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let json = run_ok(
        ca.hsmca()
            .args(["workload", "fetch", "--json", "--socket"])
            .arg(&sock),
    );
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json[0]["spiffe_id"], "spiffe://hsmca.test/user/root");
    assert!(!json.to_string().contains("PRIVATE KEY"));
    let entries = run_ok(
        ca.hsmca()
            .args(["workload", "entries", "--config"])
            .arg(ca.config()),
    );
    let entries = String::from_utf8_lossy(&entries.stdout);
    assert!(
        entries.contains("[0] every caller -> spiffe://hsmca.test/user/{user} ttl 1h key p256")
            && entries.contains("root (uid 0): spiffe://hsmca.test/user/root"),
        "{entries}"
    );

    // No private key in the state directory, the store or the log.
    let key_pem = std::fs::read_to_string(out.join("svid.key")).unwrap();
    let key_b64: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let key_der = base64_decode(&key_b64);
    ca.stop();
    // The SVID's signature is in the audit log like every other.
    let audit = run_ok(
        ca.hsmca()
            .args(["audit", "list", "--json", "--config"])
            .arg(ca.config()),
    );
    let audit = String::from_utf8_lossy(&audit.stdout);
    let serial = records[0]["serial_number"].as_str().unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"operation\":\"workload svid\"")
                && l.contains("URI:spiffe://hsmca.test/user/root")
                && l.contains(serial)
                && l.contains("\"profile\":\"svid\"")),
        "{audit}"
    );
    let mut looked = 0;
    for path in files_under(&ca.path("state"))
        .into_iter()
        .chain([ca.path("daemon.log")])
    {
        let bytes = std::fs::read(&path).unwrap();
        looked += 1;
        assert!(
            !contains(&bytes, b"PRIVATE KEY"),
            "{} holds a PEM private key",
            path.display()
        );
        assert!(
            !contains(&bytes, &key_der) && !contains(&bytes, key_b64.as_bytes()),
            "{} holds the workload key",
            path.display()
        );
    }
    assert!(looked >= 2);
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test]
async fn an_x509_source_sees_rotations_at_half_life() {
    let mut ca = with_workload(
        r#"[workload]
socket = "{DIR}/workload.sock"
trust_domain = "hsmca.test"
min_ttl = "2s"

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/user/{user}"
ttl = "4s"
"#,
    );
    ca.start();
    let sock = ca.path("workload.sock");
    let started = Instant::now();
    // A 4 s SVID is replaced after 2 s ± 0.4 s: three within 15 s.
    let got = client(&sock, &["rotate", "3", "15"]);
    let serials = got["serials"].as_array().unwrap();
    assert_eq!(serials.len(), 3, "{got}");
    assert!(started.elapsed() >= Duration::from_millis(3200));
    let issued = metric(&ca, "hsmca_workload_svids_issued_total").await;
    let rotated = metric(&ca, "hsmca_workload_svids_rotated_total").await;
    assert!(
        issued >= 3.0 && rotated == issued - 1.0,
        "{issued} {rotated}"
    );

    // `hsmca workload fetch --watch` rewrites its files at each rotation.
    let dir = ca.path("watched");
    let mut watch = ca
        .hsmca()
        .args(["workload", "fetch", "--watch", "--socket"])
        .arg(&sock)
        .arg("--out-dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 2 {
        if let Ok(pem) = std::fs::read(dir.join("svid.pem")) {
            seen.insert(pem);
        }
        assert!(
            Instant::now() < deadline,
            "--watch wrote {} SVIDs",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
}

#[tokio::test]
async fn uids_get_their_own_entries_and_lose_them_on_reload() {
    let socket_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(socket_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = socket_dir.path().join("workload.sock");
    let entries = |with_nobody: bool| {
        let nobody = if with_nobody {
            "[[workload.entries]]\nspiffe_id = \"spiffe://hsmca.test/nobody\"\nuid = 65534\n"
        } else {
            ""
        };
        format!(
            r#"[workload]
socket = "{}"
trust_domain = "hsmca.test"

{nobody}
[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/daemon"
uid = 1

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/group/daemon"
group = "daemon"
hint = "{hint}"
"#,
            sock.display(),
            hint = if with_nobody {
                "second"
            } else {
                "second, changed"
            },
        )
    };
    let mut ca = with_workload(&entries(true));
    ca.start();
    let nobody = client_as(Some(65534), &sock, &["raw"]);
    assert_eq!(nobody["code"], "OK", "{nobody}");
    assert_eq!(
        nobody["result"],
        serde_json::json!(["spiffe://hsmca.test/nobody"])
    );
    let daemon = client_as(Some(1), &sock, &["raw"]);
    assert_eq!(
        daemon["result"],
        serde_json::json!([
            "spiffe://hsmca.test/daemon",
            "spiffe://hsmca.test/group/daemon"
        ]),
        "several entries, the first is the default"
    );
    for uid in [Some(2), None] {
        let none = client_as(uid, &sock, &["raw"]);
        assert_eq!(none["code"], "PERMISSION_DENIED", "{uid:?}: {none}");
        let none = client_as(uid, &sock, &["bundles-raw"]);
        assert_eq!(none["code"], "PERMISSION_DENIED", "{uid:?}: {none}");
    }

    // nobody holds a stream open; a reload removes its entry.
    let script = repo().join("tests/workload_client.py");
    let mut hold = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(python())
        .arg(script)
        .arg(&sock)
        .args(["hold", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(hold.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    set_workload(&ca, &entries(false));
    ca.signal("HUP");
    let end: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(end["code"], "PERMISSION_DENIED", "{end}");
    hold.wait().unwrap();
    assert_eq!(
        client_as(Some(65534), &sock, &["raw"])["code"],
        "PERMISSION_DENIED"
    );
    // A changed entry gives a new SVID; an unchanged one keeps its own.
    let hints = client_as(Some(1), &sock, &["hints"]);
    assert_eq!(
        hints["result"],
        serde_json::json!([
            ["spiffe://hsmca.test/daemon", ""],
            ["spiffe://hsmca.test/group/daemon", "second, changed"]
        ]),
        "{hints}"
    );
    assert!(metric(&ca, "hsmca_workload_denied_total").await >= 5.0);
}

#[tokio::test]
async fn mutual_tls_with_svids_and_a_revoked_svid_is_refused() {
    let socket_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(socket_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = socket_dir.path().join("workload.sock");
    let mut ca = with_workload(&format!(
        r#"[workload]
socket = "{}"
trust_domain = "hsmca.test"

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/user/{{user}}"
"#,
        sock.display()
    ));
    ca.start();
    let server = shared_dir(socket_dir.path(), "server");
    let client_dir = ca.path("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    let srv = client_as(Some(65534), &sock, &["fetch", server.to_str().unwrap()]);
    assert_eq!(srv["spiffe_id"], "spiffe://hsmca.test/user/nobody");
    let cli = client(&sock, &["fetch", client_dir.to_str().unwrap()]);
    assert_eq!(cli["spiffe_id"], "spiffe://hsmca.test/user/root");
    let tls = client(
        &sock,
        &[
            "mtls",
            server.to_str().unwrap(),
            client_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(tls["ok"], true, "{tls}");
    assert_eq!(
        tls["server_saw"],
        serde_json::json!(["spiffe://hsmca.test/user/root"])
    );
    assert_eq!(
        tls["client_saw"],
        serde_json::json!(["spiffe://hsmca.test/user/nobody"])
    );

    // Revoke root's SVID: a new one is pushed at once, and the CRL the
    // Workload API hands out makes a CRL-checking peer refuse the old one.
    let old = cli["serial"].as_str().unwrap().to_owned();
    let records = records_of(&ca, "spiffe://hsmca.test/user/root");
    assert_eq!(records.len(), 1, "{records:?}");
    let id = records[0]["certificate_id"].as_str().unwrap();
    let old_serial = records[0]["serial_number"].as_str().unwrap().to_owned();
    run_ok(
        ca.hsmca()
            .args(["revoke", id, "--reason", "keyCompromise", "--socket"])
            .arg(ca.socket()),
    );
    let fresh = ca.path("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let now = loop {
        let now = client(&sock, &["fetch", fresh.to_str().unwrap()]);
        if now["serial"] != old.as_str() {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked SVID was not replaced"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(now["spiffe_id"], "spiffe://hsmca.test/user/root");
    run_ok(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-in"])
            .arg(fresh.join("crl.der"))
            .arg("-out")
            .arg(fresh.join("crl.pem")),
    );
    let crl_text = run_ok(
        Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(fresh.join("crl.pem")),
    );
    assert!(
        String::from_utf8_lossy(&crl_text.stdout)
            .to_lowercase()
            .contains(&format!("serial number: {old_serial}")),
        "the revoked serial is on the CRL"
    );
    let crl = fresh.join("crl.pem");
    let refused = client(
        &sock,
        &[
            "mtls",
            server.to_str().unwrap(),
            client_dir.to_str().unwrap(),
            crl.to_str().unwrap(),
        ],
    );
    assert_eq!(refused["ok"], false, "{refused}");
    let accepted = client(
        &sock,
        &[
            "mtls",
            server.to_str().unwrap(),
            fresh.to_str().unwrap(),
            crl.to_str().unwrap(),
        ],
    );
    assert_eq!(accepted["ok"], true, "{accepted}");
    assert!(metric(&ca, "hsmca_workload_svids_rotated_total").await >= 1.0);
}

async fn workload_client(sock: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(hsmca::client::connect(sock).await.unwrap())
}

fn with_header() -> tonic::Request<X509svidRequest> {
    let mut r = tonic::Request::new(X509svidRequest {});
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_cost_one_signature_per_rotation_and_no_memory() {
    let mut ca = with_workload(
        r#"[workload]
socket = "{DIR}/workload.sock"
trust_domain = "hsmca.test"
min_ttl = "2s"

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/user/{user}"
ttl = "24s"
"#,
    );
    ca.start();
    let sock = ca.path("workload.sock");
    // 1,000 streams of one identity over 8 connections.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let c = workload_client(&sock).await;
        for _ in 0..125 {
            let mut c = c.clone();
            streams.push(tokio::spawn(async move {
                let mut s = c.fetch_x509svid(with_header()).await.unwrap().into_inner();
                let first = s.next().await.unwrap().unwrap();
                let second = s.next().await.unwrap().unwrap();
                (
                    first.svids[0].x509_svid.clone(),
                    second.svids[0].x509_svid.clone(),
                    s,
                )
            }));
        }
    }
    // Each stream's first SVID, then the rotated one (after 12 s ± 2.4 s).
    let mut firsts = std::collections::HashSet::new();
    let mut seconds = std::collections::HashSet::new();
    let mut held = Vec::new();
    for s in streams {
        let (a, b, stream) = s.await.unwrap();
        firsts.insert(a);
        seconds.insert(b);
        held.push(stream);
    }
    assert_eq!(firsts.len(), 1, "one SVID for every stream");
    assert_eq!(seconds.len(), 1, "one rotated SVID for every stream");
    assert!(firsts.is_disjoint(&seconds));
    assert_eq!(metric(&ca, "hsmca_workload_svids_issued_total").await, 2.0);
    assert_eq!(metric(&ca, "hsmca_workload_streams").await, 1000.0);
    drop(held);

    // 10,000 streams opened, read and dropped: memory stays flat.
    let pid = ca.pid();
    let wave = |n: usize| {
        let sock = sock.clone();
        async move {
            let c = workload_client(&sock).await;
            let mut tasks = Vec::new();
            for _ in 0..n {
                let mut c = c.clone();
                tasks.push(tokio::spawn(async move {
                    let mut s = c.fetch_x509svid(with_header()).await.unwrap().into_inner();
                    s.next().await.unwrap().unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    for _ in 0..4 {
        wave(250).await;
    }
    let after_1k = rss_kib(pid);
    for _ in 0..36 {
        wave(250).await;
    }
    let after_10k = rss_kib(pid);
    eprintln!("daemon RSS after 1,000 streams: {after_1k} KiB; after 10,000: {after_10k} KiB");
    assert!(
        after_10k < after_1k + 16 * 1024,
        "RSS grew from {after_1k} KiB to {after_10k} KiB"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&ca, "hsmca_workload_streams").await != 0.0 {
        assert!(Instant::now() < deadline, "streams still counted as open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection whose `connect()` was made by a process that has exited
/// (and been reaped) before the call is sent: SO_PEERCRED names a dead PID.
async fn connection_of_an_exited_process(sock: &Path) -> tonic::transport::Channel {
    use rustix::net::{AddressFamily, SocketType, socket};
    let fd = socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
    // The child inherits the descriptor, connects it, and exits.
    let flags = rustix::io::fcntl_getfd(&fd).unwrap();
    rustix::io::fcntl_setfd(&fd, flags - rustix::io::FdFlags::CLOEXEC).unwrap();
    let n = std::os::fd::AsRawFd::as_raw_fd(&fd);
    run_ok(Command::new(python()).arg("-c").arg(format!(
        "import socket; s = socket.socket(fileno={n}); s.connect({:?}); s.detach()",
        sock.to_str().unwrap()
    )));
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).unwrap();
    let stream = std::sync::Mutex::new(Some(tokio::net::UnixStream::from_std(std_stream).unwrap()));
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let s = stream.lock().unwrap().take();
            async move {
                s.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("used once"))
            }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_caller_that_exited_gets_nothing() {
    let ca = Ca::started("p256");
    let sock = ca.path("workload.sock");
    let mut c = SpiffeWorkloadApiClient::new(connection_of_an_exited_process(&sock).await);
    let err = c.fetch_x509svid(with_header()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("has exited"), "{err:?}");
    assert_eq!(metric(&ca, "hsmca_workload_svids_issued_total").await, 0.0);
    assert_eq!(
        metric(&ca, "hsmca_workload_attestation_refusals_total").await,
        1.0
    );
    // A live caller still gets its SVID.
    assert_eq!(client(&sock, &["raw"])["code"], "OK");
}

fn plan(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_token_outage_keeps_the_current_svid_and_signing_is_retried() {
    let mut ca = with_workload(
        r#"[workload]
socket = "{DIR}/workload.sock"
trust_domain = "hsmca.test"
min_ttl = "2s"
retry_after = "200ms"

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/user/{user}"
ttl = "6s"
"#,
    );
    let control = ca.path("faults");
    plan(&control, "# none\n");
    ca.env
        .push(("HSMCA_TEST_FAULTS".into(), control.display().to_string()));
    ca.start();
    let sock = ca.path("workload.sock");

    // The token is away before the first SVID: UNAVAILABLE, clients retry.
    // (Until the test lifts it: a time window could pass unseen while a
    // client starts on a loaded machine.)
    plan(&control, "# 1\nfault * DEVICE_ERROR for=1h\n");
    std::thread::sleep(Duration::from_millis(200));
    let first = client(&sock, &["raw"]);
    assert_eq!(first["code"], "UNAVAILABLE", "{first}");
    plan(&control, "# 1 over\n");
    // Once it is back, the retried signature arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client(&sock, &["raw"]);
        if r["code"] == "OK" {
            break;
        }
        assert_eq!(r["code"], "UNAVAILABLE", "{r}");
        assert!(
            Instant::now() < deadline,
            "no SVID after the token came back"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A watching workload keeps its SVID through an outage that spans a
    // rotation, and gets new ones after it.
    let script = repo().join("tests/workload_client.py");
    let watcher = Command::new(python())
        .arg(script)
        .arg(&sock)
        .args(["rotate", "3", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let failures_before = metric(&ca, "hsmca_workload_svid_failures_total").await;
    plan(&control, "# 2\nfault * DEVICE_ERROR for=5s\n");
    let out = watcher.wait_with_output().unwrap();
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["serials"].as_array().unwrap().len(), 3, "{seen}");
    assert!(metric(&ca, "hsmca_workload_svid_failures_total").await > failures_before);
}

#[tokio::test]
async fn a_stream_that_never_reads_holds_up_nobody() {
    let mut ca = with_workload(
        r#"[workload]
socket = "{DIR}/workload.sock"
trust_domain = "hsmca.test"
min_ttl = "2s"

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/user/{user}"
ttl = "4s"
"#,
    );
    ca.start();
    let sock = ca.path("workload.sock");
    // A raw HTTP/2 client with a one-byte stream window that never reads:
    // the daemon cannot send it even its first message.
    let io = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (h2c, conn) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/SpiffeWorkloadAPI/FetchX509SVID")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("workload.spiffe.io", "true")
        .body(())
        .unwrap();
    let (resp, mut body) = h2c.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let stuck = resp.into_body();
    // Meanwhile another workload of the same identity sees every rotation.
    let got = client(&sock, &["rotate", "3", "15"]);
    assert_eq!(got["serials"].as_array().unwrap().len(), 3, "{got}");
    // The stuck stream is still there (the other client's has ended).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&ca, "hsmca_workload_streams").await != 1.0 {
        assert!(Instant::now() < deadline, "the stuck stream is not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stuck);
    conn.abort();
}

fn pubkey_of(args: &[&str], path: &Path) -> String {
    let out = run_ok(Command::new("openssl").args(args).arg(path));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn p384_and_rsa_svids_with_dns_names_and_their_keys() {
    let mut ca = with_workload(
        r#"[workload]
socket = "{DIR}/workload.sock"
trust_domain = "hsmca.test"

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/p384/{uid}"
uid = 0
key_type = "p384"
dns_names = ["api.hsmca.test"]

[[workload.entries]]
spiffe_id = "spiffe://hsmca.test/rsa/{user}"
group = "root"
key_type = "rsa2048"
ttl = "2h"
hint = "legacy"
"#,
    );
    ca.start();
    let out = ca.path("out");
    let printed = run_ok(
        ca.hsmca()
            .args(["workload", "fetch", "--socket"])
            .arg(ca.path("workload.sock"))
            .arg("--out-dir")
            .arg(&out),
    );
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("spiffe://hsmca.test/p384/0"), "{printed}");
    for (i, curve_or_bits, usage) in [
        ("", "NIST CURVE: P-384", "Digital Signature\n"),
        (
            ".1",
            "Public-Key: (2048 bit)",
            "Digital Signature, Key Encipherment\n",
        ),
    ] {
        let cert = out.join(format!("svid{i}.pem"));
        let key = out.join(format!("svid{i}.key"));
        run_ok(
            Command::new("openssl")
                .args(["verify", "-x509_strict", "-CAfile"])
                .arg(out.join(format!("bundle{i}.pem")))
                .arg(&cert),
        );
        let text = openssl_text(&cert);
        assert!(text.contains(curve_or_bits), "{text}");
        assert!(
            text.contains(&format!(
                "X509v3 Key Usage: critical\n                {usage}"
            )),
            "{text}"
        );
        // The key is the certificate's.
        assert_eq!(
            pubkey_of(&["x509", "-noout", "-pubkey", "-in"], &cert),
            pubkey_of(&["pkey", "-pubout", "-in"], &key)
        );
    }
    let p384 = openssl_text(&out.join("svid.pem"));
    assert!(
        p384.contains("URI:spiffe://hsmca.test/p384/0") && p384.contains("DNS:api.hsmca.test"),
        "{p384}"
    );
    // The RSA SVID lives 2 h; the P-384 one the default 1 h.
    let lasts_90_minutes = |p: &Path| {
        common::run(
            Command::new("openssl")
                .args(["x509", "-noout", "-checkend", "5400", "-in"])
                .arg(p),
        )
        .status
        .success()
    };
    assert!(!lasts_90_minutes(&out.join("svid.pem")));
    assert!(lasts_90_minutes(&out.join("svid.1.pem")));
}
