//! `hsmca config check` against real SoftHSM2 tokens: every check passes on
//! a good one, and each fault — a wrong PIN, a missing module, two keys
//! under one label, a CA certificate of another key, a world-writable
//! socket directory, a store written by a newer schema — fails its own
//! check with the problem named, while nothing is changed: the token's
//! object list (pkcs11-tool) and the store's files (bytes, and no new
//! -wal/-shm) are the same before and after. `--setup` (the unit's
//! ExecCondition=) says what to do on a token that has no CA yet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
};

use common::{Ca, SOFTHSM, run, run_ok};
use hsmca::store::sqlite::inspect::SCHEMA_VERSION as LATEST_SCHEMA;
use sha2::Digest;

/// The checks, in the order they are printed.
const CHECKS: [&str; 11] = [
    "config",
    "pin",
    "module",
    "token",
    "login",
    "key",
    "jwt-key",
    "certificate",
    "signature",
    "socket",
    "store",
];

/// What `config check` must not change: the token's objects as
/// pkcs11-tool lists them (with the real PIN and module), the files in the
/// state directory (none added or removed), and the store's content, byte
/// for byte: `hsmca.db` and its write-ahead log `hsmca.db-wal`. Not
/// `hsmca.db-shm`: it is SQLite's shared-memory index of the WAL, which
/// holds no data and through which every reader, a read-only one too,
/// takes its read lock (SQLite rebuilds it from the WAL when needed).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    objects: String,
    /// File name → SHA-256 of its bytes.
    state: BTreeMap<String, String>,
}

fn snapshot(ca: &Ca, pin: &str) -> Snapshot {
    let out = run_ok(
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", ca.path("softhsm2.conf"))
            .args(["--module", SOFTHSM, "--token-label", "hsmca", "--login"])
            // The throwaway test token's PIN, for pkcs11-tool only (as in
            // tests/key_lookup.rs); hsmca never takes a PIN on its argv.
            .arg("--pin")
            .arg(pin)
            .arg("--list-objects"),
    );
    let mut state = BTreeMap::new();
    for e in std::fs::read_dir(ca.path("state")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        // The -shm file is SQLite's shared-memory index of the WAL, no
        // data: any reader of a WAL store makes it, and whichever
        // connection closes last may delete it (the stopped daemon leaves
        // it or not, by timing). Neither its bytes nor its presence say
        // whether the check changed the store.
        if name.ends_with("-shm") {
            continue;
        }
        let digest = hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).unwrap()));
        state.insert(name, digest);
    }
    Snapshot {
        objects: String::from_utf8_lossy(&out.stdout).into_owned(),
        state,
    }
}

/// Runs the daemon once and stops it, so the state directory holds a store
/// (with its -wal and -shm files, as a stopped daemon leaves them).
fn make_store(ca: &mut Ca) {
    ca.start();
    assert!(ca.stop().success(), "{}", ca.log());
    assert!(ca.path("state/hsmca.db").exists());
}

fn check_cmd(ca: &Ca, extra: &[&str]) -> Output {
    run(ca
        .hsmca()
        .args(["config", "check", "--config"])
        .arg(ca.config())
        .args(extra))
}

/// `config check --json`: the report, and the exit status.
fn check_json(ca: &Ca) -> (serde_json::Value, Output) {
    let out = check_cmd(ca, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out)
}

/// Each check's status, detail and fix, by name (every check is present,
/// in order).
fn statuses(report: &serde_json::Value) -> BTreeMap<String, (String, String, String)> {
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(names, CHECKS, "{report:#}");
    checks
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("check"), (s("status"), s("detail"), s("fix")))
        })
        .collect()
}

/// Asserts that exactly `failed` fails, with `needle` in its detail and a
/// fix; that the checks in `skipped` did not run; and that all others
/// passed. Returns the failed check's (detail, fix).
fn assert_one_failure(
    report: &serde_json::Value,
    out: &Output,
    failed: &str,
    needle: &str,
    skipped: &[&str],
) -> (String, String) {
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config check: 1 check failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = statuses(report);
    for (name, (status, detail, _)) in &all {
        let want = if name == failed {
            "failed"
        } else if skipped.contains(&name.as_str()) {
            "skipped"
        } else {
            "ok"
        };
        assert_eq!(status, want, "{name}: {detail}\n{report:#}");
    }
    let (_, detail, fix) = &all[failed];
    assert!(detail.contains(needle), "{failed}: {detail}");
    assert!(!fix.is_empty(), "{failed} has no fix");
    (detail.clone(), fix.clone())
}

