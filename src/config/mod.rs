//! Typed configuration: read once at start-up from TOML, overridden key by key
//! from `HSMCA_<SECTION>__<KEY>` environment variables, and validated before
//! anything touches the token, so a mistake stops the daemon with a message
//! that names the key.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

mod ca;
mod durations;
mod jwt;
mod policy;
mod requests;
mod server;
mod state;
mod token;
mod workload;

pub use self::{
    ca::{CaConfig, CrlConfig, DigestAlg, ProfileBounds, ProfilesConfig, RsaPadding},
    jwt::{JwtConfig, MAX_JWT_LIFETIME, MIN_JWT_LIFETIME},
    policy::{PolicyConfig, RuleConfig},
    requests::RequestsConfig,
    server::{Limits, MetricsConfig, ServerConfig},
    state::{Database, LogConfig, LogFormat, StateConfig},
    token::{KeyType, TokenConfig, TokenLocator},
    workload::{
        DEFAULT_TTL, EntryConfig, PLACEHOLDERS, WorkloadConfig, WorkloadKeyType, normal_form,
    },
};

/// Environment variables with this prefix and a `__` separator override
/// config keys: `HSMCA_TOKEN__SESSIONS=4` sets `token.sessions`.
const ENV_PREFIX: &str = "HSMCA_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("config key {key}: {message}")]
    InvalidAt { key: String, message: String },
}

pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub token: TokenConfig,
    pub ca: CaConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub profiles: ProfilesConfig,
    #[serde(default)]
    pub crl: CrlConfig,
    #[serde(default)]
    pub requests: RequestsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub workload: WorkloadConfig,
}

impl Config {
    /// Where the metrics socket is, when the endpoint is enabled.
    pub fn metrics_socket(&self) -> Option<PathBuf> {
        if !self.metrics.enabled {
            return None;
        }
        Some(match &self.metrics.socket {
            Some(p) => p.clone(),
            None => self.server.socket.with_file_name("hsmca-metrics.sock"),
        })
    }
}

impl Config {
    /// Reads `path`, applies `HSMCA_<SECTION>__<KEY>` overrides from the
    /// process environment, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_with_env(&text, path, env)
    }

    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        // Only `HSMCA_<SECTION>__<KEY>` names are config overrides; other
        // HSMCA_ variables (HSMCA_PIN, HSMCA_SOCKET) are not config keys.
        let overrides: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(ENV_PREFIX)
                    .is_some_and(|rest| rest.contains("__") && !rest.starts_with('_'))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let parse_err = |e: config::ConfigError| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("HSMCA")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(parse_err)?;
        let cfg: Config = raw.try_deserialize().map_err(parse_err)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Each section checks itself; what spans sections is checked here.
    /// (The policy's rules are compiled, and so checked, by the policy
    /// module at start-up and on every reload.)
    fn validate(&self) -> Result<(), ConfigError> {
        durations::check(self)?;
        self.server.validate()?;
        self.metrics.validate()?;
        if self.metrics.enabled
            && self.metrics_socket().as_deref() == Some(self.server.socket.as_path())
        {
            return Err(invalid("metrics.socket", "must differ from server.socket"));
        }
        self.token.validate()?;
        self.ca.validate()?;
        self.state.validate()?;
        self.crl.validate()?;
        self.requests.validate()?;
        self.workload.validate()?;
        if self.workload.enabled() {
            let ca_label = self.token.locator()?.key_label;
            self.workload.jwt.validate(ca_label.as_deref())?;
        }
        if self.workload.socket.as_deref() == Some(self.server.socket.as_path())
            || (self.workload.enabled() && self.workload.socket == self.metrics_socket())
        {
            return Err(invalid(
                "workload.socket",
                "must differ from server.socket and metrics.socket",
            ));
        }
        self.profiles.validate()
    }
}

#[cfg(test)]
mod tests;
