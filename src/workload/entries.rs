//! Registration entries, compiled from `[[workload.entries]]`: which
//! callers they select and the SPIFFE ID each gives them.

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::attest::Attributes;
use crate::{
    config::{EntryConfig, WorkloadConfig},
    spiffe_id::SpiffeId,
};

/// One entry as configured, with a fingerprint of its whole configuration:
/// a changed entry is a different entry, whose SVIDs are made anew.
#[derive(Debug)]
pub struct Entry {
    /// Its place in the configuration, for messages.
    pub index: usize,
    pub config: EntryConfig,
    pub fingerprint: u64,
}

/// One SPIFFE ID a caller may have, from the entry that gives it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub spiffe_id: SpiffeId,
    pub hint: String,
    pub entry: Arc<Entry>,
}

impl Identity {
    /// What an SVID is shared by: the entry (as configured now) and the ID.
    pub(crate) fn key(&self) -> IdKey {
        IdKey {
            entry: self.entry.fingerprint,
            spiffe_id: self.spiffe_id.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IdKey {
    pub entry: u64,
    pub spiffe_id: String,
}

/// The compiled entries of one configuration.
#[derive(Debug, Default)]
pub struct Entries {
    pub trust_domain: String,
    pub list: Vec<Arc<Entry>>,
}

impl Entries {
    /// `cfg` was validated when it was loaded.
    pub fn compile(cfg: &WorkloadConfig) -> Self {
        let list = cfg
            .entries
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                e.hash(&mut h);
                Arc::new(Entry {
                    index,
                    config: e.clone(),
                    fingerprint: h.finish(),
                })
            })
            .collect();
        Self {
            trust_domain: cfg.trust_domain.clone(),
            list,
        }
    }

    /// The identities of a caller, in entry order (the first is its
    /// default); an ID that two entries give counts once.
    pub fn identities(&self, attrs: &Attributes) -> Vec<Identity> {
        let mut out: Vec<Identity> = Vec::new();
        for e in &self.list {
            if !selects(&e.config, attrs) {
                continue;
            }
            match render(&e.config.spiffe_id, attrs) {
                Some(id) => {
                    if !out.iter().any(|o| o.spiffe_id == id) {
                        out.push(Identity {
                            spiffe_id: id,
                            hint: e.config.hint.clone(),
                            entry: e.clone(),
                        });
                    }
                }
                None => tracing::debug!(
                    entry = e.index,
                    uid = attrs.uid,
                    "workload entry matches, but its spiffe_id cannot be filled in for this caller"
                ),
            }
        }
        out
    }
}

/// Whether every selector the entry sets matches.
pub fn selects(e: &EntryConfig, a: &Attributes) -> bool {
    e.uid.is_none_or(|u| u == a.uid)
        && e.gid.is_none_or(|g| g == a.gid)
        && e.user.as_ref().is_none_or(|u| a.user.as_ref() == Some(u))
        && e.group.as_ref().is_none_or(|g| a.groups.contains(g))
        // Both sides are in normal form (config and attestation keep them
        // so): bytes compare, without parsing components per entry.
        && e.exe.as_ref().is_none_or(|x| {
            a.exe
                .as_ref()
                .is_some_and(|p| p.as_os_str() == x.as_os_str())
        })
        && e.unit.as_ref().is_none_or(|u| a.unit.as_ref() == Some(u))
}

/// The entry's SPIFFE ID for this caller; `None` when a placeholder has no
/// value (no user name, no unit) or its value is no valid path segment.
pub fn render(template: &str, a: &Attributes) -> Option<SpiffeId> {
    let mut id = template.replace("{uid}", &a.uid.to_string());
    if id.contains("{user}") {
        id = id.replace("{user}", a.user.as_deref()?);
    }
    if id.contains("{unit}") {
        id = id.replace("{unit}", a.unit.as_deref()?);
    }
    SpiffeId::parse(&id).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn attrs() -> Attributes {
        Attributes {
            uid: 1000,
            gid: 100,
            user: Some("alice".into()),
            groups: vec!["users".into(), "web".into()],
            exe: Some("/usr/bin/envoy".into()),
            unit: Some("envoy.service".into()),
        }
    }

    fn entry(toml_text: &str) -> EntryConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn every_selector_must_match() {
        let a = attrs();
        assert!(selects(&entry("spiffe_id = 'x'"), &a));
        assert!(selects(
            &entry(
                "spiffe_id = 'x'\nuid = 1000\ngid = 100\nuser = 'alice'\ngroup = 'web'\nexe = '/usr/bin/envoy'\nunit = 'envoy.service'"
            ),
            &a
        ));
        for sel in [
            "uid = 1",
            "gid = 1",
            "user = 'bob'",
            "group = 'wheel'",
            "exe = '/bin/sh'",
            "unit = 'x.service'",
        ] {
            assert!(
                !selects(&entry(&format!("spiffe_id = 'x'\n{sel}")), &a),
                "{sel}"
            );
        }
    }

    #[test]
    fn an_executable_matches_in_its_normal_form() {
        let a = attrs();
        for exe in ["/usr//bin/envoy", "/usr/./bin/envoy", "/usr/bin/envoy/"] {
            let e = entry(&format!("spiffe_id = 'x'\nexe = '{exe}'"));
            let bytes = e.exe.as_deref().map(std::path::Path::as_os_str);
            assert_eq!(bytes, Some(std::ffi::OsStr::new("/usr/bin/envoy")));
            assert!(selects(&e, &a), "{exe}");
        }
        // `..` is not resolved: it names another path.
        assert!(!selects(
            &entry("spiffe_id = 'x'\nexe = '/usr/lib/../bin/envoy'"),
            &a
        ));
        assert!(!selects(
            &entry("spiffe_id = 'x'\nexe = '/usr/bin/envo'"),
            &a
        ));
    }

    #[test]
    fn placeholders_are_filled_in_and_checked() {
        let a = attrs();
        assert_eq!(
            render("spiffe://td/user/{user}/{uid}/{unit}", &a)
                .unwrap()
                .to_string(),
            "spiffe://td/user/alice/1000/envoy.service"
        );
        let mut b = a.clone();
        b.user = None;
        assert!(render("spiffe://td/user/{user}", &b).is_none());
        assert!(render("spiffe://td/uid/{uid}", &b).is_some());
        b.user = Some("bad name".into());
        assert!(render("spiffe://td/user/{user}", &b).is_none());
        b.unit = None;
        assert!(render("spiffe://td/{unit}", &b).is_none());
    }

    #[test]
    fn identities_keep_entry_order_and_count_an_id_once() {
        let cfg: WorkloadConfig = toml::from_str(
            r#"
            socket = "/tmp/x.sock"
            trust_domain = "td"
            [[entries]]
            spiffe_id = "spiffe://td/web"
            group = "web"
            hint = "internal"
            [[entries]]
            spiffe_id = "spiffe://td/user/{user}"
            [[entries]]
            spiffe_id = "spiffe://td/web"
            [[entries]]
            spiffe_id = "spiffe://td/admin"
            uid = 0
            "#,
        )
        .unwrap();
        let entries = Entries::compile(&cfg);
        let ids: Vec<String> = entries
            .identities(&attrs())
            .iter()
            .map(|i| i.spiffe_id.to_string())
            .collect();
        assert_eq!(ids, ["spiffe://td/web", "spiffe://td/user/alice"]);
        assert_eq!(entries.identities(&attrs())[0].hint, "internal");
        // Changing an entry changes its fingerprint, not its neighbours'.
        let mut cfg2 = cfg.clone();
        cfg2.entries[1].ttl = Some(std::time::Duration::from_secs(600));
        let e2 = Entries::compile(&cfg2);
        assert_eq!(entries.list[0].fingerprint, e2.list[0].fingerprint);
        assert_ne!(entries.list[1].fingerprint, e2.list[1].fingerprint);
    }
}
