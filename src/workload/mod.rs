//! SPIFFE identities for local workloads: who is calling ([`attest`]),
//! which registration entries give it which SPIFFE IDs ([`entries`]), and
//! the X509-SVIDs that stand for those IDs, made and rotated here and shared
//! by every stream of the same identity ([`Workload`]).
//!
//! The design follows SPIRE's agent: one cache of identities, and one stream
//! loop per client stream that only watches that cache. A caller is reduced
//! to what the entries can select on (uid, gid, user, groups, executable,
//! systemd unit); callers alike share one *view*, a
//! [`tokio::sync::watch`] channel of [`X509State`]; each SPIFFE ID of an
//! entry has one *slot* holding its current SVID, one task keeping it
//! signed and rotated, and one signature per rotation however many streams
//! watch it.
//!
//! How the services on the workload socket use it:
//!
//! - **Attestation.** Every call first turns the connection's peer into a
//!   [`Caller`] with [`Workload::attest`] (the gRPC side does it in
//!   `server::workload::caller`, which SDS and the JWT methods call too).
//!   The kernel's word only: SO_PEERCRED, then `/proc/PID`, guarded against
//!   the PID being reused; a caller that is gone gets an error, not an SVID.
//! - **X.509 (Workload API, Envoy SDS).** [`Workload::subscribe`] returns a
//!   `watch::Receiver<Arc<X509State>>`. A stream sends the current state,
//!   then one message per change (`changed().await`): `version` grows with
//!   every change, `svids` holds the caller's SVIDs (default first),
//!   `bundle` the trust domain's CA certificates and `crl` the current CRL.
//!   [`X509Status::Pending`] means "wait"; [`X509Status::Unavailable`] means
//!   no SVID could be signed yet (UNAVAILABLE, clients retry);
//!   [`X509Status::Denied`] means no entry matches (PERMISSION_DENIED), also
//!   when a reload removed the caller's entries while it was watching. SDS
//!   can use `version` as its `version_info`.
//! - **JWT.** [`Workload::identities`] says which SPIFFE IDs (and hints) a
//!   caller may have, without signing anything; an empty list means
//!   PERMISSION_DENIED. [`Workload::trust_domain`] is the trust domain for
//!   `sub` checks and bundle keys. The JWT signing key is not held here.
//!
//! Workload private keys are made here from the OS CSPRNG, live only in
//! memory ([`Svid::key`] is zeroized when the last holder drops it) and
//! are never written to the store, a log line or an error.

pub mod attest;
mod cache;
pub mod entries;
mod issuing;
pub mod keys;

use std::{sync::Arc, time::SystemTime};

use tokio::sync::watch;
use zeroize::Zeroizing;

pub use self::{
    attest::{AttestError, Caller, ConnectedPeer},
    cache::Workload,
    entries::Identity,
};
use crate::spiffe_id::SpiffeId;

/// The store tag that marks an SVID's certificate record, with its SPIFFE
/// ID as the value.
pub const SPIFFE_ID_TAG: &str = "hsmca:spiffe-id";

/// One X509-SVID as a workload receives it.
pub struct Svid {
    pub spiffe_id: SpiffeId,
    /// DER certificates: the SVID first, then any intermediate CA up to
    /// (not including) the root of the trust bundle.
    pub chain: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER, unencrypted (as the Workload API
    /// sends it). Zeroized on drop.
    pub key: Zeroizing<Vec<u8>>,
    pub hint: String,
    pub not_after: SystemTime,
    /// The certificate's record in the store, and its serial (lowercase hex).
    pub record_id: String,
    pub serial: String,
}

impl std::fmt::Debug for Svid {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// The SVID certificate alone (DER).
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map_or(&[], Vec::as_slice)
    }
}

/// Where a caller's X.509 identity stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X509Status {
    /// Its SVIDs are being signed.
    Pending,
    /// Every SVID is there.
    Ready,
    /// An SVID could not be signed (the token is away) and there is no
    /// earlier one to hand out; signing is retried.
    Unavailable,
    /// No registration entry matches the caller.
    Denied,
}

/// Everything a caller's X.509 stream sends, as one value: a stream never
/// mixes parts of two states.
#[derive(Debug, Clone)]
pub struct X509State {
    /// Grows with every change the caller can see (SVID, bundle, CRL).
    pub version: u64,
    pub status: X509Status,
    /// The caller's SVIDs, the default first; empty unless `Ready`.
    pub svids: Vec<Arc<Svid>>,
    /// The trust domain's CA certificates (DER).
    pub bundle: Arc<Vec<Vec<u8>>>,
    /// The current CRL (DER), once one has been made.
    pub crl: Option<Arc<Vec<u8>>>,
}

/// A caller's X.509 state as it changes.
pub type X509Watch = watch::Receiver<Arc<X509State>>;
