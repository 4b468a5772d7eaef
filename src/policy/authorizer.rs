//! What the services hold: the policy in force, the caller lookup, and
//! per-caller bookkeeping for quotas and the audit log.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
};

use governor::{Quota, RateLimiter};

use super::{Grant, Policy, PolicyError, rules::Limiter};
use crate::peer::{
    Peer,
    identity::{self, Identity},
};

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
