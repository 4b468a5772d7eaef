//! The rule engine: rules compiled from `[[policy.rules]]`, matched
//! against a caller and the names it asks for.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    Quota, RateLimiter, clock::Clock, clock::DefaultClock, state::keyed::DefaultKeyedStateStore,
};
use ipnet::IpNet;

use super::{
    PolicyError,
    pattern::{self, cn_matches, dns_matches, ip_matches, substitute, uri_matches},
};
use crate::{
    config::{ConfigError, PolicyConfig, RuleConfig},
    names::RawNames,
    peer::identity::Identity,
    profile::{LeafProfile, Limits, Permitted},
};

pub(super) type Limiter = RateLimiter<u32, DefaultKeyedStateStore<u32>, DefaultClock>;

struct Rule {
    cfg: RuleConfig,
    profiles: Vec<LeafProfile>,
    ips: Vec<IpNet>,
    limiter: Option<Arc<Limiter>>,
}

pub struct Policy {
    rules: Vec<Rule>,
}

/// A granted request: which rule, and what it caps.
#[derive(Clone)]
pub struct Grant {
    pub rule: String,
    pub max_duration: Option<Duration>,
    pub max_live: Option<u64>,
    pub permitted: Permitted,
    limiter: Option<Arc<Limiter>>,
}

impl Grant {
    /// What the certificate builder must respect under this grant.
    pub fn limits(&self) -> Limits {
        Limits {
            max_duration: self.max_duration,
            permitted: Some(self.permitted.clone()),
        }
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("rule", &self.rule)
            .field("max_duration", &self.max_duration)
            .field("max_live", &self.max_live)
            .finish()
    }
}

fn bad(i: usize, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::InvalidAt {
        key: format!("policy.rules[{i}].{field}"),
        message: message.into(),
    }
}

