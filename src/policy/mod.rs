//! Who may have what. Default deny: a request is granted only by a rule
//! that matches the caller (by uid, gid, user or group name) and allows its
//! profile and every one of its names; the first such rule, in file order,
//! grants it and its duration cap, rate and quota apply. The check runs on
//! the names exactly as requested, before anything is signed.

pub mod pattern;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use governor::{
    Quota, RateLimiter, clock::Clock, clock::DefaultClock, state::keyed::DefaultKeyedStateStore,
};
use ipnet::IpNet;

use self::pattern::{cn_matches, dns_matches, ip_matches, substitute, uri_matches};
use crate::{
    config::{ConfigError, PolicyConfig, RuleConfig},
    names::RawNames,
    peer::Peer,
    peer::identity::{self, Identity},
    profile::{LeafProfile, Limits, Permitted},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// → PERMISSION_DENIED
    #[error("{0}")]
    Denied(String),
    /// A rate → RESOURCE_EXHAUSTED, saying when to retry.
    #[error("{0}")]
    RateLimited(String),
    /// A quota → RESOURCE_EXHAUSTED, saying which.
    #[error("{0}")]
    Quota(String),
}

type Limiter = RateLimiter<u32, DefaultKeyedStateStore<u32>, DefaultClock>;

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

/// The policy in force (replaced whole on reload), the caller lookup, and
/// the issuances in flight per caller that quotas count.
pub struct Authorizer {
    policy: RwLock<Arc<Policy>>,
    resolver: identity::Resolver,
    in_flight: Mutex<HashMap<u32, u64>>,
    /// Refusals recorded in the audit log, per caller.
    refusals: Limiter,
    refusals_skipped: std::sync::atomic::AtomicU64,
}

/// Refusals recorded per caller: 5 a second, 50 at once.
fn refusal_quota() -> Quota {
    Quota::per_second(NonZeroU32::MIN.saturating_add(4))
        .allow_burst(NonZeroU32::MIN.saturating_add(49))
}

impl Authorizer {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: RwLock::new(Arc::new(policy)),
            resolver: identity::Resolver::default(),
            in_flight: Mutex::new(HashMap::new()),
            refusals: RateLimiter::keyed(refusal_quota()),
            refusals_skipped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map_or_else(|p| p.into_inner().clone(), |p| p.clone())
    }

    /// Takes effect for the next request; requests already past their
    /// policy check finish under the policy they were granted by.
    pub fn replace(&self, policy: Policy) {
        let mut slot = self.policy.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(policy);
    }

    pub async fn identify(&self, peer: &Peer) -> Identity {
        self.resolver.resolve(peer).await
    }

    /// Whether `peer` is an administrator under the policy in force.
    pub async fn is_admin(&self, peer: &Peer) -> bool {
        let who = self.identify(peer).await;
        self.current().is_admin(&who)
    }

    /// Whether a refusal of `uid` goes into the audit log: at most a few a
    /// second per caller, so that a caller hammering the socket cannot fill
    /// the disk. Returns how many refusals were left out since the last one
    /// recorded, or `None` to leave this one out too.
    pub fn audit_refusal_of(&self, uid: u32) -> Option<u64> {
        if self.refusals.check_key(&uid).is_ok() {
            Some(
                self.refusals_skipped
                    .swap(0, std::sync::atomic::Ordering::Relaxed),
            )
        } else {
            self.refusals_skipped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    }

    /// Counts one issuance for `uid` until the guard is dropped.
    pub fn reserve(&self, uid: u32) -> Reservation<'_> {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(uid).or_default() += 1;
        Reservation { auth: self, uid }
    }

    /// Issuances in flight for `uid`, besides the caller's own reservation.
    pub fn in_flight(&self, uid: u32) -> u64 {
        let m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&uid).copied().unwrap_or(0).saturating_sub(1)
    }
}

pub struct Reservation<'a> {
    auth: &'a Authorizer,
    uid: u32,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut m = self
            .auth
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

/// The refusal for a caller over its quota of live certificates.
pub fn over_quota(who: &Identity, grant: &Grant, live: u64) -> Option<PolicyError> {
    let max = grant.max_live?;
    (live >= max).then(|| {
        PolicyError::Quota(format!(
            "{} already has {live} live certificates, the quota (max_live = {max}) of policy rule {:?}; revoke some or let them expire",
            who.describe(),
            grant.rule
        ))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml: &str) -> Policy {
        let cfg: PolicyConfig = toml::from_str(toml).unwrap();
        Policy::compile(&cfg).unwrap()
    }

    fn who(uid: u32, user: &str, groups: &[(u32, &str)]) -> Identity {
        Identity {
            uid,
            gid: groups.first().map_or(uid, |g| g.0),
            pid: None,
            user: Some(user.into()),
            group: groups.first().map(|g| g.1.to_owned()),
            groups: groups.iter().map(|(g, n)| (*g, n.to_string())).collect(),
            exe: None,
        }
    }

    fn names<'a>(
        cn: &'a str,
        dns: &'a [String],
        uris: &'a [String],
        ips: &'a [String],
    ) -> RawNames<'a> {
        RawNames {
            common_name: cn,
            dns,
            uris,
            ips,
        }
    }

    const POLICY: &str = r#"
[[rules]]
name = "web"
groups = ["web"]
profiles = ["client", "server"]
dns = ["*.svc.example", "{user}.users.example"]
uris = ["spiffe://example.org/ns/{user}/*"]
ips = ["10.1.0.0/16"]
max_duration = "2h"
rate = 2.0
burst = 2
max_live = 10

