//! `[state]` and `[log]`: where the store lives, how long request ids
//! replay, and what the daemon logs.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Holds the certificate store (`hsmca.db`).
    pub dir: PathBuf,
    /// How long a request_id replays its original reply.
    #[serde(with = "humantime_serde")]
    pub request_id_retention: Duration,
    /// How long the records of expired certificates (and audit entries)
    /// are kept; older ones are deleted in the background. Never shorter
    /// than `request_id_retention`, whose replies those records hold.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/hsmca"),
            request_id_retention: Duration::from_secs(3600),
            retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: "info", "hsmca=debug,info", …
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl StateConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.request_id_retention < Duration::from_secs(3600) {
            return Err(invalid(
                "state.request_id_retention",
                "must be at least 60m: clients may retry for an hour",
            ));
        }
        if self.retention < self.request_id_retention {
            return Err(invalid(
                "state.retention",
                format!(
                    "must be at least state.request_id_retention ({}): a retry must find \
                     the record it replays",
                    humantime::format_duration(self.request_id_retention)
                ),
            ));
        }
        Ok(())
    }
}
