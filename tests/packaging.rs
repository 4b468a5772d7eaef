//! What the Debian package ships besides the binary, checked without
//! building it (scripts/package-test.sh builds, lints and installs it):
//! the conffile /etc/hsmca/hsmca.toml, derived from hsmca.example.toml with
//! safe defaults; the Prometheus rules, checked and unit-tested by
//! Prometheus' own promtool; and the Grafana dashboard and the rules, whose
//! every metric name must be one a running daemon exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use common::{Ca, KeyPair, repo, run, run_ok};
use hsmca::{config::Config, proto::GenerateClientCertificateRequest};

/// `text` with every commented-out `key = value` and `[section]` line
/// uncommented.
fn uncomment(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The conffile as shipped, and uncommented.
fn conffile() -> (String, String) {
    let text = std::fs::read_to_string(repo().join("packaging/deb/hsmca.toml")).unwrap();
    let uncommented = uncomment(&text);
    (text, uncommented)
}

/// Dotted key paths of a TOML document (array-of-tables entries merged).
fn keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                keys(v, &path, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_table()) {
                keys(item, prefix, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_conffile_is_the_example_with_safe_defaults_and_no_pin() {
    let (shipped, uncommented) = conffile();
    let load = |text: &str| {
        Config::from_toml_with_env(text, Path::new("hsmca.toml"), &Default::default())
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let cfg = load(&shipped);
    assert_eq!(
        cfg.token.pin_file, None,
        "no PIN file: LoadCredential= brings it"
    );
    assert_eq!(cfg.token.pin_credential, "hsmca-pin");
    assert!(
        cfg.policy.rules.is_empty(),
        "default deny until rules are added"
    );
    assert_eq!(cfg.metrics.listen, None, "no TCP metrics unless asked");
    assert_eq!(cfg.server.socket, Path::new("/run/hsmca/hsmca.sock"));
    assert_eq!(cfg.server.socket_mode_bits(), 0o660);
    assert_eq!(
        cfg.metrics_socket().as_deref(),
        Some(Path::new("/run/hsmca/hsmca-metrics.sock"))
    );
    assert_eq!(cfg.state.dir, Path::new("/var/lib/hsmca"));
    assert!(cfg.ca.certificate.starts_with("/var/lib/hsmca"));
    assert!(!shipped.lines().any(|l| l.starts_with("pin_file")));

    // Every commented line is a real key with a valid value, and every key
    // is one hsmca.example.toml documents.
    let all = load(&uncommented);
    assert!(!all.policy.rules.is_empty());
    let example_text = std::fs::read_to_string(repo().join("hsmca.example.toml")).unwrap();
    let mut example = BTreeSet::new();
    let table = |text: &str| toml::Value::Table(toml::from_str(text).unwrap());
    keys(&table(&uncomment(&example_text)), "", &mut example);
    let mut ours = BTreeSet::new();
    keys(&table(&uncommented), "", &mut ours);
    let unknown: Vec<_> = ours.difference(&example).collect();
    assert!(unknown.is_empty(), "not in hsmca.example.toml: {unknown:?}");
    // …and it leaves out none of the example's sections.
    for section in example.iter().filter(|k| !k.contains('.')) {
        assert!(ours.contains(section), "section {section} missing");
    }
}

/// promtool: from HSMCA_TEST_PROMTOOL (scripts/test.sh extracts it from
/// Debian's prometheus package), else from PATH.
fn promtool() -> PathBuf {
    std::env::var_os("HSMCA_TEST_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"))
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = repo().join("contrib/prometheus");
    let out =
        run(Command::new(promtool())
            .current_dir(&dir)
            .args(["check", "rules", "hsmca.rules.yml"]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules:\n{said}");
    assert!(said.contains("SUCCESS: 9 rules found"), "{said}");
    let out = run(Command::new(promtool()).current_dir(&dir).args([
        "test",
        "rules",
        "hsmca.rules.test.yml",
    ]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules:\n{said}");
    // Every alert has a test, and every test names a rule that exists.
    let rules = std::fs::read_to_string(dir.join("hsmca.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("hsmca.rules.test.yml")).unwrap();
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    let tested: BTreeSet<&str> = tests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .collect();
    assert_eq!(alerts.len(), 9);
    assert_eq!(alerts, tested);
}

/// The metric names a PromQL text uses: words starting with `hsmca_`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("hsmca_") {
        let boundary = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if boundary {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every `expr` and query of the dashboard.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains("hsmca_") => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The sample names a scrape exports: its sample lines, and for each
/// `# TYPE` family the names Prometheus stores (a counter's `_total`, a
/// histogram's `_bucket`, `_sum` and `_count`), so that a labelled family
/// that has no sample yet still counts.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_rules_use_only_metrics_the_daemon_exports() {
    let text = std::fs::read_to_string(repo().join("contrib/grafana/hsmca.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "hsmca");
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let used_by_dashboard: BTreeSet<String> =
        queries.iter().flat_map(|q| metric_names(q)).collect();
    let rules = std::fs::read_to_string(repo().join("contrib/prometheus/hsmca.rules.yml")).unwrap();
    let used_by_rules: BTreeSet<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .collect();
    assert!(used_by_dashboard.len() >= 15, "{used_by_dashboard:?}");

    // A live daemon, with one certificate issued, one refused, and one
    // connection closed (no HTTP/2 preface within the handshake timeout),
    // so that every labelled family has a sample.
    let mut ca = Ca::with_env("p256", &[("HSMCA_SERVER__HANDSHAKE_TIMEOUT", "200ms")]);
    ca.start();
    let mut silent = std::os::unix::net::UnixStream::connect(ca.socket()).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The server's SETTINGS frame, then the close.
    let mut seen = Vec::new();
    let closed = std::io::Read::read_to_end(&mut silent, &mut seen);
    assert!(
        closed.is_ok(),
        "a silent connection was not closed: {closed:?}"
    );
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let mut client = ca.client().await;
    client
        .generate_client_certificate(GenerateClientCertificateRequest {
            public_key: key.clone(),
            common_name: "scraped".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .generate_client_certificate(GenerateClientCertificateRequest {
            public_key: key,
            common_name: "refused".into(),
            profile: "no-such-profile".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let scrape = hsmca::cli::status::scrape(&ca.path("hsmca-metrics.sock"))
        .await
        .unwrap();
    let exported = exported_names(&scrape);
    assert!(
        exported.contains("hsmca_certificates_issued_total"),
        "{scrape}"
    );
    for (what, used) in [("dashboard", &used_by_dashboard), ("rules", &used_by_rules)] {
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "the {what} uses metrics the daemon does not export: {unknown:?}\nscrape:\n{scrape}"
        );
    }
    // And the dashboard shows every metric family the daemon has.
    let families: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for family in &families {
        assert!(
            used_by_dashboard
                .iter()
                .any(|u| u.starts_with(family.as_str())),
            "the dashboard has no panel for {family}"
        );
    }
}

/// man's output without the overstrike (`N\x08N`) that makes bold text.
fn plain(text: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in text.chars() {
        if c == '\x08' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn man_pages_and_completions_match_the_help() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(common::HSMCA)
            .arg("generate-docs")
            .arg(dir.path()),
    );
    // Every option `hsmca config check --help` lists is in its page, as man
    // renders it.
    let help = run_ok(Command::new(common::HSMCA).args(["config", "check", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let page = run_ok(
        Command::new("man")
            .env("MANWIDTH", "200")
            .args(["-l", "-P", "cat"])
            .arg(dir.path().join("man/hsmca-config-check.1")),
    );
    let page = plain(&String::from_utf8_lossy(&page.stdout));
    let options: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(','))
        .collect();
    assert!(
        options.contains(&"--setup") && options.contains(&"--json"),
        "{help}"
    );
    for option in options {
        assert!(
            page.contains(option),
            "{option} is not in the man page:\n{page}"
        );
    }
    // The subcommands of `hsmca --help` each have a page.
    let help = run_ok(Command::new(common::HSMCA).arg("--help"));
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 14, "{commands:?}");
    for c in commands {
        assert!(
            dir.path().join(format!("man/hsmca-{c}.1")).exists(),
            "no man page for hsmca {c}"
        );
    }
}