impl Policy {
    /// Checks every rule and pattern; an error names the key.
    pub fn compile(cfg: &PolicyConfig) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (i, r) in cfg.rules.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(bad(i, "name", "every rule needs a name"));
            }
            if !r.everyone
                && r.uids.is_empty()
                && r.gids.is_empty()
                && r.users.is_empty()
                && r.groups.is_empty()
            {
                return Err(bad(
                    i,
                    "uids",
                    "the rule matches nobody: give uids, gids, users, groups or everyone = true",
                ));
            }
            let mut profiles = Vec::new();
            for (j, p) in r.profiles.iter().enumerate() {
                let profile = LeafProfile::parse(p)
                    .filter(|_| !p.is_empty())
                    .ok_or_else(|| {
                        bad(
                            i,
                            &format!("profiles[{j}]"),
                            format!("{p:?} is not client, server or intermediate"),
                        )
                    })?;
                if profile == LeafProfile::Intermediate && !r.admin {
                    return Err(bad(
                        i,
                        &format!("profiles[{j}]"),
                        "the intermediate profile is for admin rules only (set admin = true)",
                    ));
                }
                profiles.push(profile);
            }
            for (j, p) in r.dns.iter().enumerate() {
                pattern::check_dns_pattern(p)
                    .map_err(|e| bad(i, &format!("dns[{j}]"), format!("{p:?}: {e}")))?;
            }
            for (j, p) in r.uris.iter().enumerate() {
                pattern::check_uri_pattern(p)
                    .map_err(|e| bad(i, &format!("uris[{j}]"), format!("{p:?}: {e}")))?;
            }
            let mut ips = Vec::new();
            for (j, p) in r.ips.iter().enumerate().filter(|(_, p)| *p != "**") {
                ips.push(p.parse::<IpNet>().map_err(|_| {
                    bad(
                        i,
                        &format!("ips[{j}]"),
                        format!("{p:?} is not a CIDR network like 10.0.0.0/8"),
                    )
                })?);
            }
            let limiter = match r.rate {
                None => None,
                Some(rate) if !(rate.is_finite() && (1e-6..=1e6).contains(&rate)) => {
                    return Err(bad(
                        i,
                        "rate",
                        "must be between 0.000001 and 1000000 requests per second",
                    ));
                }
                Some(rate) => {
                    let burst = NonZeroU32::new(r.burst.unwrap_or(rate.ceil() as u32))
                        .ok_or_else(|| bad(i, "burst", "must be at least 1"))?;
                    let period = Duration::try_from_secs_f64(1.0 / rate)
                        .map_err(|_| bad(i, "rate", "is out of range"))?;
                    let quota = Quota::with_period(period)
                        .ok_or_else(|| bad(i, "rate", "is too high"))?
                        .allow_burst(burst);
                    Some(Arc::new(RateLimiter::keyed(quota)))
                }
            };
            if r.profiles.iter().any(|p| p == "intermediate") {
                // RFC 5280 constrains a URI by its host only: a rule whose
                // URIs are narrower than a whole host could not keep its
                // intermediates within them.
                for (j, u) in r.uris.iter().enumerate() {
                    let host_wide = u == "**"
                        || u.split_once("://").is_some_and(|(_, rest)| {
                            matches!(rest.split_once('/'), None | Some((_, "**")))
                        });
                    if !host_wide {
                        return Err(bad(
                            i,
                            &format!("uris[{j}]"),
                            format!(
                                "{u:?} limits the path, which an intermediate's name constraints cannot enforce (RFC 5280 constrains URI hosts only); in a rule with the intermediate profile use host-wide patterns like \"spiffe://example.org/**\""
                            ),
                        ));
                    }
                }
            }
            if r.max_duration.is_some_and(|d| d.is_zero()) {
                return Err(bad(i, "max_duration", "must be positive"));
            }
            if r.max_live == Some(0) {
                return Err(bad(i, "max_live", "must be at least 1"));
            }
            rules.push(Rule {
                cfg: r.clone(),
                profiles,
                ips,
                limiter,
            });
        }
        Ok(Self { rules })
    }

    fn matching<'a>(&'a self, who: &'a Identity) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.matches(who))
    }

    /// Whether any rule matches `who` at all.
    pub fn knows(&self, who: &Identity) -> bool {
        self.matching(who).next().is_some()
    }

    /// PERMISSION_DENIED for a caller no rule matches.
    pub fn require_known(&self, who: &Identity) -> Result<(), PolicyError> {
        if self.knows(who) {
            Ok(())
        } else {
            Err(PolicyError::Denied(format!(
                "no policy rule matches {}; ask the administrator for one",
                who.describe()
            )))
        }
    }

    /// Whether any rule that matches `who` makes it an administrator.
    pub fn is_admin(&self, who: &Identity) -> bool {
        self.matching(who).any(|r| r.cfg.admin)
    }

    /// The rule that grants `profile` and `names` to `who`, or why none does
    /// (naming the first profile or name no rule allows).
    pub fn authorize(
        &self,
        who: &Identity,
        profile: LeafProfile,
        names: &RawNames<'_>,
    ) -> Result<Grant, PolicyError> {
        self.require_known(who)?;
        let matching: Vec<&Rule> = self.matching(who).collect();
        let candidates: Vec<&Rule> = matching
            .iter()
            .copied()
            .filter(|r| r.profiles.contains(&profile))
            .collect();
        if candidates.is_empty() {
            return Err(PolicyError::Denied(format!(
                "the {} profile is not allowed for {}",
                profile.name(),
                who.describe()
            )));
        }
        for rule in &candidates {
            if rule.first_disallowed(who, names).is_none() {
                return Ok(rule.grant(who));
            }
        }
        // The first name no candidate allows; else no single rule allows all.
        let mut all = Vec::new();
        if !names.common_name.is_empty() {
            all.push(("common name", names.common_name));
        }
        all.extend(names.dns.iter().map(|n| ("DNS name", n.as_str())));
        all.extend(names.uris.iter().map(|n| ("URI", n.as_str())));
        all.extend(names.ips.iter().map(|n| ("IP address", n.as_str())));
        for (kind, name) in all {
            let one = RawNames {
                common_name: if kind == "common name" { name } else { "" },
                dns: &[],
                uris: &[],
                ips: &[],
            };
            let single = [name.to_owned()];
            let one = match kind {
                "DNS name" => RawNames {
                    dns: &single,
                    ..one
                },
                "URI" => RawNames {
                    uris: &single,
                    ..one
                },
                "IP address" => RawNames {
                    ips: &single,
                    ..one
                },
                _ => one,
            };
            if candidates
                .iter()
                .all(|r| r.first_disallowed(who, &one).is_some())
            {
                return Err(PolicyError::Denied(format!(
                    "{kind} {name:?} is not allowed for {} by any policy rule",
                    who.describe()
                )));
            }
        }
        Err(PolicyError::Denied(format!(
            "no single policy rule allows all of these names for {}; request them in separate certificates",
            who.describe()
        )))
    }

    /// Takes one request from the granting rule's bucket for `who`.
    pub fn check_rate(&self, grant: &Grant, who: &Identity) -> Result<(), PolicyError> {
        let Some(limiter) = &grant.limiter else {
            return Ok(());
        };
        limiter.check_key(&who.uid).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            PolicyError::RateLimited(format!(
                "{} is over the request rate of policy rule {:?}; retry in {} ms",
                who.describe(),
                grant.rule,
                wait.as_millis().max(1)
            ))
        })
    }
}

