//! `[requests]`: renewal of certificate requests and its background worker.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// The `CertificateRequests` service: renewal and its background worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// Share of a certificate's lifetime after which an auto_renew request
    /// gets its next certificate.
    pub renew_after: f64,
    /// At most this many renewals per identical set of names within
    /// `renewal_window`; further renewals wait.
    pub renewal_limit: u32,
    #[serde(with = "humantime_serde")]
    pub renewal_window: Duration,
    /// Certificates the background worker issues at once (first issues,
    /// re-issues, renewals). Bounds how much of the token a wave of
    /// renewals can take from interactive requests.
    pub workers: usize,
    /// Delay before retrying after a failure that can pass (token or store
    /// unavailable).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        Self {
            renew_after: 2.0 / 3.0,
            renewal_limit: 5,
            renewal_window: Duration::from_secs(3600),
            workers: 4,
            retry_after: Duration::from_secs(30),
        }
    }
}

impl RequestsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.renew_after > 0.0 && self.renew_after < 1.0) {
            return Err(invalid(
                "requests.renew_after",
                "must be a share of the lifetime between 0 and 1, like 0.67",
            ));
        }
        if self.renewal_limit == 0 {
            return Err(invalid("requests.renewal_limit", "must be at least 1"));
        }
        if self.renewal_window.is_zero() {
            return Err(invalid("requests.renewal_window", "must be positive"));
        }
        if !(1..=64).contains(&self.workers) {
            return Err(invalid("requests.workers", "must be between 1 and 64"));
        }
        if self.retry_after < Duration::from_secs(1) {
            return Err(invalid("requests.retry_after", "must be at least 1s"));
        }
        Ok(())
    }
}
