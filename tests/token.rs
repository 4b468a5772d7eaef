//! What reaches the token, seen from outside hsmca: OpenSC's pkcs11-spy logs
//! every PKCS#11 call between the daemon and SoftHSM2, and pkcs11-tool reads
//! the CA key's attributes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Ca, KeyPair, SOFTHSM, run, run_ok};
use sha2::{Digest, Sha256, Sha384};

/// One logged call: its name, and for each `[in]` buffer its bytes.
struct Call {
    name: String,
    mechanism: Option<String>,
    data: Option<Vec<u8>>,
}

fn parse_spy(log: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut lines = log.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((_, name)) = line.split_once(": C_") else {
            continue;
        };
        if !line.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        let mut call = Call {
            name: format!("C_{}", name.trim()),
            mechanism: None,
            data: None,
        };
        while let Some(l) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            let l = lines.next().unwrap();
            if let Some(m) = l.strip_prefix("[in] pMechanism->type = ") {
                call.mechanism = Some(m.trim().to_string());
            }
            if l.starts_with("[in] pData[ulDataLen]") {
                let mut bytes = Vec::new();
                while let Some(h) = lines.peek() {
                    let h = h.trim_start();
                    if h.len() > 10
                        && h[..8].chars().all(|c| c.is_ascii_hexdigit())
                        && h.as_bytes()[8] == b' '
                    {
                        let hex_part = &h[10..h.len().min(10 + 48)];
                        bytes.extend(
                            hex_part
                                .split_whitespace()
                                .map(|b| u8::from_str_radix(b, 16).unwrap()),
                        );
                        lines.next();
                    } else {
                        break;
                    }
                }
                call.data = Some(bytes);
            }
        }
        calls.push(call);
    }
    calls
}

/// Runs the daemon through pkcs11-spy, issues one certificate, and returns
/// the spy's calls made while issuing plus the certificate's TBS DER.
async fn spy_issue(key_type: &str, extra: &[(&str, &str)]) -> (Vec<Call>, Vec<u8>) {
    let mut ca = Ca::with_env(key_type, extra);
    let spy_log = ca.use_spy();
    ca.start();
    let before = std::fs::read_to_string(&spy_log).unwrap().len();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let r = ca.issue_cn(&key, "spied").await;
    ca.stop();
    let log = std::fs::read_to_string(&spy_log).unwrap();
    let cert = hsmca::ca::parse_pem_certs(r.pem_certificate.as_bytes(), "reply").unwrap();
    let tbs = hsmca::issue::certificate::tbs_der(&cert[0]).unwrap();
    (parse_spy(&log[before..]), tbs)
}

fn assert_digest_only(calls: &[Call], mechanism: &str, expected_input: &[u8]) {
    let sign_inits: Vec<_> = calls.iter().filter(|c| c.name == "C_SignInit").collect();
    let signs: Vec<_> = calls.iter().filter(|c| c.name == "C_Sign").collect();
    assert!(!sign_inits.is_empty(), "no C_SignInit logged");
    for c in &sign_inits {
        assert_eq!(c.mechanism.as_deref(), Some(mechanism));
    }
    // The daemon also signs its CRL, so every input must have the digest's
    // form (for PKCS#1, the DigestInfo prefix), and one of them must be
    // exactly this certificate's.
    let prefix_len = if mechanism == "CKM_RSA_PKCS" { 19 } else { 0 };
    for c in &signs {
        let data = c.data.as_ref().expect("C_Sign without logged data");
        assert_eq!(data.len(), expected_input.len(), "C_Sign input length");
        assert_eq!(
            data[..prefix_len],
            expected_input[..prefix_len],
            "DigestInfo prefix"
        );
    }
    assert!(
        signs
            .iter()
            .any(|c| c.data.as_deref() == Some(expected_input)),
        "no C_Sign input is the digest of this certificate's TBS"
    );
    for forbidden in [
        "C_SignUpdate",
        "C_SignFinal",
        "C_DigestInit",
        "C_SignRecoverInit",
    ] {
        assert!(
            !calls.iter().any(|c| c.name == forbidden),
            "{forbidden} was called"
        );
    }
}

#[tokio::test]
async fn p256_token_receives_a_32_byte_sha256_digest() {
    let (calls, tbs) = spy_issue("p256", &[]).await;
    assert_digest_only(&calls, "CKM_ECDSA", &Sha256::digest(&tbs));
}

#[tokio::test]
async fn p384_token_receives_a_48_byte_sha384_digest() {
    let (calls, tbs) = spy_issue("p384", &[]).await;
    assert_digest_only(&calls, "CKM_ECDSA", &Sha384::digest(&tbs));
}

