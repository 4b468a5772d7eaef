//! The signing contract: what the CA key signs, and what can go wrong, in
//! terms the rest of the daemon needs and nothing more. The certificate
//! builder hands a digest to a [`DigestSigner`] and gets an X.509
//! signature value back; whether a PKCS#11 token, its session pool or its
//! recovery thread stands behind it is the implementation's business
//! (`token/` translates its own errors and state into [`SignError`] and
//! [`Readiness`]). Services, health and the watchdog see only this module.

mod scheme;

use std::{future::Future, pin::Pin};

use sha2::{Digest, Sha256};
use spki::SubjectPublicKeyInfoOwned;

pub use scheme::*;

/// Why a digest was not signed. Each variant says what the caller should
/// do, not what the token said (that goes to the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The signer's queue is full: retry in a moment.
    #[error("the signing queue is full; retry shortly")]
    Busy,
    /// The token is away and being reconnected: requests fail fast until
    /// it is back.
    #[error("the HSM is unavailable; it is being reconnected")]
    Unavailable,
    /// The signer was shut down.
    #[error("the signer has stopped")]
    Stopped,
    /// The token refused this one signature, or answered with one that is
    /// not a signature of the scheme: retrying the same input will not help.
    #[error("the HSM refused to sign: {0}")]
    Rejected(String),
    /// Signing failed for a reason that may pass (a fault that survived
    /// the signer's own retry).
    #[error("the HSM could not sign: {0}")]
    Failed(String),
}

impl From<SchemeError> for SignError {
    fn from(e: SchemeError) -> Self {
        Self::Rejected(e.to_string())
    }
}

/// Whether the signer can sign right now; health and the systemd watchdog
/// follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// A fault took the key away; requests fail fast until it is back.
    Unavailable,
}

/// A boxed signing future, so the signer can sit behind `Arc<dyn _>`.
pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, SignError>> + Send + 'a>>;

/// Signs with the CA key. The input is a digest that the caller computed with
/// [`SignatureScheme::digest`] — never the message — and the output is the
/// X.509 signature value (DER `ECDSA-Sig-Value`, or the RSA signature bytes).
pub trait DigestSigner: Send + Sync {
    fn scheme(&self) -> SignatureScheme;
    /// The CA key's public half, as held in the token.
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned;
    fn sign_digest(&self, digest: Vec<u8>) -> SignFuture<'_>;
}

/// Lowercase hex SHA-256 of a public key's DER: how messages name a key.
pub fn fingerprint(spki: &SubjectPublicKeyInfoOwned) -> String {
    use der::Encode;
    spki.to_der()
        .map(|d| hex::encode(Sha256::digest(d)))
        .unwrap_or_else(|_| "(unencodable)".into())
}
