//! Durations in the operator's config that time arithmetic cannot hold
//! (added to "now", converted to Unix seconds, written into a certificate)
//! are refused at start-up with the key named, and never make the daemon
//! panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use common::Ca;

/// About 300 billion years: fits a `Duration` (u64 seconds) but not an
/// `i64` of seconds, so `SystemTime::now() + d` overflows.
const HUGE: &str = "300000000000y";
/// Long enough to pass every lower bound, past year 9999 from now.
const PAST_9999: &str = "10000y";

/// Every duration key an operator can set through the environment.
const KEYS: &[(&str, &str)] = &[
    ("ca.validity", "HSMCA_CA__VALIDITY"),
    ("crl.validity", "HSMCA_CRL__VALIDITY"),
    (
        "state.request_id_retention",
        "HSMCA_STATE__REQUEST_ID_RETENTION",
    ),
    (
        "profiles.client.max_duration",
        "HSMCA_PROFILES__CLIENT__MAX_DURATION",
    ),
    (
        "profiles.server.max_duration",
        "HSMCA_PROFILES__SERVER__MAX_DURATION",
    ),
    (
        "profiles.intermediate.max_duration",
        "HSMCA_PROFILES__INTERMEDIATE__MAX_DURATION",
    ),
    ("server.shutdown_grace", "HSMCA_SERVER__SHUTDOWN_GRACE"),
    ("server.request_timeout", "HSMCA_SERVER__REQUEST_TIMEOUT"),
    (
        "server.handshake_timeout",
        "HSMCA_SERVER__HANDSHAKE_TIMEOUT",
    ),
    ("server.idle_timeout", "HSMCA_SERVER__IDLE_TIMEOUT"),
    (
        "server.keepalive_interval",
        "HSMCA_SERVER__KEEPALIVE_INTERVAL",
    ),
    (
        "server.keepalive_timeout",
        "HSMCA_SERVER__KEEPALIVE_TIMEOUT",
    ),
    ("requests.renewal_window", "HSMCA_REQUESTS__RENEWAL_WINDOW"),
    ("requests.retry_after", "HSMCA_REQUESTS__RETRY_AFTER"),
];

/// Runs `hsmca serve` with `env`; it must exit (not serve) within 30 s.
fn serve_refused(ca: &Ca, env: &[(&str, &str)]) -> Output {
    let mut child = ca
        .hsmca()
        .args(["serve", "--config"])
        .arg(ca.config())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{env:?}: the daemon started:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn assert_refused_naming(out: &Output, key: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: panicked\n{stderr}");
    assert!(stderr.contains(key), "{what}: {key} not named\n{stderr}");
}

#[test]
fn durations_that_overflow_time_arithmetic_are_refused_naming_the_key() {
    let ca = Ca::new("p256");
    for (key, env) in KEYS {
        for value in [HUGE, PAST_9999] {
            let out = serve_refused(&ca, &[(env, value)]);
            assert_refused_naming(&out, key, &format!("{key} = {value}"));
        }
    }
    // A policy rule's max_duration, which no environment variable sets.
    let original = std::fs::read_to_string(ca.config()).unwrap();
    ca.append_config(&format!(
        "[[policy.rules]]\nname = \"too long\"\neveryone = true\nmax_duration = \"{HUGE}\"\n"
    ));
    let out = serve_refused(&ca, &[]);
    assert_refused_naming(&out, "max_duration", "policy max_duration");
    std::fs::write(ca.config(), original).unwrap();

    // `hsmca init` reads ca.validity to make the root: refused the same way.
    let fresh = Ca::token_only("p256", &[("HSMCA_CA__VALIDITY", HUGE)]);
    let out = fresh
        .hsmca()
        .args(["init", "--config"])
        .arg(fresh.config())
        .output()
        .unwrap();
    assert_refused_naming(&out, "ca.validity", "init with a huge ca.validity");

    // And the daemon still starts with the values as they were.
    let mut ca = ca;
    ca.start();
}
