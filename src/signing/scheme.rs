//! The CA's signature schemes, spelled out byte for byte: which hash Rust computes
//! over the TBS, what exactly is handed to the token's C_Sign (the bare digest,
//! or a DER DigestInfo for PKCS#1 v1.5), and how the token's raw output becomes
//! an X.509 signature value. The token never sees the certificate.

use der::Any;
use sha2::{Digest, Sha256, Sha384};
use spki::AlgorithmIdentifierOwned;

use crate::config::{CaConfig, DigestAlg, RsaPadding};
pub use const_oid::db::rfc5912::ECDSA_WITH_SHA_256 as ECDSA_WITH_SHA256;
pub use const_oid::db::rfc5912::ECDSA_WITH_SHA_384 as ECDSA_WITH_SHA384;
pub use const_oid::db::rfc5912::ECDSA_WITH_SHA_512 as ECDSA_WITH_SHA512;
pub use const_oid::db::rfc5912::ID_RSASSA_PSS as RSASSA_PSS;
pub use const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION as SHA256_WITH_RSA;
pub use const_oid::db::rfc5912::SHA_384_WITH_RSA_ENCRYPTION as SHA384_WITH_RSA;
pub use const_oid::db::rfc5912::SHA_512_WITH_RSA_ENCRYPTION as SHA512_WITH_RSA;
pub use const_oid::db::rfc8410::ID_ED_25519 as ED25519;

/// DER prefix of `DigestInfo { AlgorithmIdentifier { sha256, NULL }, OCTET STRING (32) }`
/// (RFC 8017 §9.2, note 1); the digest follows.
const DIGEST_INFO_SHA256: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
/// The same for SHA-384 (48-byte digest).
const DIGEST_INFO_SHA384: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];

/// The CA's signature scheme. Each variant fixes the hash, the PKCS#11
/// mechanism (plain, never hash-combined) and the encoding of both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// CKM_ECDSA on a P-256 key over a SHA-256 digest.
    EcdsaP256Sha256,
    /// CKM_ECDSA on a P-384 key over a SHA-384 digest.
    EcdsaP384Sha384,
    /// CKM_RSA_PKCS over DigestInfo(SHA-256).
    RsaPkcs1Sha256,
    /// CKM_RSA_PKCS over DigestInfo(SHA-384).
    RsaPkcs1Sha384,
    /// CKM_RSA_PKCS_PSS(SHA-256, MGF1-SHA-256, salt 32) over the digest.
    RsaPssSha256,
    /// CKM_RSA_PKCS_PSS(SHA-384, MGF1-SHA-384, salt 48) over the digest.
    RsaPssSha384,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemeError {
    #[error("the token returned a {got}-byte ECDSA signature; expected {expected} bytes (r||s)")]
    BadEcdsaLength { got: usize, expected: usize },
    #[error("the token returned an ECDSA signature that is not a valid (r, s) pair")]
    BadEcdsaValue,
    #[error("cannot encode the signature algorithm identifier: {0}")]
    Encoding(String),
}

impl SignatureScheme {
    pub fn for_ca(ca: &CaConfig) -> Self {
        use crate::config::KeyType::*;
        match (ca.key_type, ca.rsa_padding, ca.digest()) {
            (P256, _, _) => Self::EcdsaP256Sha256,
            (P384, _, _) => Self::EcdsaP384Sha384,
            (_, RsaPadding::Pkcs1, DigestAlg::Sha256) => Self::RsaPkcs1Sha256,
            (_, RsaPadding::Pkcs1, DigestAlg::Sha384) => Self::RsaPkcs1Sha384,
            (_, RsaPadding::Pss, DigestAlg::Sha256) => Self::RsaPssSha256,
            (_, RsaPadding::Pss, DigestAlg::Sha384) => Self::RsaPssSha384,
        }
    }

    pub fn digest_alg(self) -> DigestAlg {
        match self {
            Self::EcdsaP256Sha256 | Self::RsaPkcs1Sha256 | Self::RsaPssSha256 => DigestAlg::Sha256,
            Self::EcdsaP384Sha384 | Self::RsaPkcs1Sha384 | Self::RsaPssSha384 => DigestAlg::Sha384,
        }
    }

    pub fn is_ecdsa(self) -> bool {
        matches!(self, Self::EcdsaP256Sha256 | Self::EcdsaP384Sha384)
    }

