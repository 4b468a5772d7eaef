//! `[workload]`: the SPIFFE workload endpoint — a second Unix socket whose
//! callers are identified by the kernel and given SVIDs by registration
//! entries (`[[workload.entries]]`). Off unless `workload.socket` is set.
//! Every entry is checked here, at start-up and on each reload, so that a
//! mistake names its key instead of surfacing as a refused workload later.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, invalid, server::parse_mode};
use crate::spiffe_id::SpiffeId;

/// The placeholders a `spiffe_id` template may use.
pub const PLACEHOLDERS: [&str; 3] = ["{user}", "{uid}", "{unit}"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// The workload socket; `None` turns the endpoint off.
    pub socket: Option<PathBuf>,
    /// Usually connectable by every local user: who gets what is decided
    /// by attestation, not by the file mode.
    pub socket_mode: String,
    /// The one trust domain of this daemon, e.g. `example.org`.
    pub trust_domain: String,
    /// Share of an SVID's lifetime after which it is replaced.
    pub rotate_at: f64,
    /// Random spread of the rotation time, as a share of the lifetime
    /// (± this), so that SVIDs issued together are not all renewed together.
    pub rotation_jitter: f64,
    /// The shortest and longest `ttl` an entry may set.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Workload SVID signatures in the token's queue at once. They wait
    /// in its background class, behind interactive requests; this bounds
    /// how much of that class (shared with the certificate-request worker)
    /// one rotation wave holds.
    pub signing_concurrency: usize,
    /// Delay before retrying an SVID that could not be signed (token away).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    pub entries: Vec<EntryConfig>,
    /// `[workload.jwt]`: the JWT-SVID key and lifetime.
    pub jwt: super::JwtConfig,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            socket: None,
            socket_mode: "0666".into(),
            trust_domain: String::new(),
            rotate_at: 0.5,
            rotation_jitter: 0.1,
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            signing_concurrency: 2,
            retry_after: Duration::from_secs(5),
            entries: Vec::new(),
            jwt: super::JwtConfig::default(),
        }
    }
}

/// The key type of a workload's SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKeyType {
    #[default]
    #[serde(alias = "p256")]
    P256,
    #[serde(alias = "p384")]
    P384,
    #[serde(alias = "rsa2048")]
    Rsa2048,
}

impl WorkloadKeyType {
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Rsa2048 => "rsa2048",
        }
    }
}

/// One registration entry: every selector given must match the caller;
/// then the caller gets an SVID for `spiffe_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// `spiffe://<trust domain>/<path>`; the path may hold `{user}`,
    /// `{uid}` and `{unit}`, filled in from the caller.
    pub spiffe_id: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub user: Option<String>,
    /// A group the caller is in (primary or supplementary).
    pub group: Option<String>,
    /// The caller's executable, as /proc/PID/exe names it. Kept in its
    /// normal form (`//`, `/./` and a trailing `/` dropped), as attestation
    /// keeps the caller's, so that matching compares bytes.
    #[serde(default, deserialize_with = "normal_path")]
    pub exe: Option<PathBuf>,
    /// The systemd unit the caller runs in, e.g. `nginx.service`.
    pub unit: Option<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub key_type: WorkloadKeyType,
    /// Tells a workload with several SVIDs which is for what.
    #[serde(default)]
    pub hint: String,
}

fn normal_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let p: Option<PathBuf> = Deserialize::deserialize(d)?;
    Ok(p.as_deref().map(normal_form))
}

/// `p` without `//`, `/./` or a trailing `/` (`..` stays: it may name
/// another file). Entries' and attested executables are kept in this form.
pub fn normal_form(p: &std::path::Path) -> PathBuf {
    p.components().collect()
}

/// The lifetime of an entry's SVIDs when it sets none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

impl EntryConfig {
    pub fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }
}

