//! `[server]` and `[metrics]`: the sockets, their modes and the bounds on
//! what a client may hold open.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, invalid};

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

    pub fn limits(&self) -> Limits {
        Limits {
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

/// Resource bounds of the gRPC socket: connections, streams, deadlines
/// (the server applies them; see `server::bounds`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_streams: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
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

impl MetricsConfig {
    pub fn socket_mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if parse_mode(&self.socket_mode).is_none() {
            return Err(invalid(
                "server.socket_mode",
                format!(
                    "{:?} is not an octal permission mode like \"0660\"",
                    self.socket_mode
                ),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_request_bytes) {
            return Err(invalid(
                "server.max_request_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(invalid("server.socket", "must not be empty"));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(invalid(
                "server.max_connections",
                "must be between 1 and 65536",
            ));
        }
        if !(1..=65_536).contains(&self.max_concurrent_streams) {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be between 1 and 65536",
            ));
        }
        for (key, d, min) in [
            ("server.request_timeout", self.request_timeout, 100),
            ("server.handshake_timeout", self.handshake_timeout, 100),
            ("server.idle_timeout", self.idle_timeout, 1000),
            ("server.keepalive_interval", self.keepalive_interval, 1000),
            ("server.keepalive_timeout", self.keepalive_timeout, 1000),
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
        Ok(())
    }
}

impl MetricsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if parse_mode(&self.socket_mode).is_none() {
            return Err(invalid(
                "metrics.socket_mode",
                format!(
                    "{:?} is not an octal permission mode like \"0660\"",
                    self.socket_mode
                ),
            ));
        }
        if let Some(l) = &self.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!("{l:?} is not an address and port like \"127.0.0.1:9464\""),
            ));
        }
        Ok(())
    }
}

pub(super) fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}