    /// The hash of `data` that stands for it everywhere after this point.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self.digest_alg() {
            DigestAlg::Sha256 => Sha256::digest(data).to_vec(),
            DigestAlg::Sha384 => Sha384::digest(data).to_vec(),
        }
    }

    /// The exact bytes given to C_Sign for `digest`: the digest itself for
    /// ECDSA and PSS, the DER DigestInfo for PKCS#1 v1.5.
    pub fn token_input(self, digest: &[u8]) -> Vec<u8> {
        let prefix: &[u8] = match self {
            Self::RsaPkcs1Sha256 => &DIGEST_INFO_SHA256,
            Self::RsaPkcs1Sha384 => &DIGEST_INFO_SHA384,
            _ => &[],
        };
        let mut input = Vec::with_capacity(prefix.len() + digest.len());
        input.extend_from_slice(prefix);
        input.extend_from_slice(digest);
        input
    }

    /// Turns the token's output into the X.509 signature value: ECDSA's raw
    /// r||s becomes `ECDSA-Sig-Value` DER; RSA output is already final.
    pub fn signature_value(self, raw: &[u8]) -> Result<Vec<u8>, SchemeError> {
        match self {
            Self::EcdsaP256Sha256 => {
                if raw.len() != 64 {
                    return Err(SchemeError::BadEcdsaLength {
                        got: raw.len(),
                        expected: 64,
                    });
                }
                let sig = p256::ecdsa::Signature::from_slice(raw)
                    .map_err(|_| SchemeError::BadEcdsaValue)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            Self::EcdsaP384Sha384 => {
                if raw.len() != 96 {
                    return Err(SchemeError::BadEcdsaLength {
                        got: raw.len(),
                        expected: 96,
                    });
                }
                let sig = p384::ecdsa::Signature::from_slice(raw)
                    .map_err(|_| SchemeError::BadEcdsaValue)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            _ => Ok(raw.to_vec()),
        }
    }

    /// The AlgorithmIdentifier written into certificates, CSRs and CRLs.
    pub fn algorithm_identifier(self) -> Result<AlgorithmIdentifierOwned, SchemeError> {
        let plain = |oid| AlgorithmIdentifierOwned {
            oid,
            parameters: None,
        };
        // RFC 4055: PKCS#1 v1.5 identifiers carry an explicit NULL.
        let null = |oid| AlgorithmIdentifierOwned {
            oid,
            parameters: Some(Any::null()),
        };
        let enc = |e: spki::Error| SchemeError::Encoding(e.to_string());
        Ok(match self {
            Self::EcdsaP256Sha256 => plain(ECDSA_WITH_SHA256),
            Self::EcdsaP384Sha384 => plain(ECDSA_WITH_SHA384),
            Self::RsaPkcs1Sha256 => null(SHA256_WITH_RSA),
            Self::RsaPkcs1Sha384 => null(SHA384_WITH_RSA),
            Self::RsaPssSha256 => {
                rsa::pss::get_default_pss_signature_algo_id::<Sha256>().map_err(enc)?
            }
            Self::RsaPssSha384 => {
                rsa::pss::get_default_pss_signature_algo_id::<Sha384>().map_err(enc)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Sequence, asn1::OctetString};

    #[derive(Sequence)]
    struct DigestInfo {
        alg: AlgorithmIdentifierOwned,
        digest: OctetString,
    }

    #[test]
    fn digest_info_is_der_of_the_right_algorithm() {
        for (scheme, oid, len) in [
            (
                SignatureScheme::RsaPkcs1Sha256,
                "2.16.840.1.101.3.4.2.1",
                32,
            ),
            (
                SignatureScheme::RsaPkcs1Sha384,
                "2.16.840.1.101.3.4.2.2",
                48,
            ),
        ] {
            let digest = scheme.digest(b"tbs");
            assert_eq!(digest.len(), len);
            let input = scheme.token_input(&digest);
            assert_eq!(input.len(), 19 + len);
            let di = DigestInfo::from_der(&input).unwrap();
            assert_eq!(di.alg.oid.to_string(), oid);
            assert_eq!(di.alg.parameters, Some(Any::null()));
            assert_eq!(di.digest.as_bytes(), digest.as_slice());
        }
    }

    #[test]
    fn ecdsa_and_pss_hand_over_the_bare_digest() {
        for (scheme, len) in [
            (SignatureScheme::EcdsaP256Sha256, 32),
            (SignatureScheme::EcdsaP384Sha384, 48),
            (SignatureScheme::RsaPssSha256, 32),
            (SignatureScheme::RsaPssSha384, 48),
        ] {
            let d = scheme.digest(b"tbs");
            assert_eq!(scheme.token_input(&d), d);
            assert_eq!(d.len(), len);
        }
    }

    #[test]
    fn raw_ecdsa_becomes_der_that_verifies() {
        use p256::ecdsa::{SigningKey, signature::hazmat::PrehashVerifier};
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let digest = SignatureScheme::EcdsaP256Sha256.digest(b"tbs");
        let (sig, _): (p256::ecdsa::Signature, _) = key.sign_prehash_recoverable(&digest);
        let der = SignatureScheme::EcdsaP256Sha256
            .signature_value(&sig.to_bytes())
            .unwrap();
        let parsed = p256::ecdsa::DerSignature::from_bytes(&der).unwrap();
        key.verifying_key()
            .verify_prehash(&digest, &parsed)
            .unwrap();
        assert!(matches!(
            SignatureScheme::EcdsaP256Sha256.signature_value(&[1; 63]),
            Err(SchemeError::BadEcdsaLength { got: 63, .. })
        ));
        assert!(matches!(
            SignatureScheme::EcdsaP256Sha256.signature_value(&[0; 64]),
            Err(SchemeError::BadEcdsaValue)
        ));
    }

    #[test]
    fn algorithm_identifiers() {
        let pkcs1 = SignatureScheme::RsaPkcs1Sha256
            .algorithm_identifier()
            .unwrap();
        assert_eq!(pkcs1.oid, SHA256_WITH_RSA);
        assert_eq!(pkcs1.parameters, Some(Any::null()));
        let ec = SignatureScheme::EcdsaP384Sha384
            .algorithm_identifier()
            .unwrap();
        assert_eq!(ec.oid, ECDSA_WITH_SHA384);
        assert!(ec.parameters.is_none());
        let pss = SignatureScheme::RsaPssSha256
            .algorithm_identifier()
            .unwrap();
        assert_eq!(pss.oid, RSASSA_PSS);
        assert!(pss.parameters.is_some());
    }
}