impl WorkloadConfig {
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    pub fn socket_mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o666)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if parse_mode(&self.socket_mode).is_none() {
            return Err(invalid(
                "workload.socket_mode",
                "must be an octal file mode like \"0666\"",
            ));
        }
        if !(self.rotate_at > 0.0 && self.rotate_at < 1.0) {
            return Err(invalid(
                "workload.rotate_at",
                "must be a share of the lifetime between 0 and 1, like 0.5",
            ));
        }
        if !(0.0..0.5).contains(&self.rotation_jitter)
            || self.rotate_at - self.rotation_jitter <= 0.0
            || self.rotate_at + self.rotation_jitter >= 1.0
        {
            return Err(invalid(
                "workload.rotation_jitter",
                "must be between 0 and 0.5 and keep rotate_at ± jitter inside (0, 1), like 0.1",
            ));
        }
        if self.min_ttl < Duration::from_secs(1) || self.min_ttl > self.max_ttl {
            return Err(invalid(
                "workload.min_ttl",
                "must be at least 1s and at most workload.max_ttl",
            ));
        }
        if self.max_ttl > Duration::from_secs(366 * 24 * 3600) {
            return Err(invalid("workload.max_ttl", "must be at most 366 days"));
        }
        if !(1..=64).contains(&self.signing_concurrency) {
            return Err(invalid(
                "workload.signing_concurrency",
                "must be between 1 and 64",
            ));
        }
        if self.retry_after < Duration::from_millis(100) {
            return Err(invalid("workload.retry_after", "must be at least 100ms"));
        }
        if !self.enabled() {
            return Ok(());
        }
        let td = SpiffeId::parse(&format!("spiffe://{}", self.trust_domain)).map_err(|e| {
            invalid(
                "workload.trust_domain",
                format!("{:?} is not a SPIFFE trust domain: {e}", self.trust_domain),
            )
        })?;
        if !td.path().is_empty() {
            return Err(invalid(
                "workload.trust_domain",
                "is a trust domain name like \"example.org\", without a path",
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            e.validate(&self.trust_domain, self.min_ttl, self.max_ttl)
                .map_err(|(field, message)| ConfigError::InvalidAt {
                    key: format!("workload.entries[{i}].{field}"),
                    message,
                })?;
        }
        Ok(())
    }
}

