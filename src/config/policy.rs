//! `[[policy.rules]]` and `[policy]`: who may have which certificates, as
//! written. The policy module compiles and checks them (patterns, CIDRs,
//! rates); here they are only read.

use std::time::Duration;

use serde::Deserialize;

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