#[test]
fn a_good_token_passes_every_check_and_nothing_changes() {
    let mut ca = Ca::new("p256");
    make_store(&mut ca);
    let pin = ca.pin();
    let before = snapshot(&ca, &pin);

    let out = check_cmd(&ca, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("✓ ")).count(),
        11,
        "{text}"
    );
    assert!(!text.contains('✗') && !text.contains("– "), "{text}");
    for needle in [
        "✓ config",
        "✓ PIN source",
        "read from file",
        "libsofthsm2.so loaded",
        "\"hsmca\" found",
        "✓ login",
        "label=\"hsmca-ca\" id=01: exactly one p256 private key",
        "✓ JWT-SVID key",
        "\"hsmca-jwt\": one p256 key pair, not the CA key",
        "CN=hsmca development CA",
        "certifies the token key",
        "EcdsaP256Sha256",
        "✓ socket directory",
        "all checks passed",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    let schema = format!("schema version {LATEST_SCHEMA}, this build's");
    assert!(text.contains(&schema), "{schema:?} not in:\n{text}");

    let (report, out) = check_json(&ca);
    assert!(out.status.success());
    assert_eq!(report["ok"], true);
    assert!(
        statuses(&report)
            .values()
            .all(|(status, _, fix)| status == "ok" && fix.is_empty()),
        "{report:#}"
    );
    assert_eq!(snapshot(&ca, &pin), before);
    // The PIN never appears in what the check prints.
    assert!(!text.contains(&pin));
    assert!(!report.to_string().contains(&pin));
}

#[test]
fn without_a_store_it_says_serve_creates_one_and_creates_nothing() {
    let ca = Ca::new("rsa2048");
    let (report, out) = check_json(&ca);
    assert!(out.status.success(), "{report:#}");
    let all = statuses(&report);
    assert!(all["store"].1.contains("no store yet: serve creates"));
    assert!(all["signature"].1.contains("RsaPkcs1Sha256"));
    assert_eq!(
        std::fs::read_dir(ca.path("state")).unwrap().count(),
        0,
        "the check created files in the state directory"
    );
}

#[test]
fn a_wrong_pin_fails_the_login() {
    let ca = Ca::new("p256");
    let pin = ca.pin();
    let before = snapshot(&ca, &pin);
    std::fs::write(ca.path("pin"), "000000-not-the-pin").unwrap();
    let (report, out) = check_json(&ca);
    let (_, fix) = assert_one_failure(
        &report,
        &out,
        "login",
        "the PIN was rejected by the token",
        &["key", "jwt-key", "certificate", "signature"],
    );
    assert!(fix.contains(&ca.path("pin").display().to_string()), "{fix}");
    assert!(!report.to_string().contains("000000-not-the-pin"));
    std::fs::write(ca.path("pin"), &pin).unwrap();
    assert_eq!(snapshot(&ca, &pin), before);
}

#[test]
fn a_missing_module_fails_the_module_check() {
    let mut ca = Ca::new("p256");
    let pin = ca.pin();
    let before = snapshot(&ca, &pin);
    let missing = ca.path("no-such-pkcs11-module.so");
    ca.env
        .push(("HSMCA_TOKEN__MODULE".into(), missing.display().to_string()));
    let (report, out) = check_json(&ca);
    let (detail, fix) = assert_one_failure(
        &report,
        &out,
        "module",
        "cannot load PKCS#11 module",
        &[
            "token",
            "login",
            "key",
            "jwt-key",
            "certificate",
            "signature",
        ],
    );
    assert!(detail.contains(&missing.display().to_string()), "{detail}");
    assert!(fix.contains("token.module"), "{fix}");
    assert_eq!(snapshot(&ca, &pin), before);
}

#[test]
fn two_keys_under_one_label_fail_the_key_check_naming_both() {
    let ca = Ca::new("p256");
    let pin = ca.pin();
    run_ok(
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", ca.path("softhsm2.conf"))
            .args(["--module", SOFTHSM, "--token-label", "hsmca", "--login"])
            .arg("--pin")
            .arg(&pin)
            .args([
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                "hsmca-ca",
                "--id",
                "01",
            ]),
    );
    let before = snapshot(&ca, &pin);
    let (report, out) = check_json(&ca);
    let (detail, _) = assert_one_failure(
        &report,
        &out,
        "key",
        "2 private keys match label=\"hsmca-ca\" id=01",
        &["jwt-key", "certificate", "signature"],
    );
    assert_eq!(
        detail
            .matches("[private key label=\"hsmca-ca\" id=01")
            .count(),
        2
    );
    assert_eq!(snapshot(&ca, &pin), before);
}

#[test]
fn a_ca_certificate_of_another_key_fails_the_certificate_check() {
    let mut ca = Ca::new("p256");
    make_store(&mut ca);
    ca.replace_ca_cert_with_another_key();
    let pin = ca.pin();
    let cert = std::fs::read(ca.path("ca.pem")).unwrap();
    let before = snapshot(&ca, &pin);
    let (report, out) = check_json(&ca);
    assert_one_failure(
        &report,
        &out,
        "certificate",
        "the CA certificate's public key is not the token's CA key",
        &["signature"],
    );
    assert_eq!(snapshot(&ca, &pin), before);
    assert_eq!(std::fs::read(ca.path("ca.pem")).unwrap(), cert);
}