impl EntryConfig {
    fn validate(
        &self,
        trust_domain: &str,
        min_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<(), (&'static str, String)> {
        // Placeholders are filled with a sample segment, so the template is
        // checked as an ID would be; what a caller fills in is checked again
        // when it is (a user name that is no valid segment matches nothing).
        let mut sample = self.spiffe_id.clone();
        for p in PLACEHOLDERS {
            sample = sample.replace(p, "x");
        }
        if sample.contains('{') || sample.contains('}') {
            return Err((
                "spiffe_id",
                format!(
                    "{:?}: the only placeholders are {{user}}, {{uid}} and {{unit}}",
                    self.spiffe_id
                ),
            ));
        }
        let id = SpiffeId::parse(&sample)
            .map_err(|e| ("spiffe_id", format!("{:?}: {e}", self.spiffe_id)))?;
        if id.trust_domain() != trust_domain {
            return Err((
                "spiffe_id",
                format!(
                    "{:?} is not in the trust domain {trust_domain:?} (workload.trust_domain)",
                    self.spiffe_id
                ),
            ));
        }
        if id.path().is_empty() {
            return Err((
                "spiffe_id",
                "names the trust domain itself; a workload ID has a path".into(),
            ));
        }
        for (i, d) in self.dns_names.iter().enumerate() {
            crate::names::check_dns(d)
                .map_err(|e| ("dns_names", format!("name {i} ({d:?}): {e}")))?;
            if d.contains('*') {
                return Err(("dns_names", format!("{d:?}: no wildcards in an SVID")));
            }
        }
        let ttl = self.ttl();
        if ttl < min_ttl || ttl > max_ttl {
            return Err((
                "ttl",
                format!(
                    "{} is outside workload.min_ttl..workload.max_ttl ({} to {})",
                    humantime::format_duration(ttl),
                    humantime::format_duration(min_ttl),
                    humantime::format_duration(max_ttl)
                ),
            ));
        }
        if self.hint.len() > 256 || self.hint.chars().any(char::is_control) {
            return Err(("hint", "at most 256 bytes, no control characters".into()));
        }
        if let Some(u) = &self.user
            && u.is_empty()
        {
            return Err(("user", "must not be empty".into()));
        }
        if let Some(g) = &self.group
            && g.is_empty()
        {
            return Err(("group", "must not be empty".into()));
        }
        if let Some(p) = &self.exe
            && !p.is_absolute()
        {
            return Err(("exe", "must be an absolute path".into()));
        }
        if let Some(u) = &self.unit
            && u.is_empty()
        {
            return Err(("unit", "must not be empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn check(toml_text: &str) -> Result<WorkloadConfig, String> {
        let c: WorkloadConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    const HEAD: &str = "socket = \"/run/w.sock\"\ntrust_domain = \"example.org\"\n";

    #[test]
    fn a_good_section_and_its_defaults() {
        let c = check(&format!(
            "{HEAD}[[entries]]\nspiffe_id = \"spiffe://example.org/u/{{user}}/{{uid}}/{{unit}}\"\nuid = 5\ndns_names = [\"a.example.org\"]\nkey_type = \"rsa2048\"\nhint = \"x\"\n"
        ))
        .unwrap();
        assert_eq!(c.entries[0].ttl(), DEFAULT_TTL);
        assert_eq!(c.entries[0].key_type, WorkloadKeyType::Rsa2048);
        assert_eq!(c.socket_mode_bits(), 0o666);
        assert!(check("").is_ok(), "off by default, nothing to check");
    }

    #[test]
    fn mistakes_name_their_key() {
        let entry = |body: &str| format!("{HEAD}[[entries]]\n{body}\n");
        for (text, key) in [
            (
                "socket = \"/w\"\ntrust_domain = \"Example.org\"".to_owned(),
                "workload.trust_domain",
            ),
            (
                "socket = \"/w\"\ntrust_domain = \"example.org/x\"".to_owned(),
                "workload.trust_domain",
            ),
            (format!("{HEAD}rotate_at = 1.0"), "workload.rotate_at"),
            (
                format!("{HEAD}rotation_jitter = 0.6"),
                "workload.rotation_jitter",
            ),
            (
                format!("{HEAD}socket_mode = \"abc\""),
                "workload.socket_mode",
            ),
            (format!("{HEAD}min_ttl = \"0s\""), "workload.min_ttl"),
            (
                entry("spiffe_id = \"spiffe://other.org/x\""),
                "workload.entries[0].spiffe_id",
            ),
            (
                entry("spiffe_id = \"spiffe://example.org/{name}\""),
                "workload.entries[0].spiffe_id",
            ),
            (
                entry("spiffe_id = \"spiffe://example.org/a/../b\""),
                "workload.entries[0].spiffe_id",
            ),
            (
                entry("spiffe_id = \"spiffe://example.org\""),
                "workload.entries[0].spiffe_id",
            ),
            (
                entry("spiffe_id = \"spiffe://example.org/x\"\nttl = \"10s\""),
                "workload.entries[0].ttl",
            ),
            (
                entry("spiffe_id = \"spiffe://example.org/x\"\ndns_names = [\"*.example.org\"]"),
                "workload.entries[0].dns_names",
            ),
            (
                entry("spiffe_id = \"spiffe://example.org/x\"\nexe = \"envoy\""),
                "workload.entries[0].exe",
            ),
        ] {
            let err = check(&text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
        // An unknown key or key type is refused by name when parsing.
        let err = check(&format!(
            "{HEAD}[[entries]]\nspiffe_id = \"spiffe://example.org/x\"\npid = 1\n"
        ))
        .unwrap_err();
        assert!(err.contains("pid"), "{err}");
        let err = check(&format!(
            "{HEAD}[[entries]]\nspiffe_id = \"spiffe://example.org/x\"\nkey_type = \"ed25519\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("ed25519"), "{err}");
    }
}