[[rules]]
name = "admins"
uids = [0]
admin = true
profiles = ["client", "server", "intermediate"]
dns = ["**"]
common_names = ["**"]
"#;

    #[test]
    fn default_deny_and_grants() {
        let p = rule(POLICY);
        let alice = who(1000, "alice", &[(100, "web")]);
        let bob = who(1001, "bob", &[(101, "staff")]);
        let none: [String; 0] = [];
        let dns = [
            "api.svc.example".to_string(),
            "alice.users.example".to_string(),
        ];
        let g = p
            .authorize(&alice, LeafProfile::Server, &names("", &dns, &none, &none))
            .unwrap();
        assert_eq!(g.rule, "web");
        assert_eq!(g.max_duration, Some(Duration::from_secs(7200)));
        assert_eq!(
            g.permitted.dns,
            Some(vec!["svc.example".into(), "alice.users.example".into()])
        );
        let e = p
            .authorize(&bob, LeafProfile::Client, &names("", &dns, &none, &none))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("no policy rule matches uid 1001 (bob)"),
            "{e}"
        );
        let e = p
            .authorize(
                &alice,
                LeafProfile::Intermediate,
                &names("", &dns, &none, &none),
            )
            .unwrap_err();
        assert!(e.to_string().contains("intermediate profile"), "{e}");
        // The first name no rule allows is named.
        let tricky = [
            "api.svc.example".to_string(),
            "bob.users.example".to_string(),
            "x.svc.example.evil.com".to_string(),
        ];
        let e = p
            .authorize(
                &alice,
                LeafProfile::Client,
                &names("", &tricky, &none, &none),
            )
            .unwrap_err();
        assert_eq!(
            e,
            PolicyError::Denied(
                "DNS name \"bob.users.example\" is not allowed for uid 1000 (alice) by any policy rule".into()
            )
        );
        let uris = ["spiffe://example.org/ns/alice/web".to_string()];
        let ips = ["10.1.2.3".to_string()];
        assert!(
            p.authorize(
                &alice,
                LeafProfile::Client,
                &names("api.svc.example", &none, &uris, &ips)
            )
            .is_ok()
        );
        let ips = ["10.2.0.1".to_string()];
        assert!(
            p.authorize(&alice, LeafProfile::Client, &names("", &none, &none, &ips))
                .is_err()
        );
        // A common name must be allowed too.
        assert!(
            p.authorize(
                &alice,
                LeafProfile::Client,
                &names("root", &none, &uris, &none)
            )
            .is_err()
        );
        let root = who(0, "root", &[(0, "root")]);
        assert!(p.is_admin(&root));
        assert!(!p.is_admin(&alice));
        let g = p
            .authorize(
                &root,
                LeafProfile::Intermediate,
                &names("anything", &dns, &none, &none),
            )
            .unwrap();
        assert_eq!(g.permitted.dns, None);
        assert_eq!(g.permitted.uri_hosts, Some(vec![]));
    }

    #[test]
    fn any_dns_name_is_not_any_common_name() {
        let p = rule(
            "[[rules]]\nname = \"r\"\neveryone = true\ncommon_names = [\"{user}\"]\ndns = [\"**\", \"*.svc.example\"]\n",
        );
        let alice = who(1000, "alice", &[(100, "web")]);
        let none: [String; 0] = [];
        for (cn, ok) in [
            ("alice", true),
            ("api.svc.example", true),
            ("postgres", false),
            ("Example Root CA", false),
            ("*.svc.example", false),
        ] {
            let r = p.authorize(&alice, LeafProfile::Client, &names(cn, &none, &none, &none));
            assert_eq!(r.is_ok(), ok, "{cn}");
        }
    }

    #[test]
    fn rates() {
        let p = rule(POLICY);
        let alice = who(1000, "alice", &[(100, "web")]);
        let none: [String; 0] = [];
        let dns = ["api.svc.example".to_string()];
        let g = p
            .authorize(&alice, LeafProfile::Client, &names("", &dns, &none, &none))
            .unwrap();
        assert!(p.check_rate(&g, &alice).is_ok());
        assert!(p.check_rate(&g, &alice).is_ok());
        let e = p.check_rate(&g, &alice).unwrap_err();
        assert!(matches!(e, PolicyError::RateLimited(_)));
        assert!(e.to_string().contains("retry in"), "{e}");
        // Buckets are per caller.
        let carol = who(1002, "carol", &[(100, "web")]);
        assert!(p.check_rate(&g, &carol).is_ok());
    }

    #[test]
    fn bad_rules_name_their_key() {
        for (toml, key) in [
            ("[[rules]]\nname = \"x\"\n", "policy.rules[0].uids"),
            (
                "[[rules]]\nname = \"x\"\neveryone = true\ndns = [\"a.*.x\"]\n",
                "policy.rules[0].dns[0]",
            ),
            (
                "[[rules]]\nname = \"x\"\neveryone = true\nips = [\"10.0.0.1/40\"]\n",
                "policy.rules[0].ips[0]",
            ),
            (
                "[[rules]]\nname = \"x\"\neveryone = true\nprofiles = [\"intermediate\"]\n",
                "policy.rules[0].profiles[0]",
            ),
            (
                "[[rules]]\nname = \"x\"\neveryone = true\nprofiles = [\"root\"]\n",
                "policy.rules[0].profiles[0]",
            ),
            (
                "[[rules]]\nname = \"x\"\neveryone = true\nrate = -1.0\n",
                "policy.rules[0].rate",
            ),
        ] {
            let cfg: PolicyConfig = toml::from_str(toml).unwrap();
            let e = Policy::compile(&cfg).err().unwrap().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
