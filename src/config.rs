//! Typed configuration: read once at start-up from TOML, overridden key by key
//! from `HSMCA_<SECTION>__<KEY>` environment variables, and validated before
//! anything touches the token, so a mistake stops the daemon with a message
//! that names the key.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::pkcs11_uri::Pkcs11Uri;

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

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
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
}

/// The Prometheus endpoint: `GET /metrics` on a Unix socket of its own
/// (and optionally a TCP address).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// The metrics socket; unset means `hsmca-metrics.sock` next to
    /// `server.socket`.
    pub socket: Option<PathBuf>,
    /// Octal permission bits of the metrics socket file.
    pub socket_mode: String,
    /// Also serve on this TCP address, e.g. "127.0.0.1:9464" (off unless
    /// set).
    pub listen: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: None,
            socket_mode: "0660".into(),
            listen: None,
        }
    }
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

/// Who may have which certificates. Default deny: a caller no rule matches
/// gets nothing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub rules: Vec<RuleConfig>,
}

/// One policy rule: whom it matches, and what it grants them. A request is
/// granted by the first rule, in file order, that matches the caller and
/// allows its profile and every one of its names; that rule's duration cap,
/// rate and quota then apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in logs and refusals.
    pub name: String,
    /// Matches every caller whose credentials could be read.
    #[serde(default)]
    pub everyone: bool,
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Primary or supplementary group ids.
    #[serde(default)]
    pub gids: Vec<u32>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `client`, `server`, `intermediate` (the last needs `admin`).
    #[serde(default = "default_rule_profiles")]
    pub profiles: Vec<String>,
    /// Subject common names: exact text, or `**` for any. A common name that
    /// is a DNS name allowed by `dns` is allowed too.
    #[serde(default)]
    pub common_names: Vec<String>,
    /// DNS names: `host.example`, `*.svc.example` (one label),
    /// `**.svc.example` (one or more labels), `**` (any).
    #[serde(default)]
    pub dns: Vec<String>,
    /// URIs: `spiffe://example.org/ns/{user}/*` (`*` one path segment,
    /// trailing `**` the rest), `**` (any).
    #[serde(default)]
    pub uris: Vec<String>,
    /// IP networks in CIDR notation, or `**` for any address.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Whether wildcard DNS names (`*.svc.example`) may be requested.
    #[serde(default)]
    pub allow_wildcards: bool,
    /// Caps the requested lifetime.
    #[serde(default, with = "humantime_serde::option")]
    pub max_duration: Option<Duration>,
    /// Sustained requests per second per caller (token bucket).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Bucket size: requests allowed at once (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Live (unexpired, unrevoked) certificates per caller.
    #[serde(default)]
    pub max_live: Option<u64>,
    /// Deleting certificate requests, seeing everyone's records, and the
    /// intermediate profile.
    #[serde(default)]
    pub admin: bool,
}