#[test]
fn a_world_writable_socket_directory_fails_the_socket_check() {
    let mut ca = Ca::new("p256");
    let shared = ca.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    ca.env.push((
        "HSMCA_SERVER__SOCKET".into(),
        shared.join("hsmca.sock").display().to_string(),
    ));
    let pin = ca.pin();
    let before = snapshot(&ca, &pin);
    let (report, out) = check_json(&ca);
    let (detail, _) = assert_one_failure(
        &report,
        &out,
        "socket",
        "is writable by every user (mode 0777)",
        &[],
    );
    assert!(detail.contains(&shared.display().to_string()), "{detail}");
    assert_eq!(snapshot(&ca, &pin), before);
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "the check bound a socket"
    );

    // The rule is the daemon user's: an unknown --user is refused, and
    // root's own check of a directory it owns passes.
    let out = check_cmd(&ca, &["--json", "--user", "no-such-user-hsmca-test"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(statuses(&report)["socket"].1.contains("no user"));
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = check_cmd(&ca, &["--json", "--user", "root"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_store_from_a_newer_schema_fails_the_store_check_untouched() {
    let mut ca = Ca::new("p256");
    make_store(&mut ca);
    // A newer hsmca's migration, recorded as hsmca records its own.
    let (latest, newer) = (LATEST_SCHEMA, LATEST_SCHEMA + 1);
    let db = ca.path("state/hsmca.db");
    run_ok(Command::new(common::python()).arg("-c").arg(format!(
        "import sqlite3; c = sqlite3.connect({db:?}); \
         c.execute(\"INSERT INTO schema_migrations (version, description, applied_at) \
         VALUES ({newer}, 'from a newer hsmca', 0)\"); c.commit(); c.close()",
        db = db.display().to_string()
    )));
    let pin = ca.pin();
    let before = snapshot(&ca, &pin);
    let (report, out) = check_json(&ca);
    let (detail, fix) = assert_one_failure(
        &report,
        &out,
        "store",
        &format!("schema version {newer} is newer than this build's ({latest})"),
        &[],
    );
    assert!(detail.contains(&db.display().to_string()), "{detail}");
    assert!(fix.contains("backup"), "{fix}");
    assert_eq!(snapshot(&ca, &pin), before);
    assert!(!Path::new(&format!("{}-wal", db.display())).exists());

    // And `serve` indeed refuses that store (killed after 60 s if not).
    let mut child = ca
        .hsmca()
        .args(["serve", "--config"])
        .arg(ca.config())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started on a newer store");
    assert!(
        err.contains(&format!(
            "schema version {newer}, newer than this hsmca knows (version {latest})"
        )),
        "{err}"
    );
}

#[test]
fn the_text_report_prints_the_failure_and_its_fix() {
    let mut ca = Ca::new("p256");
    ca.env.push((
        "HSMCA_TOKEN__MODULE".into(),
        "/nonexistent/libpkcs11.so".into(),
    ));
    let out = check_cmd(&ca, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("✗ PKCS#11 module"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lines[at].contains("/nonexistent/libpkcs11.so"), "{text}");
    assert!(lines[at + 1].trim_start().starts_with("fix: "), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("– CA key") && l.contains("not checked")),
        "{text}"
    );
}

#[test]
fn setup_mode_skips_an_unset_up_service_with_the_next_steps() {
    let ca = Ca::token_only("p256", &[]);
    let out = check_cmd(&ca, &["--setup"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not set up yet: there is no CA certificate"),
        "{text}"
    );
    assert!(text.contains("hsmca init --config"), "{text}");
    assert!(text.contains("systemctl start hsmca"), "{text}");
    run_ok(ca.hsmca().args(["init", "--config"]).arg(ca.config()));
    let out = check_cmd(&ca, &["--setup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let missing = ca.path("no-such.toml");
    let out = run(ca
        .hsmca()
        .args(["config", "check", "--setup", "--config"])
        .arg(&missing));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("there is no config file"));
}

/// The workload endpoint's JWT-SVID key is checked like the CA key: a
/// label with no key pair behind it fails its own check, says how to make
/// it, and the CA checks still run.
#[test]
fn a_missing_jwt_key_fails_its_own_check() {
    let mut ca = Ca::new("p256");
    make_store(&mut ca);
    ca.env.push((
        "HSMCA_WORKLOAD__JWT__KEY_LABEL".into(),
        "hsmca-jwt-not-made".into(),
    ));
    let pin = ca.pin();
    let before = snapshot(&ca, &pin);
    let (report, out) = check_json(&ca);
    let (_, fix) = assert_one_failure(
        &report,
        &out,
        "jwt-key",
        "no JWT signing key labelled \"hsmca-jwt-not-made\"",
        &[],
    );
    assert!(fix.contains("hsmca init --config"), "{fix}");
    assert_eq!(snapshot(&ca, &pin), before);
    // And `serve` refuses to start, naming the JWT key.
    let out = run(ca.hsmca().args(["serve", "--config"]).arg(ca.config()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the JWT-SVID key \"hsmca-jwt-not-made\""),
        "{err}"
    );
}
