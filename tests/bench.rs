//! `hsmca bench` in its smallest form: one key type, one client, one
//! second, a tiny renewal wave, a burst of 4 RSA-8192 CSRs, 10 SPIFFE
//! workloads (cold start and rotation), no OpenSSL peer. A behaviour test: the run
//! finishes and the JSON carries every figure BENCHMARKS.md is made from.
//! It never asserts a speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::{HSMCA, repo, run_ok};
use serde_json::Value;

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
        assert!(!cur.is_null(), "no {path} in the bench JSON:\n{v:#}");
    }
    cur
}

fn number(v: &Value, path: &str) -> f64 {
    field(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in:\n{v:#}"))
}

/// `hsmca bench --json ARGS --setup <the repository's setup.sh>`, run to
/// completion on a fresh token of its own (no PIN or store from the
/// environment): its JSON report.
fn bench_json(args: &[&str]) -> Value {
    let out = run_ok(
        Command::new(HSMCA)
            .args(["bench", "--json"])
            .args(args)
            .arg("--setup")
            .arg(repo().join("softhsm-setup/setup.sh"))
            .env_remove("HSMCA_PIN")
            .env_remove("HSMCA_STATE__DATABASE")
            .stdin(Stdio::null()),
    );
    serde_json::from_slice(&out.stdout).expect("bench --json prints JSON")
}

#[test]
fn bench_minimal_run_reports_every_figure() {
    let v = bench_json(&[
        "--keys",
        "p256",
        "--clients",
        "1",
        "--seconds",
        "1",
        "--wave",
        "20",
        "--csr-burst",
        "4",
        "--workloads",
        "10",
        "--no-peer",
    ]);
    number(&v, "machine.cpus");
    let r = field(&v, "results.0");
    assert_eq!(field(r, "key"), "p256");
    assert!(number(r, "raw.signs_per_s") > 0.0);
    assert!(number(r, "raw.cpu_us_per_sign") > 0.0);
    let run = field(r, "issuance.0");
    assert_eq!(number(run, "clients"), 1.0);
    assert!(number(run, "ok") > 0.0, "no certificate issued: {run:#}");
    assert_eq!(number(run, "errors"), 0.0, "{run:#}");
    for f in [
        "per_s",
        "latency.p50_ms",
        "latency.p90_ms",
        "latency.p99_ms",
        "latency.max_ms",
        "daemon_cpu_us_per_op",
        "daemon_peak_rss_kib",
        "throughput_ratio",
        "efficiency_ratio",
    ] {
        number(run, f);
    }
    for f in [
        "ready_ms",
        "token_ms",
        "ready_excluding_login_ms",
        "idle_rss_kib",
        "peak_rss_kib",
    ] {
        assert!(number(r, &format!("daemon.{f}")) > 0.0, "daemon.{f}");
    }
    assert!(number(r, "get_by_id.per_s") > 0.0);
    assert_eq!(number(r, "get_by_id.clients"), 16.0);
    assert_eq!(field(r, "replay.identical_replies"), true);
    number(r, "replay.speedup_ratio");
    assert_eq!(number(r, "wave.requests"), 20.0);
    assert_eq!(number(r, "wave.renewed"), 20.0);
    number(r, "wave.client_before.p99_ms");
    number(r, "wave.client_during_renewals.p99_ms");
    assert_eq!(number(r, "csr_burst.csrs_per_burst"), 4.0);
    assert!(number(r, "csr_burst.bursts") >= 1.0);
    assert_eq!(number(r, "csr_burst.burst_errors"), 0.0);
    number(r, "csr_burst.client_during.p99_ms");
    // Ten workloads, ten identities: one signature each at the cold start
    // and one each at the rotation, every workload sent its new SVID.
    let w = field(r, "workloads");
    assert_eq!(number(w, "workloads"), 10.0);
    assert_eq!(number(w, "workload_errors"), 0.0, "{w:#}");
    assert_eq!(number(w, "cold_start_signatures"), 10.0, "{w:#}");
    assert_eq!(number(w, "rotated"), 10.0, "{w:#}");
    assert_eq!(number(w, "rotation_signatures"), 10.0, "{w:#}");
    for f in [
        "cold_start_s",
        "token_sign_s",
        "keygen_s",
        "cold_start_ratio",
        "client_before.p99_ms",
        "client_during_rotation.p99_ms",
    ] {
        assert!(number(w, f) >= 0.0, "{f}");
    }
    assert!(number(w, "client_before_samples") > 0.0, "{w:#}");
    assert!(r.get("peer").is_none(), "--no-peer still ran the peer");
    let targets = field(r, "targets").as_array().unwrap();
    assert!(!targets.is_empty());
    for t in targets {
        field(t, "name");
        field(t, "measured");
        assert!(field(t, "met").is_boolean());
    }
}

/// `hsmca bench --store-fill N` on both engines: the store is grown to N
/// certificate records, its size is reported, and the daemon issues on it
/// as on the empty one (no errors on either).
#[test]
fn bench_store_fill_grows_the_store_and_issues_on_it() {
    for store in ["sqlite", "postgres"] {
        let v = bench_json(&[
            "--store-fill",
            "3000",
            "--store",
            store,
            "--keys",
            "p256",
            "--clients",
            "2",
            "--seconds",
            "0.5",
        ]);
        assert_eq!(field(&v, "store"), store);
        assert!(number(&v, "records") >= 3000.0, "{v:#}");
        assert!(number(&v, "bytes") > 0.0);
        assert!(number(&v, "bytes_per_million") > number(&v, "bytes"));
        for phase in ["empty", "filled"] {
            let run = field(&v, &format!("{phase}.0"));
            assert_eq!(number(run, "clients"), 2.0);
            assert!(number(run, "per_s") > 0.0, "{phase}: {run:#}");
            assert_eq!(number(run, "errors"), 0.0, "{phase}: {run:#}");
        }
    }
}

/// `hsmca bench --costs`: the cost model lists every part with a CPU
/// figure, and sets their sum against the measured total.
#[test]
fn bench_costs_breaks_a_certificate_into_its_parts() {
    let v = bench_json(&[
        "--costs",
        "--keys",
        "p256",
        "--clients",
        "4",
        "--seconds",
        "0.3",
    ]);
    assert_eq!(field(&v, "key"), "p256");
    assert!(number(&v, "total_cpu_us") > 0.0);
    assert!(number(&v, "certificates_per_s") > 0.0);
    let parts = field(&v, "parts").as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in [
        "token",
        "gRPC floor",
        "checks",
        "build",
        "hand-off",
        "store commit",
        "reply",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "{want} missing: {names:?}"
        );
    }
    let mut sum = 0.0;
    for p in parts {
        let cpu = p["cpu_us"].as_f64().unwrap();
        assert!(cpu > 0.0, "{p:#}");
        sum += cpu;
    }
    assert!((number(&v, "sum_cpu_us") - sum).abs() < 1e-6 * sum.max(1.0));
}