impl Rule {
    fn matches(&self, who: &Identity) -> bool {
        let c = &self.cfg;
        c.everyone
            || c.uids.contains(&who.uid)
            || c.gids.contains(&who.gid)
            || who.groups.iter().any(|(g, _)| c.gids.contains(g))
            || who.user.as_ref().is_some_and(|u| c.users.contains(u))
            || who.groups.iter().any(|(_, n)| c.groups.contains(n))
    }

    fn dns_ok(&self, who: &Identity, name: &str) -> bool {
        self.cfg.dns.iter().any(|p| {
            substitute(p, who).is_some_and(|p| dns_matches(&p, name, self.cfg.allow_wildcards))
        })
    }

    /// A common name that is a DNS name a specific pattern allows. `**` does
    /// not count here: "any DNS name" must not become "any common name"
    /// (`CN=postgres` is a database user, not a host), and a wildcard common
    /// name never matches.
    fn cn_is_allowed_dns_name(&self, who: &Identity, cn: &str) -> bool {
        self.cfg
            .dns
            .iter()
            .filter(|p| *p != "**")
            .any(|p| substitute(p, who).is_some_and(|p| dns_matches(&p, cn, false)))
    }

    /// The first of `names` this rule does not allow.
    fn first_disallowed(&self, who: &Identity, names: &RawNames<'_>) -> Option<String> {
        let c = &self.cfg;
        let cn = names.common_name;
        if !cn.is_empty()
            && !c
                .common_names
                .iter()
                .any(|p| substitute(p, who).is_some_and(|p| cn_matches(&p, cn)))
            && !self.cn_is_allowed_dns_name(who, cn)
        {
            return Some(cn.to_owned());
        }
        if let Some(n) = names.dns.iter().find(|n| !self.dns_ok(who, n)) {
            return Some(n.clone());
        }
        if let Some(n) = names.uris.iter().find(|n| {
            !c.uris
                .iter()
                .any(|p| substitute(p, who).is_some_and(|p| uri_matches(&p, n)))
        }) {
            return Some(n.clone());
        }
        if c.ips.iter().any(|p| p == "**") {
            return None;
        }
        names
            .ips
            .iter()
            .find(|n| !self.ips.iter().any(|net| ip_matches(net, n)))
            .cloned()
    }

    fn grant(&self, who: &Identity) -> Grant {
        let c = &self.cfg;
        let dns = if c.dns.iter().any(|p| p == "**") {
            None
        } else {
            Some(
                c.dns
                    .iter()
                    .filter_map(|p| substitute(p, who))
                    .map(|p| match p.split_once('.') {
                        // RFC 5280 has no "subdomains only": the constraint
                        // `svc.example` also permits the apex itself.
                        Some(("*" | "**", rest)) => rest.to_owned(),
                        _ => p,
                    })
                    .collect(),
            )
        };
        let uri_hosts = if c.uris.iter().any(|p| p == "**") {
            None
        } else {
            Some(
                c.uris
                    .iter()
                    .filter_map(|p| substitute(p, who))
                    .filter_map(|p| {
                        let rest = p.split_once("://")?.1;
                        Some(rest.split('/').next().unwrap_or(rest).to_owned())
                    })
                    .collect(),
            )
        };
        Grant {
            rule: c.name.clone(),
            max_duration: c.max_duration,
            max_live: c.max_live,
            permitted: Permitted {
                dns,
                uri_hosts,
                ips: (!c.ips.iter().any(|p| p == "**")).then(|| self.ips.clone()),
                common_names: (!c.common_names.iter().any(|p| p == "**")).then(|| {
                    c.common_names
                        .iter()
                        .filter_map(|p| substitute(p, who))
                        .collect()
                }),
                client: self.profiles.contains(&LeafProfile::Client),
                server: self.profiles.contains(&LeafProfile::Server),
            },
            limiter: self.limiter.clone(),
        }
    }
}