fn default_rule_profiles() -> Vec<String> {
    vec!["client".into()]
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrlConfig {
    /// nextUpdate − thisUpdate. A new CRL is made at the middle of this
    /// period and after every revocation.
    #[serde(with = "humantime_serde")]
    pub validity: Duration,
}

impl Default for CrlConfig {
    fn default() -> Self {
        Self {
            validity: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Unix socket the gRPC API listens on.
    pub socket: PathBuf,
    /// Octal permission bits of the socket file, e.g. "0660".
    pub socket_mode: String,
    /// Largest accepted gRPC request message, in bytes.
    pub max_request_bytes: usize,
    /// How long shutdown waits for in-flight requests before giving up.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls, including Watch streams) per
    /// connection.
    pub max_concurrent_streams: u32,
    /// A call must be answered within this (a stream: its first response
    /// headers), else DEADLINE_EXCEEDED.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A new connection must send the HTTP/2 preface within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection with no call in progress for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval on every connection, and how long to wait for
    /// the answer before closing it (a dead peer).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/hsmca/hsmca.sock"),
            socket_mode: "0660".into(),
            max_request_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            max_connections: 1024,
            max_concurrent_streams: 256,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl ServerConfig {
    /// The socket mode as permission bits (validated at load time).
    pub fn socket_mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }

    pub fn limits(&self) -> crate::server::bounds::Limits {
        crate::server::bounds::Limits {
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
        }
    }
}

impl MetricsConfig {
    pub fn socket_mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Path of the PKCS#11 module (shared library).
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// RFC 7512 URI naming the token and key, e.g.
    /// `pkcs11:token=hsmca;object=hsmca-ca;id=%01`. Its attributes fill in
    /// `token_label`, `key_label` and `key_id` when those are not set.
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub token_label: Option<String>,
    #[serde(default)]
    pub key_label: Option<String>,
    /// CKA_ID of the CA key, as hex.
    #[serde(default)]
    pub key_id: Option<String>,
    /// File holding the user PIN; must not be readable by group or others.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Name of the systemd credential holding the PIN (`LoadCredential=`).
    #[serde(default = "default_pin_credential")]
    pub pin_credential: String,
    /// Number of PKCS#11 sessions, each driven by its own signing thread.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Depth of the queue in front of the signing threads; a full queue
    /// fails requests fast instead of growing without bound.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
}

fn default_pin_credential() -> String {
    "hsmca-pin".into()
}
fn default_sessions() -> usize {
    2
}
fn default_queue_depth() -> usize {
    4096
}

/// The token coordinates after merging the URI with the explicit keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLocator {
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: Option<String>,
    pub key_id: Option<Vec<u8>>,
}

impl TokenConfig {
    pub fn locator(&self) -> Result<TokenLocator, ConfigError> {
        let uri = match &self.uri {
            Some(u) => Some(Pkcs11Uri::parse(u).map_err(|e| invalid("token.uri", e.to_string()))?),
            None => None,
        };
        let module = self
            .module
            .clone()
            .or_else(|| uri.as_ref().and_then(|u| u.module_path.clone()))
            .ok_or_else(|| invalid("token.module", "the PKCS#11 module path is required"))?;
        let token_label = self
            .token_label
            .clone()
            .or_else(|| uri.as_ref().and_then(|u| u.token.clone()))
            .ok_or_else(|| {
                invalid(
                    "token.token_label",
                    "name the token by token_label or by token= in token.uri",
                )
            })?;
        let key_label = self
            .key_label
            .clone()
            .or_else(|| uri.as_ref().and_then(|u| u.object.clone()));
        let key_id = match &self.key_id {
            Some(hex_id) => Some(
                hex::decode(hex_id.trim_start_matches("0x"))
                    .map_err(|_| invalid("token.key_id", "must be hex, e.g. \"01\""))?,
            ),
            None => uri.as_ref().and_then(|u| u.id.clone()),
        };
        if key_label.is_none() && key_id.is_none() {
            return Err(invalid(
                "token.key_label",
                "name the CA key by key_label and/or key_id (or object=/id= in token.uri)",
            ));
        }
        if key_id.as_ref().is_some_and(|id| id.is_empty()) {
            return Err(invalid("token.key_id", "must not be empty"));
        }
        Ok(TokenLocator {
            module,
            token_label,
            key_label,
            key_id,
        })
    }
}

/// Key types a CA key may have. Ed25519 is absent on purpose: it cannot sign
/// a pre-computed digest, and the token only ever sees digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    P256,
    P384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
    pub fn rsa_bits(self) -> Option<u64> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RsaPadding {
    /// RSASSA-PKCS1-v1_5 (CKM_RSA_PKCS over a DigestInfo).
    #[default]
    Pkcs1,
    /// RSASSA-PSS (CKM_RSA_PKCS_PSS over the digest), salt = digest length.
    Pss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlg {
    Sha256,
    Sha384,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    pub key_type: KeyType,
    #[serde(default)]
    pub rsa_padding: RsaPadding,
    /// Hash for an RSA CA (EC CAs use the curve's own: SHA-256 for P-256,
    /// SHA-384 for P-384).
    #[serde(default)]
    pub digest: Option<DigestAlg>,
    /// Subject of the CA certificate made by `hsmca init`, RFC 4514 form.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The issuing CA certificate (written by `hsmca init`).
    pub certificate: PathBuf,
    /// The issuers above the CA certificate, nearest first, when the CA is an
    /// intermediate (written by `hsmca init --import-chain`).
    #[serde(default)]
    pub chain: Option<PathBuf>,
    /// Lifetime of the self-signed root made by `hsmca init`.
    #[serde(default = "default_ca_validity", with = "humantime_serde")]
    pub validity: Duration,
    /// CRL distribution point written into issued certificates, if any.
    #[serde(default)]
    pub crl_url: Option<String>,
    /// How far notBefore is set in the past, to tolerate clock skew between
    /// this host and relying parties.
    #[serde(default = "default_backdate", with = "humantime_serde")]
    pub backdate: Duration,
}

fn default_subject() -> String {
    "CN=hsmca CA".into()
}
fn default_ca_validity() -> Duration {
    Duration::from_secs(10 * 365 * 24 * 3600)
}
fn default_backdate() -> Duration {
    Duration::from_secs(60)
}

impl CaConfig {
    pub fn digest(&self) -> DigestAlg {
        match self.key_type {
            KeyType::P256 => DigestAlg::Sha256,
            KeyType::P384 => DigestAlg::Sha384,
            _ => self.digest.unwrap_or(DigestAlg::Sha256),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Holds the certificate store (`hsmca.db`).
    pub dir: PathBuf,
    /// How long a request_id replays its original reply.
    #[serde(with = "humantime_serde")]
    pub request_id_retention: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/hsmca"),
            request_id_retention: Duration::from_secs(3600),
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

/// Lifetime bounds of each certificate profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    pub client: ProfileBounds,
    pub server: ProfileBounds,
    #[serde(default = "intermediate_bounds")]
    pub intermediate: ProfileBounds,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        Self {
            client: ProfileBounds::default(),
            server: ProfileBounds::default(),
            intermediate: intermediate_bounds(),
        }
    }
}

/// Intermediates (for mesh agents) live a day by default, at most a week.
fn intermediate_bounds() -> ProfileBounds {
    ProfileBounds {
        default_duration: Duration::from_secs(24 * 3600),
        min_duration: Duration::from_secs(3600),
        max_duration: Duration::from_secs(7 * 24 * 3600),
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileBounds {
    #[serde(with = "humantime_serde")]
    pub default_duration: Duration,
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
}

impl Default for ProfileBounds {
    fn default() -> Self {
        Self {
            default_duration: Duration::from_secs(24 * 3600),
            min_duration: Duration::from_secs(3600),
            max_duration: Duration::from_secs(24 * 3600),
        }
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

    fn validate(&self) -> Result<(), ConfigError> {
        if parse_mode(&self.server.socket_mode).is_none() {
            return Err(invalid(
                "server.socket_mode",
                format!(
                    "{:?} is not an octal permission mode like \"0660\"",
                    self.server.socket_mode
                ),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.server.max_request_bytes) {
            return Err(invalid(
                "server.max_request_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if self.server.socket.as_os_str().is_empty() {
            return Err(invalid("server.socket", "must not be empty"));
        }
        let s = &self.server;
        if !(1..=65_536).contains(&s.max_connections) {
            return Err(invalid(
                "server.max_connections",
                "must be between 1 and 65536",
            ));
        }
        if !(1..=65_536).contains(&s.max_concurrent_streams) {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be between 1 and 65536",
            ));
        }
        for (key, d, min) in [
            ("server.request_timeout", s.request_timeout, 100),
            ("server.handshake_timeout", s.handshake_timeout, 100),
            ("server.idle_timeout", s.idle_timeout, 1000),
            ("server.keepalive_interval", s.keepalive_interval, 1000),
            ("server.keepalive_timeout", s.keepalive_timeout, 1000),
        ] {
            if d < Duration::from_millis(min) {
                return Err(invalid(
                    key,
                    format!(
                        "must be at least {}",
                        humantime::format_duration(Duration::from_millis(min))
                    ),
                ));
            }
        }
        if parse_mode(&self.metrics.socket_mode).is_none() {
            return Err(invalid(
                "metrics.socket_mode",
                format!(
                    "{:?} is not an octal permission mode like \"0660\"",
                    self.metrics.socket_mode
                ),
            ));
        }
        if let Some(l) = &self.metrics.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!("{l:?} is not an address and port like \"127.0.0.1:9464\""),
            ));
        }
        if self.metrics.enabled
            && self.metrics_socket().as_deref() == Some(self.server.socket.as_path())
        {
            return Err(invalid("metrics.socket", "must differ from server.socket"));
        }
        self.token.locator()?;
        if !(1..=64).contains(&self.token.sessions) {
            return Err(invalid("token.sessions", "must be between 1 and 64"));
        }
        if !(1..=1_000_000).contains(&self.token.queue_depth) {
            return Err(invalid(
                "token.queue_depth",
                "must be between 1 and 1000000",
            ));
        }
        if self.token.pin_credential.is_empty() || self.token.pin_credential.contains('/') {
            return Err(invalid(
                "token.pin_credential",
                "must be a plain credential name without '/'",
            ));
        }
        if !self.ca.key_type.is_rsa() {
            if self.ca.rsa_padding != RsaPadding::Pkcs1 {
                return Err(invalid(
                    "ca.rsa_padding",
                    "applies only to RSA CA keys; remove it for an EC key",
                ));
            }
            if self.ca.digest.is_some_and(|d| d != self.ca.digest()) {
                return Err(invalid(
                    "ca.digest",
                    "an EC CA uses its curve's hash (P-256: sha256, P-384: sha384)",
                ));
            }
        }
        crate::names::parse_subject(&self.ca.subject)
            .map_err(|e| invalid("ca.subject", e.to_string()))?;
        if self.state.request_id_retention < Duration::from_secs(3600) {
            return Err(invalid(
                "state.request_id_retention",
                "must be at least 60m: clients may retry for an hour",
            ));
        }
        if self.crl.validity < Duration::from_secs(600) {
            return Err(invalid("crl.validity", "must be at least 10m"));
        }
        if let Some(url) = &self.ca.crl_url
            && !(url.starts_with("http://") && url.is_ascii())
        {
            return Err(invalid(
                "ca.crl_url",
                "must be an http:// URL (RFC 5280 CRL distribution points are fetched without TLS)",
            ));
        }
        if self.ca.backdate > Duration::from_secs(24 * 3600) {
            return Err(invalid("ca.backdate", "must be at most 24h"));
        }
        if self.ca.validity < Duration::from_secs(24 * 3600) {
            return Err(invalid("ca.validity", "must be at least 24h"));
        }
        crate::policy::Policy::compile(&self.policy)?;
        let r = &self.requests;
        if !(r.renew_after > 0.0 && r.renew_after < 1.0) {
            return Err(invalid(
                "requests.renew_after",
                "must be a share of the lifetime between 0 and 1, like 0.67",
            ));
        }
        if r.renewal_limit == 0 {
            return Err(invalid("requests.renewal_limit", "must be at least 1"));
        }
        if r.renewal_window.is_zero() {
            return Err(invalid("requests.renewal_window", "must be positive"));
        }
        if !(1..=64).contains(&r.workers) {
            return Err(invalid("requests.workers", "must be between 1 and 64"));
        }
        if r.retry_after < Duration::from_secs(1) {
            return Err(invalid("requests.retry_after", "must be at least 1s"));
        }
        for (key, b) in [
            ("profiles.client", &self.profiles.client),
            ("profiles.server", &self.profiles.server),
            ("profiles.intermediate", &self.profiles.intermediate),
        ] {
            if b.min_duration.is_zero()
                || b.min_duration > b.max_duration
                || b.default_duration < b.min_duration
                || b.default_duration > b.max_duration
            {
                return Err(invalid(
                    key,
                    "needs 0 < min_duration <= default_duration <= max_duration",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
        let c = load(include_str!("../hsmca.example.toml"), &[]).unwrap();
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
}
