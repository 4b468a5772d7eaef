//! JWT-SVIDs end to end: `hsmca init` makes the JWT key in the token
//! (sensitive, never extractable, checked with pkcs11-tool), the daemon
//! signs JWT-SVIDs with it through pkcs11-spy (which shows the key gets
//! only digests), py-spiffe fetches and validates them, PyJWT and
//! `cryptography` verify them against the JWKS the daemon publishes, bad
//! calls get the documented codes, and a JWT key rotation keeps the old key
//! in the bundle for one JWT lifetime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::HashSet, process::Command, time::Duration};

use common::*;
use serde_json::Value;
use sha2::Digest;

const TD: &str = "hsmca.test";

fn workload_socket(ca: &Ca) -> String {
    ca.path("workload.sock").display().to_string()
}

fn py(ca: &Ca, args: &[&str]) -> Value {
    let out = run(Command::new(python())
        .arg(repo().join("tests/workload_jwt.py"))
        .arg(workload_socket(ca))
        .arg(TD)
        .args(args));
    assert!(
        out.status.success(),
        "workload_jwt.py {args:?} failed:\n{}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        ca.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn objects(ca: &Ca) -> String {
    let out = run_ok(
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", ca.path("softhsm2.conf"))
            .args(["--module", SOFTHSM, "--token-label", "hsmca", "--login"])
            // The throwaway test token's PIN, for pkcs11-tool only (as in
            // tests/key_lookup.rs); hsmca never takes a PIN on its argv.
            .arg("--pin")
            .arg(ca.pin())
            .arg("--list-objects"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// pkcs11-tool's block for the private key labelled `label`.
fn private_key_block(objects: &str, label: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    for line in objects.lines() {
        if !line.starts_with(char::is_whitespace) || blocks.is_empty() {
            blocks.push(String::new());
        }
        let b = blocks.last_mut().unwrap();
        b.push_str(line);
        b.push('\n');
    }
    blocks
        .into_iter()
        .find(|b| {
            b.starts_with("Private Key Object")
                && b.lines()
                    .any(|l| l.trim() == format!("label:      {label}"))
        })
        .unwrap_or_else(|| panic!("no private key {label:?} in:\n{objects}"))
}

/// The data of every C_Sign the spy saw, with the key handle of the
/// C_SignInit before it.
fn spied_signatures(log: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut key = String::new();
    let mut lines = log.lines().peekable();
    let mut in_sign = false;
    while let Some(line) = lines.next() {
        if line.chars().next().is_some_and(|c| c.is_ascii_digit()) && line.contains(": C_") {
            in_sign = line.trim_end().ends_with(": C_Sign");
            continue;
        }
        if let Some(k) = line.strip_prefix("[in] hKey = ") {
            key = k.trim().to_string();
        }
        if in_sign && line.starts_with("[in] pData[ulDataLen]") {
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
            out.push((key.clone(), bytes));
        }
    }
    out
}

fn b64url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn part(token: &str, n: usize) -> Value {
    serde_json::from_slice(&b64url(token.split('.').nth(n).unwrap())).unwrap()
}

#[test]
fn jwt_svids_from_a_token_key_validate_everywhere() {
    // A P-256 CA and a P-384 JWT key: the spy tells their digests apart.
    // The development config has the workload endpoint on, so `hsmca init`
    // (run by Ca::with_env) made the JWT key beside the CA key. A second
    // init finds both and refuses, as it does without a workload section.
    let mut ca = Ca::with_env("p256", &[("HSMCA_WORKLOAD__JWT__KEY_TYPE", "p384")]);
    let out = run(ca.hsmca().args(["init", "--config"]).arg(ca.config()));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("using existing JWT key p384 (label \"hsmca-jwt\"")
            && said.contains("--force"),
        "init said: {said}"
    );

    // The key's attributes, as another PKCS#11 tool sees them.
    let objs = objects(&ca);
    let jwt_key = private_key_block(&objs, "hsmca-jwt");
    assert!(jwt_key.contains("EC"), "{jwt_key}");
    for attr in ["sensitive", "never extractable"] {
        assert!(jwt_key.contains(attr), "JWT key lacks {attr}:\n{jwt_key}");
    }
    assert!(
        !jwt_key.contains("decrypt") && !jwt_key.contains("unwrap"),
        "{jwt_key}"
    );

    let spy = ca.use_spy();
    ca.start();
    let r = py(&ca, &["fetch"]);
    let token = r["token"].as_str().unwrap().to_string();
    let me = r["spiffe_id"].as_str().unwrap();
    assert_eq!(me, "spiffe://hsmca.test/user/root");
    assert_eq!(r["validated_spiffe_id"], me);
    assert_eq!(r["pyjwt_spiffe_id"], me);
    assert_eq!(r["named_spiffe_id"], me);
    assert_eq!(r["bundle_keys"], serde_json::json!(["spiffe://hsmca.test"]));

    // Header and claims as JWT-SVID.md says.
    let header = part(&token, 0);
    let kid = r["jwks"]["keys"][0]["kid"].as_str().unwrap();
    assert_eq!(
        header,
        serde_json::json!({"alg": "ES384", "kid": kid, "typ": "JWT"})
    );
    let claims = &r["claims"];
    assert_eq!(claims["sub"], me);
    assert_eq!(claims["aud"], serde_json::json!(["db"]));
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 300, "the default lifetime is 5 minutes");
    let jwks_keys = r["jwks"]["keys"].as_array().unwrap();
    assert_eq!(jwks_keys.len(), 1);
    assert_eq!(jwks_keys[0]["use"], "jwt-svid");
    assert_eq!(jwks_keys[0]["crv"], "P-384");
    assert_eq!(r["bundle_kids"], serde_json::json!([kid]));

    // The token received only digests: every JWT-SVID's SHA-384 appears
    // as a 48-byte C_Sign input, and the JWT key got nothing else.
    let tokens: Vec<String> = std::iter::once(token.clone())
        .chain(
            r["all"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string()),
        )
        .collect();
    let log = std::fs::read_to_string(&spy).unwrap();
    let signed = spied_signatures(&log);
    let digests: HashSet<Vec<u8>> = signed.iter().map(|(_, d)| d.clone()).collect();
    for t in &tokens {
        let input = t.rsplit_once('.').unwrap().0;
        let digest = sha2::Sha384::digest(input.as_bytes()).to_vec();
        assert!(
            digests.contains(&digest),
            "the SHA-384 of a JWT-SVID's signing input was not what the token signed"
        );
    }
    let jwt_handles: HashSet<&String> = signed
        .iter()
        .filter(|(_, d)| d.len() == 48)
        .map(|(k, _)| k)
        .collect();
    for (k, d) in &signed {
        assert!(
            d.len() == 32 || d.len() == 48,
            "C_Sign of {} bytes",
            d.len()
        );
        if jwt_handles.contains(k) {
            assert_eq!(d.len(), 48, "the JWT key got something other than a digest");
        }
    }
    // Nothing else went to the JWT key but these tokens' digests and the
    // start-up self-test's (cryptoki calls C_Sign twice per signature: for
    // the length, then for the value).
    let token_digests: HashSet<Vec<u8>> = tokens
        .iter()
        .map(|t| sha2::Sha384::digest(t.rsplit_once('.').unwrap().0.as_bytes()).to_vec())
        .collect();
    let others: HashSet<&Vec<u8>> = signed
        .iter()
        .filter(|(_, d)| d.len() == 48 && !token_digests.contains(d))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(others.len(), 1, "only the self-test besides the JWT-SVIDs");

    // Bad calls get the documented codes, and the daemon keeps serving.
    let bad = py(&ca, &["refusals", &token]);
    let code = |k: &str| bad[k].as_str().unwrap().to_string();
    assert!(
        code("no_header").starts_with("INVALID_ARGUMENT: security header missing"),
        "{bad}"
    );
    assert!(
        code("validate_no_header").starts_with("INVALID_ARGUMENT: security header missing"),
        "{bad}"
    );
    assert_eq!(
        code("no_audience"),
        "INVALID_ARGUMENT: audience must be specified"
    );
    assert!(
        code("foreign_spiffe_id").starts_with("PERMISSION_DENIED"),
        "{bad}"
    );
    assert!(
        code("bad_spiffe_id").starts_with("INVALID_ARGUMENT: spiffe_id"),
        "{bad}"
    );
    assert_eq!(
        code("validate_wrong_audience"),
        "INVALID_ARGUMENT: the JWT-SVID is not valid: the audience \"other\" is not in the token's aud claim"
    );
    assert!(
        code("validate_garbage")
            .starts_with("INVALID_ARGUMENT: the JWT-SVID is not valid: malformed token"),
        "{bad}"
    );
    assert_eq!(
        code("validate_alg_none"),
        "INVALID_ARGUMENT: the JWT-SVID is not valid: alg \"none\" is not allowed for JWT-SVIDs"
    );
    assert_eq!(
        code("validate_hs256"),
        "INVALID_ARGUMENT: the JWT-SVID is not valid: alg \"HS256\" is not allowed for JWT-SVIDs"
    );
    assert_eq!(
        code("validate_bad_signature"),
        "INVALID_ARGUMENT: the JWT-SVID is not valid: the signature does not verify"
    );
    assert_eq!(
        code("validate_no_audience"),
        "INVALID_ARGUMENT: audience must be specified"
    );
    assert_eq!(code("after"), "OK");

    // Four JWT-SVIDs were handed out (three fetches, then one after the
    // refusals); the start-up self-test is not counted.
    let status = run_ok(ca.hsmca().args(["status", "--config"]).arg(ca.config()));
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("jwt-svids       4 signed"), "{status}");
    ca.stop();
}

#[test]
fn a_rotated_jwt_key_stays_in_the_bundle_for_one_lifetime() {
    let mut ca = Ca::with_env("p256", &[("HSMCA_WORKLOAD__JWT__LIFETIME", "20s")]);
    ca.start();
    let before = py(&ca, &["fetch"]);
    let old_token = before["token"].as_str().unwrap().to_string();
    let old_kid = part(&old_token, 0)["kid"].as_str().unwrap().to_string();
    ca.stop();

    // Rotate to an RSA key (RS256); the P-256 key becomes the previous one.
    ca.env
        .push(("HSMCA_WORKLOAD__JWT__KEY_TYPE".into(), "rsa2048".into()));
    let out = run_ok(
        ca.hsmca()
            .args(["init", "--rotate-jwt-key", "--config"])
            .arg(ca.config()),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rotated the JWT key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = objects(&ca);
    private_key_block(&objs, "hsmca-jwt");
    private_key_block(&objs, "hsmca-jwt.previous");

    ca.start();
    // The old token (still within its 20 s) validates against the bundle
    // that now holds both keys, the new key first.
    let v = py(&ca, &["validate", &old_token]);
    assert_eq!(v["spiffe_id"], "spiffe://hsmca.test/user/root");
    let after = py(&ca, &["fetch"]);
    let new_token = after["token"].as_str().unwrap();
    let header = part(new_token, 0);
    assert_eq!(header["alg"], "RS256");
    assert_ne!(header["kid"].as_str().unwrap(), old_kid);
    let kids: Vec<&str> = after["jwks"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [header["kid"].as_str().unwrap(), old_kid.as_str()]);

    // One lifetime after the start the stream pushes the bundle without
    // the previous key.
    let stream = py(&ca, &["bundles", "2"]);
    let msgs = stream["messages"].as_array().unwrap();
    assert_eq!(msgs[0].as_array().unwrap().len(), 2, "{stream}");
    assert_eq!(msgs[1], serde_json::json!([header["kid"]]), "{stream}");
    std::thread::sleep(Duration::from_millis(100));
    ca.stop();
}

fn plan(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The JWT key signs through the CA key's pool, so it shares its recovery:
/// while the token is away JWT-SVIDs fail fast with UNAVAILABLE, and after
/// the rebuild (which finds both keys again by CKA_ID) and after every
/// session was closed underneath the signers, they are signed again.
#[test]
fn jwt_signing_follows_the_token_through_faults() {
    let mut ca = Ca::new("p256");
    let control = ca.path("faults");
    ca.env
        .push(("HSMCA_TEST_FAULTS".into(), control.display().to_string()));
    ca.start();
    assert_eq!(py(&ca, &["once"])["code"], "OK");

    // The device fails every call until the test says otherwise (a time
    // window could pass between two slow client start-ups unseen).
    plan(&control, "# 1\nfault * DEVICE_ERROR for=1h\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen_unavailable = false;
    loop {
        let r = py(&ca, &["once"]);
        match r["code"].as_str().unwrap() {
            "UNAVAILABLE" if !seen_unavailable => {
                seen_unavailable = true;
                plan(&control, "# 1 over\n");
            }
            "UNAVAILABLE" => {}
            "OK" if seen_unavailable => break,
            other => panic!("unexpected {other}: {r}\n{}", ca.log()),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery:\n{}",
            ca.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    plan(&control, "# 2\nreset-sessions\n");
    std::thread::sleep(Duration::from_millis(300));
    let r = py(&ca, &["once"]);
    assert_eq!(r["code"], "OK", "{r}\n{}", ca.log());
    let token = r["token"].as_str().unwrap();
    assert_eq!(
        py(&ca, &["validate", token])["spiffe_id"],
        "spiffe://hsmca.test/user/root"
    );
    ca.stop();
}
