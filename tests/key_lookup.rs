//! Start-up refuses a CA key it cannot name unambiguously, and a CA
//! certificate that is not the token key's: the token is changed behind
//! hsmca's back with OpenSC's pkcs11-tool, and the CA certificate with
//! openssl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Ca, SOFTHSM, run_ok};

fn pkcs11_tool(ca: &Ca) -> Command {
    let mut c = Command::new("pkcs11-tool");
    c.env("SOFTHSM2_CONF", ca.path("softhsm2.conf"))
        .args(["--module", SOFTHSM, "--token-label", "hsmca", "--login"])
        // As in tests/token.rs: the throwaway test token's PIN, for
        // pkcs11-tool only (the daemon never takes a PIN on its argv).
        .arg("--pin")
        .arg(ca.pin());
    c
}

/// Runs `hsmca serve`, which must exit with an error (within 30 s: a
/// daemon that starts serving is killed and fails the test).
fn serve_fails(ca: &Ca) -> String {
    let mut child = ca
        .hsmca()
        .args(["serve", "--config"])
        .arg(ca.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the daemon started:\n{err}");
    eprintln!("{err}");
    assert!(!ca.socket().exists(), "socket bound before the checks");
    err
}

/// SHA-256 of the DER public key in a certificate, computed by openssl.
fn cert_key_sha256(cert: &std::path::Path) -> String {
    let out = run_ok(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r",
        cert.display()
    )));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn two_private_keys_with_the_configured_label_and_id_are_refused_naming_both() {
    let ca = Ca::new("p256");
    // A second key pair under the very same label and CKA_ID.
    run_ok(pkcs11_tool(&ca).args([
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "hsmca-ca",
        "--id",
        "01",
    ]));
    let err = serve_fails(&ca);
    assert!(err.contains("2 private keys match"), "{err}");
    assert_eq!(
        err.matches("[private key label=\"hsmca-ca\" id=01 handle=")
            .count(),
        2,
        "{err}"
    );
}

#[test]
fn a_public_key_under_the_label_with_another_id_is_refused() {
    let ca = Ca::new("p256");
    // Name the key by label only, then leave a stray public key with that
    // label but CKA_ID 02 (its private half deleted).
    let toml = std::fs::read_to_string(ca.config()).unwrap();
    let toml: String = toml
        .lines()
        .filter(|l| !l.trim_start().starts_with("key_id"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(ca.config(), toml).unwrap();
    run_ok(pkcs11_tool(&ca).args([
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "hsmca-ca",
        "--id",
        "02",
    ]));
    run_ok(pkcs11_tool(&ca).args(["--delete-object", "--type", "privkey", "--id", "02"]));
    let err = serve_fails(&ca);
    assert!(err.contains("2 public keys match"), "{err}");
    assert!(
        err.contains("[public key label=\"hsmca-ca\" id=01"),
        "{err}"
    );
    assert!(
        err.contains("[public key label=\"hsmca-ca\" id=02"),
        "{err}"
    );
    assert!(
        err.contains("[private key label=\"hsmca-ca\" id=01"),
        "{err}"
    );
}

#[test]
fn a_ca_certificate_for_another_key_is_refused_naming_both_keys() {
    let ca = Ca::new("p256");
    let token_key = cert_key_sha256(&ca.path("ca.pem"));
    // A well-formed CA certificate, for a key that is not in the token.
    ca.replace_ca_cert_with_another_key();
    let cert_key = cert_key_sha256(&ca.path("ca.pem"));
    assert_ne!(cert_key, token_key);
    let err = serve_fails(&ca);
    assert!(err.contains("not the token's CA key"), "{err}");
    assert!(
        err.contains(&format!("certificate key SHA-256 {cert_key}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("token key SHA-256 {token_key}")),
        "{err}"
    );
}
