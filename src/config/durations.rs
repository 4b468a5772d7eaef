//! One upper bound for every duration in the config. humantime reads spans
//! up to about 584 billion years, but hsmca adds them to "now", turns them
//! into Unix seconds (an i64) and writes some into certificates, whose dates
//! end at 9999-12-31: a span that cannot be held would panic or wrap deep in
//! the request path. A century is far beyond any sensible setting and keeps
//! every sum well inside all of those limits.

use std::time::Duration;

use super::{Config, ConfigError, invalid};

/// 100 years of 365.25 days.
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 24 * 3600);

const TOO_LONG: &str = "must be at most 100 years";

/// Every duration key with its value, the policy rules' caps included.
pub(super) fn check(cfg: &Config) -> Result<(), ConfigError> {
    let s = &cfg.server;
    let p = &cfg.profiles;
    let keyed: [(&'static str, Duration); 22] = [
        ("server.shutdown_grace", s.shutdown_grace),
        ("server.request_timeout", s.request_timeout),
        ("server.handshake_timeout", s.handshake_timeout),
        ("server.idle_timeout", s.idle_timeout),
        ("server.keepalive_interval", s.keepalive_interval),
        ("server.keepalive_timeout", s.keepalive_timeout),
        ("ca.validity", cfg.ca.validity),
        ("ca.backdate", cfg.ca.backdate),
        ("crl.validity", cfg.crl.validity),
        ("state.request_id_retention", cfg.state.request_id_retention),
        ("state.retention", cfg.state.retention),
        ("requests.renewal_window", cfg.requests.renewal_window),
        ("requests.retry_after", cfg.requests.retry_after),
        (
            "profiles.client.default_duration",
            p.client.default_duration,
        ),
        ("profiles.client.min_duration", p.client.min_duration),
        ("profiles.client.max_duration", p.client.max_duration),
        (
            "profiles.server.default_duration",
            p.server.default_duration,
        ),
        ("profiles.server.min_duration", p.server.min_duration),
        ("profiles.server.max_duration", p.server.max_duration),
        (
            "profiles.intermediate.default_duration",
            p.intermediate.default_duration,
        ),
        (
            "profiles.intermediate.min_duration",
            p.intermediate.min_duration,
        ),
        (
            "profiles.intermediate.max_duration",
            p.intermediate.max_duration,
        ),
    ];
    for (key, d) in keyed {
        if d > MAX_DURATION {
            return Err(invalid(key, TOO_LONG));
        }
    }
    for (i, rule) in cfg.policy.rules.iter().enumerate() {
        if rule.max_duration.is_some_and(|d| d > MAX_DURATION) {
            return Err(ConfigError::InvalidAt {
                key: format!("policy.rules[{i}].max_duration (rule {:?})", rule.name),
                message: TOO_LONG.into(),
            });
        }
    }
    Ok(())
}
