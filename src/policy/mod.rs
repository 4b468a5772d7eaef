//! Who may have what. Default deny: a request is granted only by a rule
//! that matches the caller (by uid, gid, user or group name) and allows its
//! profile and every one of its names; the first such rule, in file order,
//! grants it and its duration cap, rate and quota apply. The check runs on
//! the names exactly as requested, before anything is signed.
//!
//! [`Policy`] (rules.rs) is the rule engine, compiled from the config and
//! replaced whole on reload; [`Authorizer`] (authorizer.rs) is what the
//! services hold: the policy in force, caller lookup, and the per-caller
//! bookkeeping (issuances in flight, audited refusals) that quotas and the
//! audit log need.

mod authorizer;
pub mod pattern;
mod rules;

pub use self::{
    authorizer::{Authorizer, Reservation, over_quota},
    rules::{Grant, Policy},
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

#[cfg(test)]
mod tests;
