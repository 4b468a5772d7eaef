//! The daemon's Prometheus metrics: one process-wide set of counters,
//! gauges and histograms that the request path, the signing threads, the
//! token's recovery thread and the store's commit writer update with atomic
//! operations, exposed as text on a listener of its own ([`http`]) and
//! summarised for a person by `hsmca status` ([`summary`]).
//!
//! Label values never come from client input verbatim: profiles outside
//! `client`/`server` count as `other`, codes are the gRPC code names, so a
//! client cannot grow the set of series.

pub mod http;
pub mod summary;
pub mod workload;

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    pub profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub code: &'static str,
    pub profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Buckets (seconds) for one C_Sign: 50 µs to 5 s.
const SIGN_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// Buckets (seconds) for one store commit: 100 µs to 10 s.
const COMMIT_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

pub struct Metrics {
    registry: Registry,
    /// GenerateClientCertificate replies with a new certificate.
    pub issued: Family<ProfileLabels, Counter>,
    /// GenerateClientCertificate failures, by gRPC code.
    pub refused: Family<RefusedLabels, Counter>,
    /// Time of each successful C_Sign, measured on the signing thread.
    pub sign_seconds: Histogram,
    /// Signing jobs queued and not yet taken by a signing thread.
    pub signer_queue: Gauge,
    /// Signing threads (sessions) inside a signing job right now.
    pub signer_busy: Gauge,
    pub signer_sessions: Gauge,
    pub signer_queue_capacity: Gauge,
    /// 1 while the token can sign, 0 from a token-level fault until the
    /// rebuild succeeds.
    pub token_ready: Gauge,
    pub token_faults: Counter,
    pub token_recoveries: Counter,
    /// Time of each group commit of certificate records (the transaction,
    /// from BEGIN to a durable COMMIT).
    pub store_commit_seconds: Histogram,
    pub store_commit_records: Counter,
    /// gRPC connections open now.
    pub connections: Gauge,
    /// gRPC connections closed by a bound: `limit` (over
    /// server.max_connections), `handshake` (no HTTP/2 preface in time),
    /// `idle` (no request for server.idle_timeout).
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Unary calls that hit server.request_timeout.
    pub deadline_exceeded: Counter,
    /// Certificate requests with at least one open Watch (set at each
    /// scrape).
    pub watchers: Gauge,
    /// Unix time the daemon started.
    pub start_time: Gauge,
    /// The workload endpoint (SPIFFE Workload API, SDS).
    pub workload: workload::WorkloadMetrics,
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            issued: Family::default(),
            refused: Family::default(),
            sign_seconds: Histogram::new(SIGN_BUCKETS),
            signer_queue: Gauge::default(),
            signer_busy: Gauge::default(),
            signer_sessions: Gauge::default(),
            signer_queue_capacity: Gauge::default(),
            token_ready: Gauge::default(),
            token_faults: Counter::default(),
            token_recoveries: Counter::default(),
            store_commit_seconds: Histogram::new(COMMIT_BUCKETS),
            store_commit_records: Counter::default(),
            connections: Gauge::default(),
            connections_closed: Family::default(),
            deadline_exceeded: Counter::default(),
            watchers: Gauge::default(),
            start_time: Gauge::default(),
            workload: workload::WorkloadMetrics::default(),
            registry: Registry::default(),
        };
        m.workload.register(&mut r);
        r.register(
            "hsmca_certificates_issued",
            "Certificates issued by GenerateClientCertificate",
            m.issued.clone(),
        );
        r.register(
            "hsmca_certificates_refused",
            "GenerateClientCertificate calls that failed, by gRPC code",
            m.refused.clone(),
        );
        r.register(
            "hsmca_sign_duration_seconds",
            "Time of one C_Sign on the token",
            m.sign_seconds.clone(),
        );
        r.register(
            "hsmca_signer_queue_depth",
            "Signing jobs waiting for a session",
            m.signer_queue.clone(),
        );
        r.register(
            "hsmca_signer_queue_capacity",
            "Jobs the signing queue holds before requests fail with RESOURCE_EXHAUSTED",
            m.signer_queue_capacity.clone(),
        );
        r.register(
            "hsmca_signer_sessions_busy",
            "Signing sessions working on a job",
            m.signer_busy.clone(),
        );
        r.register(
            "hsmca_signer_sessions",
            "Signing sessions (one thread each)",
            m.signer_sessions.clone(),
        );
        r.register(
            "hsmca_token_ready",
            "1 while the token can sign, 0 while it is being reconnected",
            m.token_ready.clone(),
        );
        r.register(
            "hsmca_token_faults",
            "Token-level faults that made the token unavailable",
            m.token_faults.clone(),
        );
        r.register(
            "hsmca_token_recoveries",
            "Successful token rebuilds after a fault",
            m.token_recoveries.clone(),
        );
        r.register(
            "hsmca_store_commit_duration_seconds",
            "Time of one group commit of certificate records",
            m.store_commit_seconds.clone(),
        );
        r.register(
            "hsmca_store_committed_records",
            "Certificate records committed",
            m.store_commit_records.clone(),
        );
        r.register(
            "hsmca_connections",
            "gRPC connections open",
            m.connections.clone(),
        );
        r.register(
            "hsmca_connections_closed",
            "gRPC connections closed by a resource bound, by reason",
            m.connections_closed.clone(),
        );
        r.register(
            "hsmca_deadline_exceeded",
            "Calls that exceeded server.request_timeout",
            m.deadline_exceeded.clone(),
        );
        r.register(
            "hsmca_watched_requests",
            "Certificate requests with at least one open WatchCertificateRequest stream",
            m.watchers.clone(),
        );
        r.register(
            "hsmca_start_time_seconds",
            "Unix time the daemon started",
            m.start_time.clone(),
        );
        Self { registry: r, ..m }
    }

    /// The text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn mark_started(&self) {
        self.start_time.set(crate::time::unix_now());
    }

    /// Counts one GenerateClientCertificate outcome.
    /// `outcome` is the gRPC code name of a refusal (`INVALID_ARGUMENT`, …).
    pub fn count_issue(&self, profile: &str, outcome: Result<(), &'static str>) {
        let profile = profile_label(profile);
        match outcome {
            Ok(()) => {
                self.issued.get_or_create(&ProfileLabels { profile }).inc();
            }
            Err(code) => {
                self.refused
                    .get_or_create(&RefusedLabels { code, profile })
                    .inc();
            }
        }
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A profile name as a label value: the request's own only when it is one
/// hsmca knows (absent means `client`).
pub fn profile_label(p: &str) -> &'static str {
    match p {
        "" | "client" => "client",
        "server" => "server",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_labels_and_buckets() {
        let m = Metrics::new();
        m.count_issue("", Ok(()));
        m.count_issue("server", Ok(()));
        m.count_issue("made-up", Err("INVALID_ARGUMENT"));
        m.sign_seconds.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains("hsmca_certificates_issued_total{profile=\"client\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "hsmca_certificates_refused_total{code=\"INVALID_ARGUMENT\",profile=\"other\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("hsmca_sign_duration_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        let s = summary::Scrape::parse(&text);
        assert_eq!(s.sum("hsmca_certificates_issued_total"), 2.0);
    }
}
