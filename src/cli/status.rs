//! `hsmca status`: scrapes the daemon's metrics endpoint and prints a
//! summary a person can read at a glance.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CliResult;
use crate::{config::Config, metrics::summary::Scrape};

/// Where the metrics socket is when neither option names it.
pub const DEFAULT_METRICS_SOCKET: &str = "/run/hsmca/hsmca-metrics.sock";
const TIMEOUT: Duration = Duration::from_secs(10);
/// A scrape is a few KiB; anything far larger is not ours.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Read the metrics socket from this config file (metrics.socket).
    #[arg(long, short, conflicts_with = "metrics_socket")]
    pub config: Option<PathBuf>,
    /// The daemon's metrics socket.
    #[arg(long, env = "HSMCA_METRICS_SOCKET")]
    pub metrics_socket: Option<PathBuf>,
    /// Print the scraped exposition as it came instead of the summary.
    #[arg(long)]
    pub raw: bool,
}

pub async fn status(args: StatusArgs) -> CliResult {
    let socket = match (&args.metrics_socket, &args.config) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => Config::load(c)?
            .metrics_socket()
            .ok_or("the metrics endpoint is disabled in this config (metrics.enabled = false)")?,
        (None, None) => PathBuf::from(DEFAULT_METRICS_SOCKET),
    };
    let text = scrape(&socket).await?;
    if args.raw {
        print!("{text}");
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        print!("{}", summarize(&Scrape::parse(&text), &socket, now));
    }
    Ok(())
}

/// `GET /metrics` over the Unix socket; the body of a 200 reply.
pub async fn scrape(socket: &Path) -> CliResult<String> {
    let fetch = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "cannot connect to the metrics socket {}: {e}",
                socket.display()
            )
        })?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        CliResult::Ok(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, fetch).await.map_err(|_| {
        format!(
            "the metrics socket {} did not answer within {TIMEOUT:?}",
            socket.display()
        )
    })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the metrics endpoint sent no complete HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the metrics endpoint answered {status:?}").into());
    }
    Ok(body.to_owned())
}

