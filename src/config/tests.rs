#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[token]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "hsmca"
key_label = "hsmca-ca"
[ca]
key_type = "p256"
certificate = "/tmp/ca.pem"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml_with_env(text, Path::new("test.toml"), &env)
}

#[test]
fn defaults_apply() {
    let c = load(MINIMAL, &[]).unwrap();
    assert_eq!(c.server.max_request_bytes, 65536);
    assert_eq!(c.server.socket_mode_bits(), 0o660);
    assert_eq!(c.ca.backdate, Duration::from_secs(60));
    assert_eq!(c.ca.digest(), DigestAlg::Sha256);
    assert_eq!(c.token.sessions, 2);
    assert_eq!(c.server.max_connections, 1024);
    assert_eq!(c.server.max_concurrent_streams, 256);
    assert_eq!(c.server.request_timeout, Duration::from_secs(30));
    assert_eq!(c.server.handshake_timeout, Duration::from_secs(10));
    assert_eq!(
        c.metrics_socket(),
        Some(PathBuf::from("/run/hsmca/hsmca-metrics.sock"))
    );
    assert!(c.metrics.listen.is_none());
}

#[test]
fn env_overrides_nested_keys() {
    let c = load(
        MINIMAL,
        &[
            ("HSMCA_TOKEN__SESSIONS", "5"),
            ("HSMCA_CA__KEY_TYPE", "rsa3072"),
            ("HSMCA_SERVER__SOCKET", "/tmp/x.sock"),
            ("HSMCA_PIN", "not-a-config-key"),
        ],
    )
    .unwrap();
    assert_eq!(c.token.sessions, 5);
    assert_eq!(c.ca.key_type, KeyType::Rsa3072);
    assert_eq!(c.server.socket, PathBuf::from("/tmp/x.sock"));
}

#[test]
fn unknown_key_is_rejected_by_name() {
    let err = load(&format!("{MINIMAL}\nbogus = 1\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "HSMCA_SERVER__SOCKET_MODE",
            "rw-rw----",
            "server.socket_mode",
        ),
        ("HSMCA_TOKEN__SESSIONS", "0", "token.sessions"),
        ("HSMCA_CA__RSA_PADDING", "pss", "ca.rsa_padding"),
        ("HSMCA_CA__SUBJECT", "not a name", "ca.subject"),
        ("HSMCA_TOKEN__KEY_ID", "zz", "token.key_id"),
        (
            "HSMCA_SERVER__MAX_CONNECTIONS",
            "0",
            "server.max_connections",
        ),
        ("HSMCA_SERVER__IDLE_TIMEOUT", "10ms", "server.idle_timeout"),
        ("HSMCA_METRICS__LISTEN", "localhost", "metrics.listen"),
        ("HSMCA_METRICS__SOCKET_MODE", "x", "metrics.socket_mode"),
    ];
    for (k, v, key) in cases {
        let err = load(MINIMAL, &[(k, v)]).unwrap_err().to_string();
        assert!(err.contains(key), "{k}={v}: {err}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let c = load(include_str!("../../hsmca.example.toml"), &[]).unwrap();
    assert_eq!(c.token.locator().unwrap().key_id, Some(vec![1]));
    assert_eq!(c.ca.validity, Duration::from_secs(10 * 31_557_600));
}

#[test]
fn uri_fills_token_coordinates() {
    let text = r#"
[token]
module = "/m.so"
uri = "pkcs11:token=prod%20ca;object=issuing;id=%01%02"
[ca]
key_type = "p384"
certificate = "/tmp/ca.pem"
"#;
    let c = load(text, &[]).unwrap();
    let l = c.token.locator().unwrap();
    assert_eq!(l.token_label, "prod ca");
    assert_eq!(l.key_label.as_deref(), Some("issuing"));
    assert_eq!(l.key_id, Some(vec![1, 2]));
    assert_eq!(c.ca.digest(), DigestAlg::Sha384);
}

#[test]
fn durations_too_long_for_time_arithmetic_are_refused_naming_the_key() {
    // Fits a Duration, not an i64 of seconds: now + it would overflow.
    const HUGE: &str = "300000000000y";
    for (key, env) in [
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
            "profiles.intermediate.max_duration",
            "HSMCA_PROFILES__INTERMEDIATE__MAX_DURATION",
        ),
        ("server.request_timeout", "HSMCA_SERVER__REQUEST_TIMEOUT"),
        (
            "server.keepalive_interval",
            "HSMCA_SERVER__KEEPALIVE_INTERVAL",
        ),
        ("requests.renewal_window", "HSMCA_REQUESTS__RENEWAL_WINDOW"),
        ("requests.retry_after", "HSMCA_REQUESTS__RETRY_AFTER"),
    ] {
        for value in [HUGE, "101y"] {
            let err = load(MINIMAL, &[(env, value)]).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("at most 100 years"),
                "{key} = {value}: {err}"
            );
        }
    }
    // A century is allowed where nothing else forbids it.
    let c = load(MINIMAL, &[("HSMCA_CA__VALIDITY", "100y")]).unwrap();
    assert_eq!(c.ca.validity, durations::MAX_DURATION);
    let rule = format!(
        "{MINIMAL}\n[[policy.rules]]\nname = \"long\"\neveryone = true\nmax_duration = \"{HUGE}\"\n"
    );
    let err = load(&rule, &[]).unwrap_err().to_string();
    assert!(err.contains("policy.rules[0].max_duration"), "{err}");
}

#[test]
fn state_database_names_the_engine_and_refuses_passwords_in_the_url() {
    use super::{Database, StateConfig};
    let with = |url: &str| StateConfig {
        database: Some(url.into()),
        ..Default::default()
    };
    assert_eq!(StateConfig::default().database().unwrap(), Database::Sqlite);
    assert_eq!(with("sqlite:").database().unwrap(), Database::Sqlite);
    let pg = "postgres://hsmca@localhost/hsmca?host=/run/postgresql&sslmode=disable";
    assert_eq!(with(pg).database().unwrap(), Database::Postgres(pg.into()));
    for (bad, says) in [
        ("postgres://hsmca:secret@db/hsmca", "password"),
        ("postgres://hsmca@db/hsmca?password=secret", "password"),
        ("mysql://hsmca@db/hsmca", "unknown database kind"),
        ("postgres://hsmca@db", "names no database"),
        ("sqlite:/var/lib/other.db", "state.dir"),
        ("not a url", "not a database URL"),
    ] {
        let e = with(bad).database().unwrap_err().to_string();
        assert!(
            e.contains("state.database") && e.contains(says),
            "{bad}: {e}"
        );
        assert!(!e.contains("secret"), "{bad}: {e}");
    }
}
