//! The caller as policy sees it: the kernel's uid/gid/pid (SO_PEERCRED) and
//! what the user database says about them — user name, primary group name,
//! supplementary groups — plus the executable, for logs and the audit log.
//! Lookups go through NSS (LDAP and the like may sit behind it), so results
//! are cached briefly.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::peer::Peer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub user: Option<String>,
    /// The primary group's name.
    pub group: Option<String>,
    /// Every group (primary and supplementary) as (gid, name).
    pub groups: Vec<(u32, String)>,
    pub exe: Option<PathBuf>,
}

/// How long a looked-up identity is reused.
const TTL: Duration = Duration::from_secs(30);
/// Most identities kept; the cache is emptied when full.
const MAX: usize = 4096;

/// (uid, gid, pid) as SO_PEERCRED gave them.
type PeerKey = (u32, u32, Option<i32>);

#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<PeerKey, (Instant, Identity)>>,
}

impl Resolver {
    /// The identity of `peer`, looked up off the async runtime (NSS may
    /// sit on a network) unless cached.
    pub async fn resolve(&self, peer: &Peer) -> Identity {
        let key = (peer.uid, peer.gid, peer.pid);
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, id)) = cache.get(&key)
            && now.duration_since(*at) < TTL
        {
            return id.clone();
        }
        let p = *peer;
        let id = match tokio::task::spawn_blocking(move || lookup(&p)).await {
            Ok(id) => id,
            // The lookup panicked: the kernel's ids alone, not cached.
            Err(_) => {
                return Identity {
                    uid: peer.uid,
                    gid: peer.gid,
                    pid: peer.pid,
                    user: None,
                    group: None,
                    groups: Vec::new(),
                    exe: None,
                };
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX {
                cache.clear();
            }
            cache.insert(key, (now, id.clone()));
        }
        id
    }
}

/// Looks `peer` up in the user database (no cache).
pub fn lookup(peer: &Peer) -> Identity {
    let user = uzers::get_user_by_uid(peer.uid).map(|u| u.name().to_string_lossy().into_owned());
    let group = uzers::get_group_by_gid(peer.gid).map(|g| g.name().to_string_lossy().into_owned());
    let mut groups: Vec<(u32, String)> = Vec::new();
    if let Some(g) = &group {
        groups.push((peer.gid, g.clone()));
    }
    if let Some(u) = &user {
        for g in uzers::get_user_groups(u, peer.gid).unwrap_or_default() {
            let entry = (g.gid(), g.name().to_string_lossy().into_owned());
            if !groups.contains(&entry) {
                groups.push(entry);
            }
        }
    }
    let exe = peer
        .pid
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
    Identity {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        user,
        group,
        groups,
        exe,
    }
}

impl Identity {
    /// `uid 1000 (alice)` for messages.
    pub fn describe(&self) -> String {
        match &self.user {
            Some(u) => format!("uid {} ({u})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves() {
        let id = lookup(&Peer {
            uid: 0,
            gid: 0,
            pid: Some(std::process::id() as i32),
        });
        assert_eq!(id.user.as_deref(), Some("root"));
        assert_eq!(id.group.as_deref(), Some("root"));
        assert!(id.groups.iter().any(|(g, _)| *g == 0));
        assert!(id.exe.is_some());
        assert_eq!(id.describe(), "uid 0 (root)");
    }
}