#[tokio::test]
async fn rsa2048_token_receives_a_51_byte_digest_info() {
    let (calls, tbs) = spy_issue("rsa2048", &[]).await;
    let mut digest_info = hex::decode("3031300d060960864801650304020105000420").unwrap();
    digest_info.extend_from_slice(&Sha256::digest(&tbs));
    assert_eq!(digest_info.len(), 51);
    assert_digest_only(&calls, "CKM_RSA_PKCS", &digest_info);
}

#[tokio::test]
async fn rsa_pss_token_receives_the_bare_digest() {
    let (calls, tbs) = spy_issue("rsa2048", &[("HSMCA_CA__RSA_PADDING", "pss")]).await;
    assert_digest_only(&calls, "CKM_RSA_PKCS_PSS", &Sha256::digest(&tbs));
}

fn list_objects(ca: &Ca) -> String {
    let out = run_ok(
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", ca.path("softhsm2.conf"))
            .args([
                "--module",
                SOFTHSM,
                "--token-label",
                "hsmca",
                "--login",
                "--pin",
            ])
            .arg(ca.pin())
            .arg("--list-objects"),
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ca_private_key_is_sensitive_never_extractable_and_sign_only() {
    for key_type in ["p256", "rsa2048"] {
        let ca = Ca::new(key_type);
        let objects = list_objects(&ca);
        // The CA key's block (the development config also has a JWT-SVID
        // key, checked in tests/workload_jwt.rs).
        // Each block ends where the next object's (unindented) header starts.
        let blocks: Vec<String> = objects
            .split("Private Key Object")
            .skip(1)
            .map(|b| {
                let mut lines = b.lines();
                let header = lines.next().unwrap_or_default();
                let body: Vec<&str> = lines.take_while(|l| l.starts_with([' ', '\t'])).collect();
                format!("{header}\n{}\n", body.join("\n"))
            })
            .collect();
        let private = blocks
            .iter()
            .find(|b| b.contains("label:      hsmca-ca\n"))
            .unwrap_or_else(|| panic!("no CA private key in:\n{objects}"));
        let field = |name: &str| {
            private
                .lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap()
        };
        assert_eq!(field("label:"), "hsmca-ca");
        assert_eq!(field("ID:"), "01");
        assert_eq!(
            field("Usage:"),
            "sign",
            "{key_type}: the key may do more than sign"
        );
        assert_eq!(
            field("Access:"),
            "sensitive, always sensitive, never extractable, local",
            "{key_type}: CKA_SENSITIVE/CKA_EXTRACTABLE"
        );
        assert_eq!(
            objects.matches("label:      hsmca-ca\n").count(),
            2,
            "one CA key pair: {objects}"
        );
    }
}

#[test]
fn init_refuses_to_overwrite_without_force_and_force_makes_a_new_key() {
    let ca = Ca::new("p256");
    let first = std::fs::read_to_string(ca.path("ca.pem")).unwrap();
    let again = run(ca.hsmca().args(["init", "--config"]).arg(ca.config()));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(ca.path("ca.pem")).unwrap(), first);
    run_ok(
        ca.hsmca()
            .args(["init", "--force", "--config"])
            .arg(ca.config()),
    );
    let second = std::fs::read_to_string(ca.path("ca.pem")).unwrap();
    assert_ne!(first, second);
    // Still exactly one CA key pair: the old one was destroyed, not
    // duplicated (the JWT-SVID key pair is not touched by --force).
    let objects = list_objects(&ca);
    assert_eq!(
        objects.matches("label:      hsmca-ca\n").count(),
        2,
        "{objects}"
    );
    assert_eq!(
        objects.matches("label:      hsmca-jwt\n").count(),
        2,
        "{objects}"
    );
}

/// SoftHSM2 rewrites its token file on every login, and a library
/// initialised during the rewrite does not list the token. Daemons that
/// start together on one token directory meet exactly that: each start-up
/// here runs while two other processes log in over and over, and each must
/// find the token.
#[test]
fn the_token_is_found_while_other_processes_log_in() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let ca = Ca::new("p256");
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, logins) = (stop.clone(), logins.clone());
            let mut login = Command::new("pkcs11-tool");
            login
                .envs(ca.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .args(["--module", SOFTHSM, "--login", "--pin", &ca.pin(), "-O"]);
            std::thread::spawn(move || {
                // These logins meet the same race (the token missing, or
                // CKR_GENERAL_ERROR): only the ones that got through count.
                while !stop.load(Ordering::Relaxed) {
                    if run(&mut login).status.success() {
                        logins.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for _ in 0..80 {
        let out = run(ca
            .hsmca()
            .args(["config", "check", "--config"])
            .arg(ca.config()));
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(
        logins.load(Ordering::Relaxed) > 10,
        "the other processes hardly logged in"
    );
    assert!(
        failures.is_empty(),
        "{} start-ups failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
