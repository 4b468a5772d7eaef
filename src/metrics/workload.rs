//! The workload endpoint's metrics: SVIDs made, open streams, attestation
//! refusals. One struct, so the services on the workload socket (Workload
//! API, SDS, JWT) count in one place.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// `workload` (the SPIFFE Workload API) or `sds`.
    pub api: &'static str,
}

#[derive(Default)]
pub struct WorkloadMetrics {
    /// X509-SVIDs signed, first issues and rotations alike.
    pub svids_issued: Counter,
    /// X509-SVIDs signed to replace one of the same slot (rotation,
    /// revocation); a changed entry's first SVID counts as issued only.
    pub svids_rotated: Counter,
    /// SVIDs that could not be signed (retried).
    pub svid_failures: Counter,
    /// Streams open on the workload socket, by API.
    pub streams: Family<ApiLabels, Gauge>,
    /// Callers refused by attestation (exited, PID reused, unreadable).
    pub attestation_refusals: Counter,
    /// Calls refused because no registration entry matches the caller.
    pub denied: Counter,
}

impl WorkloadMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "hsmca_workload_svids_issued",
            "X509-SVIDs signed for workloads",
            self.svids_issued.clone(),
        );
        r.register(
            "hsmca_workload_svids_rotated",
            "X509-SVIDs signed to replace an earlier one (rotation, revocation)",
            self.svids_rotated.clone(),
        );
        r.register(
            "hsmca_workload_svid_failures",
            "X509-SVIDs that could not be signed (retried)",
            self.svid_failures.clone(),
        );
        // Both series exist from the start: a dashboard shows 0 open
        // streams, not no data, and the family is in every scrape.
        for api in ["workload", "sds"] {
            let _ = self.streams.get_or_create(&ApiLabels { api });
        }
        r.register(
            "hsmca_workload_streams",
            "Streams open on the workload socket, by API",
            self.streams.clone(),
        );
        r.register(
            "hsmca_workload_attestation_refusals",
            "Workload callers refused by attestation",
            self.attestation_refusals.clone(),
        );
        r.register(
            "hsmca_workload_denied",
            "Workload calls refused because no registration entry matches",
            self.denied.clone(),
        );
    }

    /// Counts a stream of `api` while the guard lives.
    pub fn stream(&'static self, api: &'static str) -> StreamGuard {
        let g = self.streams.get_or_create(&ApiLabels { api }).clone();
        g.inc();
        StreamGuard(g)
    }
}

/// Counts one open stream until dropped.
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
