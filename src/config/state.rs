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
    /// Which database holds the records: absent or `sqlite:` for the
    /// SQLite file in `dir`; `postgres://USER@HOST[:PORT]/DB[?…]` (or
    /// `?host=/socket/dir`) for a PostgreSQL server shared by several
    /// daemons. Never a password: see `database_password_file`.
    pub database: Option<String>,
    /// The PostgreSQL password, read from this file (mode 0600 or stricter).
    pub database_password_file: Option<PathBuf>,
    /// …or from this systemd credential (`LoadCredential=`), when
    /// `$CREDENTIALS_DIRECTORY` holds it.
    pub database_password_credential: String,
    /// PostgreSQL connections per daemon.
    pub database_connections: u32,
    /// How long a request waits for a PostgreSQL connection (and start-up
    /// for the server) before it fails UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub database_timeout: Duration,
    /// How long the records of expired certificates (and audit entries)
    /// are kept; older ones are deleted in the background. Never shorter
    /// than `request_id_retention`, whose replies those records hold.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

/// The database `state.database` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `state.dir/hsmca.db`.
    Sqlite,
    /// A PostgreSQL connection URL, without a password.
    Postgres(String),
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/hsmca"),
            request_id_retention: Duration::from_secs(3600),
            database: None,
            database_password_file: None,
            database_password_credential: "hsmca-db-password".into(),
            database_connections: 16,
            database_timeout: Duration::from_secs(5),
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
        self.database()?;
        if !(2..=1000).contains(&self.database_connections) {
            return Err(invalid(
                "state.database_connections",
                "must be between 2 and 1000",
            ));
        }
        if self.database_timeout < Duration::from_millis(100)
            || self.database_timeout > Duration::from_secs(600)
        {
            return Err(invalid(
                "state.database_timeout",
                "must be between 100ms and 10m",
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

    /// The database `state.database` names, checked: a known scheme, and
    /// no password in the URL (it would end up in logs and `ps`-visible
    /// config dumps; the password comes from a file or a credential).
    pub fn database(&self) -> Result<Database, ConfigError> {
        let Some(text) = self.database.as_deref().map(str::trim) else {
            return Ok(Database::Sqlite);
        };
        if text == "sqlite:" || text == "sqlite://" || text.is_empty() {
            return Ok(Database::Sqlite);
        }
        if text.starts_with("sqlite:") {
            return Err(invalid(
                "state.database",
                "the SQLite store is always the file hsmca.db in state.dir: write \"sqlite:\" \
                 (or leave state.database out) and set state.dir",
            ));
        }
        let url = url::Url::parse(text).map_err(|e| {
            invalid(
                "state.database",
                format!("not a database URL ({e}); use sqlite: or postgres://USER@HOST/DATABASE"),
            )
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(
                "state.database",
                format!(
                    "unknown database kind {:?}: use sqlite: or postgres://USER@HOST/DATABASE",
                    url.scheme()
                ),
            ));
        }
        if url.password().is_some() || url.query_pairs().any(|(k, _)| k == "password") {
            return Err(invalid(
                "state.database",
                "the URL carries a password; put it in the file named by \
                 state.database_password_file or in the systemd credential \
                 state.database_password_credential instead",
            ));
        }
        if url.path().trim_start_matches('/').is_empty()
            && !url.query_pairs().any(|(k, _)| k == "dbname")
        {
            return Err(invalid(
                "state.database",
                "names no database: postgres://USER@HOST/DATABASE",
            ));
        }
        Ok(Database::Postgres(text.to_owned()))
    }
}
