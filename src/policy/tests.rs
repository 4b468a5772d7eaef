use std::time::Duration;

use super::*;
use crate::{
    config::PolicyConfig, names::RawNames, peer::identity::Identity, profile::LeafProfile,
};

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
            "DNS name \"bob.users.example\" is not allowed for uid 1000 (alice) by any policy rule"
                .into()
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
