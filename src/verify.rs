//! Signature verification with public keys only: a CSR's proof of possession,
//! an imported chain's links, and the start-up check that the token's key is
//! the one in the CA certificate.

use der::{Decode, Encode};
use sha2::{Digest, Sha256, Sha384, Sha512};
use signature::hazmat::PrehashVerifier;
use spki::{
    AlgorithmIdentifierOwned, DecodePublicKey, ObjectIdentifier, SubjectPublicKeyInfoOwned,
};

use crate::signing::*;
use const_oid::db::rfc5912::ID_EC_PUBLIC_KEY as EC_PUBLIC_KEY;
use const_oid::db::rfc5912::ID_SHA_256 as SHA256;
use const_oid::db::rfc5912::ID_SHA_384 as SHA384;
use const_oid::db::rfc5912::ID_SHA_512 as SHA512;
use const_oid::db::rfc5912::RSA_ENCRYPTION;
use const_oid::db::rfc5912::SECP_256_R_1 as SECP256R1;
use const_oid::db::rfc5912::SECP_384_R_1 as SECP384R1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("signature algorithm {0} is not supported")]
    UnsupportedAlgorithm(String),
    #[error("the signature algorithm does not match the key type")]
    KeyMismatch,
    #[error("the public key is malformed")]
    BadKey,
    #[error("the signature is malformed")]
    Malformed,
    #[error("the signature does not verify")]
    Invalid,
}

#[derive(Clone, Copy)]
enum Hash {
    S256,
    S384,
    S512,
}

impl Hash {
    fn of(self, msg: &[u8]) -> Vec<u8> {
        match self {
            Hash::S256 => Sha256::digest(msg).to_vec(),
            Hash::S384 => Sha384::digest(msg).to_vec(),
            Hash::S512 => Sha512::digest(msg).to_vec(),
        }
    }
    fn from_oid(oid: ObjectIdentifier) -> Option<Self> {
        match oid {
            SHA256 => Some(Hash::S256),
            SHA384 => Some(Hash::S384),
            SHA512 => Some(Hash::S512),
            _ => None,
        }
    }
}

fn named_curve(spki: &SubjectPublicKeyInfoOwned) -> Option<ObjectIdentifier> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
}

/// Verifies `sig` over `msg` by the holder of `spki`, with algorithm `alg`.
pub fn verify(
    spki: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let spki_der = spki.to_der().map_err(|_| VerifyError::BadKey)?;
    match alg.oid {
        ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384 | ECDSA_WITH_SHA512 => {
            verify_ecdsa(spki, &spki_der, alg, msg, sig)
        }
        SHA256_WITH_RSA | SHA384_WITH_RSA | SHA512_WITH_RSA => {
            verify_pkcs1(spki, &spki_der, alg, msg, sig)
        }
        RSASSA_PSS => verify_pss(spki, &spki_der, alg, msg, sig),
        ED25519 => {
            if spki.algorithm.oid != ED25519 {
                return Err(VerifyError::KeyMismatch);
            }
            let key = ed25519_dalek::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|_| VerifyError::BadKey)?;
            let sig =
                ed25519_dalek::Signature::from_slice(sig).map_err(|_| VerifyError::Malformed)?;
            key.verify_strict(msg, &sig)
                .map_err(|_| VerifyError::Invalid)
        }
        other => Err(VerifyError::UnsupportedAlgorithm(crate::names::oid_name(
            other,
        ))),
    }
}

fn verify_ecdsa(
    spki: &SubjectPublicKeyInfoOwned,
    spki_der: &[u8],
    alg: &AlgorithmIdentifierOwned,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    if spki.algorithm.oid != EC_PUBLIC_KEY {
        return Err(VerifyError::KeyMismatch);
    }
    let hash = match alg.oid {
        ECDSA_WITH_SHA256 => Hash::S256,
        ECDSA_WITH_SHA384 => Hash::S384,
        _ => Hash::S512,
    };
    let digest = hash.of(msg);
    match named_curve(spki) {
        Some(SECP256R1) => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
                .map_err(|_| VerifyError::BadKey)?;
            let sig =
                p256::ecdsa::DerSignature::from_bytes(sig).map_err(|_| VerifyError::Malformed)?;
            key.verify_prehash(&digest, &sig)
                .map_err(|_| VerifyError::Invalid)
        }
        Some(SECP384R1) => {
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(spki_der)
                .map_err(|_| VerifyError::BadKey)?;
            let sig =
                p384::ecdsa::DerSignature::from_bytes(sig).map_err(|_| VerifyError::Malformed)?;
            key.verify_prehash(&digest, &sig)
                .map_err(|_| VerifyError::Invalid)
        }
        _ => Err(VerifyError::BadKey),
    }
}

fn verify_pkcs1(
    spki: &SubjectPublicKeyInfoOwned,
    spki_der: &[u8],
    alg: &AlgorithmIdentifierOwned,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let key = rsa_key(spki, spki_der)?;
    let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| VerifyError::Malformed)?;
    let r = match alg.oid {
        SHA256_WITH_RSA => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
            .verify_prehash(&Sha256::digest(msg), &sig),
        SHA384_WITH_RSA => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key)
            .verify_prehash(&Sha384::digest(msg), &sig),
        _ => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key)
            .verify_prehash(&Sha512::digest(msg), &sig),
    };
    r.map_err(|_| VerifyError::Invalid)
}

fn verify_pss(
    spki: &SubjectPublicKeyInfoOwned,
    spki_der: &[u8],
    alg: &AlgorithmIdentifierOwned,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let key = rsa_key(spki, spki_der)?;
    let params = alg.parameters.as_ref().ok_or(VerifyError::Malformed)?;
    let params_der = params.to_der().map_err(|_| VerifyError::Malformed)?;
    let params = rsa::pkcs1::RsaPssParams::<der::Any>::from_der(&params_der)
        .map_err(|_| VerifyError::Malformed)?;
    let hash = Hash::from_oid(params.hash.oid).ok_or_else(|| {
        VerifyError::UnsupportedAlgorithm(format!("RSASSA-PSS with hash {}", params.hash.oid))
    })?;
    // MGF1 must use the same hash; anything else is exotic enough to refuse.
    let mgf_hash = params.mask_gen.parameters.as_ref().map(|p| p.oid);
    if mgf_hash != Some(params.hash.oid) {
        return Err(VerifyError::UnsupportedAlgorithm(
            "RSASSA-PSS with a different MGF1 hash".into(),
        ));
    }
    let salt = usize::from(params.salt_len);
    let sig = rsa::pss::Signature::try_from(sig).map_err(|_| VerifyError::Malformed)?;
    let digest = hash.of(msg);
    let r = match hash {
        Hash::S256 => rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(key, salt)
            .verify_prehash(&digest, &sig),
        Hash::S384 => rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key, salt)
            .verify_prehash(&digest, &sig),
        Hash::S512 => rsa::pss::VerifyingKey::<Sha512>::new_with_salt_len(key, salt)
            .verify_prehash(&digest, &sig),
    };
    r.map_err(|_| VerifyError::Invalid)
}

fn rsa_key(spki: &SubjectPublicKeyInfoOwned, der: &[u8]) -> Result<rsa::RsaPublicKey, VerifyError> {
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(VerifyError::KeyMismatch);
    }
    rsa::RsaPublicKey::from_public_key_der(der).map_err(|_| VerifyError::BadKey)
}