fn ms(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{:.0} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

fn count(v: f64) -> String {
    format!("{}", v.round() as i64)
}

fn breakdown(s: &Scrape, name: &str, by: &str) -> String {
    let parts: Vec<String> = s
        .by_label(name, by)
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| format!("{k} {}", count(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("  ({})", parts.join(", "))
    }
}

/// The summary `hsmca status` prints.
pub fn summarize(s: &Scrape, socket: &Path, now_unix: f64) -> String {
    let mut out = format!("hsmca status (from {})\n", socket.display());
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<15} {v}\n"));
    if let Some(start) = s.get("hsmca_start_time_seconds") {
        let up = Duration::from_secs((now_unix - start).max(0.0) as u64);
        line("uptime", humantime::format_duration(up).to_string());
    }
    let token = match s.get("hsmca_token_ready") {
        Some(v) if v >= 1.0 => "ready",
        Some(_) => "UNAVAILABLE (reconnecting)",
        None => "unknown",
    };
    line(
        "token",
        format!(
            "{token}; {} faults, {} recoveries",
            count(s.sum("hsmca_token_faults_total")),
            count(s.sum("hsmca_token_recoveries_total"))
        ),
    );
    line(
        "issued",
        format!(
            "{}{}",
            count(s.sum("hsmca_certificates_issued_total")),
            breakdown(s, "hsmca_certificates_issued_total", "profile")
        ),
    );
    line(
        "refused",
        format!(
            "{}{}",
            count(s.sum("hsmca_certificates_refused_total")),
            breakdown(s, "hsmca_certificates_refused_total", "code")
        ),
    );
    line(
        "jwt-svids",
        format!("{} signed", count(s.sum("hsmca_jwt_svids_signed_total"))),
    );
    line(
        "signer",
        format!(
            "{} queued (of {}), {} of {} sessions busy",
            count(s.sum("hsmca_signer_queue_depth")),
            count(s.sum("hsmca_signer_queue_capacity")),
            count(s.sum("hsmca_signer_sessions_busy")),
            count(s.sum("hsmca_signer_sessions")),
        ),
    );
    let signs = s.sum("hsmca_sign_duration_seconds_count");
    line(
        "sign latency",
        match (
            s.quantile("hsmca_sign_duration_seconds", 0.5),
            s.quantile("hsmca_sign_duration_seconds", 0.99),
        ) {
            (Some(p50), Some(p99)) => format!(
                "p50 {}, p99 {}  ({} signatures)",
                ms(p50),
                ms(p99),
                count(signs)
            ),
            _ => "no signatures yet".into(),
        },
    );
    let commits = s.sum("hsmca_store_commit_duration_seconds_count");
    line(
        "store commit",
        match s.quantile("hsmca_store_commit_duration_seconds", 0.99) {
            Some(p99) => format!(
                "p99 {}  ({} commits, {} records)",
                ms(p99),
                count(commits),
                count(s.sum("hsmca_store_committed_records_total"))
            ),
            None => "no commits yet".into(),
        },
    );
    line(
        "connections",
        format!(
            "{} open{}",
            count(s.sum("hsmca_connections")),
            match breakdown(s, "hsmca_connections_closed_total", "reason") {
                b if b.is_empty() => String::new(),
                b => format!("; closed by a bound:{b}"),
            }
        ),
    );
    line(
        "deadlines",
        format!(
            "{} calls exceeded server.request_timeout",
            count(s.sum("hsmca_deadline_exceeded_total"))
        ),
    );
    line(
        "watched",
        format!(
            "{} certificate requests",
            count(s.sum("hsmca_watched_requests"))
        ),
    );
    line(
        "workloads",
        format!(
            "{} SVIDs issued ({} rotations, {} failures); {} streams open{}; {} attestation refusals, {} denied",
            count(s.sum("hsmca_workload_svids_issued_total")),
            count(s.sum("hsmca_workload_svids_rotated_total")),
            count(s.sum("hsmca_workload_svid_failures_total")),
            count(s.sum("hsmca_workload_streams")),
            breakdown(s, "hsmca_workload_streams", "api"),
            count(s.sum("hsmca_workload_attestation_refusals_total")),
            count(s.sum("hsmca_workload_denied_total")),
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_like_a_report() {
        let text = "\
hsmca_start_time_seconds 1000
hsmca_token_ready 1
hsmca_token_recoveries_total 2
hsmca_certificates_issued_total{profile=\"client\"} 40
hsmca_certificates_issued_total{profile=\"server\"} 2
hsmca_certificates_refused_total{code=\"INVALID_ARGUMENT\",profile=\"client\"} 3
hsmca_signer_sessions 2
hsmca_jwt_svids_signed_total 7
hsmca_signer_queue_capacity 4096
hsmca_sign_duration_seconds_count 42
hsmca_sign_duration_seconds_bucket{le=\"0.001\"} 21
hsmca_sign_duration_seconds_bucket{le=\"0.002\"} 42
hsmca_sign_duration_seconds_bucket{le=\"+Inf\"} 42
";
        let out = summarize(&Scrape::parse(text), Path::new("/m.sock"), 4661.0);
        assert!(out.contains("uptime          1h 1m 1s"), "{out}");
        assert!(
            out.contains("token           ready; 0 faults, 2 recoveries"),
            "{out}"
        );
        assert!(
            out.contains("issued          42  (client 40, server 2)"),
            "{out}"
        );
        assert!(
            out.contains("refused         3  (INVALID_ARGUMENT 3)"),
            "{out}"
        );
        assert!(
            out.contains("p50 1.0 ms, p99 2.0 ms  (42 signatures)"),
            "{out}"
        );
        assert!(out.contains("0 of 2 sessions busy"), "{out}");
        assert!(out.contains("jwt-svids       7 signed"), "{out}");
        assert!(out.contains("no commits yet"), "{out}");
    }
}
