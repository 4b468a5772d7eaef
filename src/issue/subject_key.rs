//! The subject's public key: PEM decoding with errors that say what was sent
//! instead, and the list of key types hsmca certifies.

use der::{Decode, Encode};
use spki::{DecodePublicKey, ObjectIdentifier, SubjectPublicKeyInfoOwned};

use crate::names::oid_name;
use const_oid::db::rfc5912::ID_EC_PUBLIC_KEY as EC_PUBLIC_KEY;
use const_oid::db::rfc5912::RSA_ENCRYPTION;
use const_oid::db::rfc5912::SECP_256_R_1 as SECP256R1;
use const_oid::db::rfc5912::SECP_384_R_1 as SECP384R1;
use const_oid::db::rfc8410::ID_ED_25519 as ED25519;

pub const MIN_RSA_BITS: usize = 2048;
pub const MAX_RSA_BITS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKeyKind {
    P256,
    P384,
    Rsa(usize),
    Ed25519,
}

impl SubjectKeyKind {
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa(_))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{field} is not valid PEM: {reason}")]
    Pem { field: &'static str, reason: String },
    #[error("{field} holds a PEM {got:?} block; expected {expected:?}")]
    WrongPemType {
        field: &'static str,
        got: String,
        expected: &'static str,
    },
    #[error(
        "{field} holds a PRIVATE KEY: send only the public key (`openssl pkey -pubout`), and treat this private key as exposed"
    )]
    PrivateKey { field: &'static str },
    #[error("{field}: the DER inside the PEM is malformed: {reason}")]
    Der { field: &'static str, reason: String },
    #[error("unsupported curve {0}; use P-256 or P-384")]
    UnsupportedCurve(String),
    #[error(
        "unsupported key algorithm {0}; use EC P-256/P-384, RSA (2048 bits or more) or Ed25519"
    )]
    UnsupportedAlgorithm(String),
    #[error("RSA key of {0} bits is too small; at least {MIN_RSA_BITS} bits are required")]
    RsaTooSmall(usize),
    #[error("RSA key of {0} bits is larger than the {MAX_RSA_BITS} bits hsmca accepts")]
    RsaTooLarge(usize),
    #[error("the public key is not a valid {0} key")]
    InvalidKey(&'static str),
}

/// Decodes one PEM block of type `expected` from an API field.
pub fn decode_pem(
    field: &'static str,
    text: &str,
    expected: &'static str,
) -> Result<Vec<u8>, KeyError> {
    let (label, der) = der::pem::decode_vec(text.trim().as_bytes()).map_err(|e| KeyError::Pem {
        field,
        reason: e.to_string(),
    })?;
    if label != expected {
        if label.contains("PRIVATE KEY") {
            return Err(KeyError::PrivateKey { field });
        }
        return Err(KeyError::WrongPemType {
            field,
            got: label.to_owned(),
            expected,
        });
    }
    Ok(der)
}

pub fn parse_public_key_pem(text: &str) -> Result<SubjectPublicKeyInfoOwned, KeyError> {
    let der = decode_pem("public_key", text, "PUBLIC KEY")?;
    SubjectPublicKeyInfoOwned::from_der(&der).map_err(|e| KeyError::Der {
        field: "public_key",
        reason: e.to_string(),
    })
}

/// Checks that `spki` is a key hsmca certifies, and that it is a valid key of
/// its type (a point on the curve, a sane RSA modulus).
pub fn check_subject_key(spki: &SubjectPublicKeyInfoOwned) -> Result<SubjectKeyKind, KeyError> {
    let der = spki.to_der().map_err(|e| KeyError::Der {
        field: "public key",
        reason: e.to_string(),
    })?;
    match spki.algorithm.oid {
        EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or(KeyError::UnsupportedCurve(
                    "(explicit or missing curve parameters)".into(),
                ))?;
            match curve {
                SECP256R1 => p256::PublicKey::from_public_key_der(&der)
                    .map(|_| SubjectKeyKind::P256)
                    .map_err(|_| KeyError::InvalidKey("P-256")),
                SECP384R1 => p384::PublicKey::from_public_key_der(&der)
                    .map(|_| SubjectKeyKind::P384)
                    .map_err(|_| KeyError::InvalidKey("P-384")),
                other => Err(KeyError::UnsupportedCurve(oid_name(other))),
            }
        }
        RSA_ENCRYPTION => {
            // The modulus size decides before the rsa crate's own limits do,
            // so that the error says what is wrong.
            let pk = rsa::pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(
                spki.subject_public_key.raw_bytes(),
            )
            .map_err(|_| KeyError::InvalidKey("RSA"))?;
            let n = pk.modulus.as_bytes();
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooSmall(bits));
            }
            if bits > MAX_RSA_BITS {
                return Err(KeyError::RsaTooLarge(bits));
            }
            rsa::RsaPublicKey::from_public_key_der(&der)
                .map(|_| SubjectKeyKind::Rsa(bits))
                .map_err(|_| KeyError::InvalidKey("RSA"))
        }
        ED25519 => ed25519_dalek::VerifyingKey::from_public_key_der(&der)
            .map(|_| SubjectKeyKind::Ed25519)
            .map_err(|_| KeyError::InvalidKey("Ed25519")),
        other => Err(KeyError::UnsupportedAlgorithm(oid_name(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 | openssl pkey -pubout
    const P521: &str = "-----BEGIN PUBLIC KEY-----
MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQBSA5+NPDsUbjU/ML/oG7rpGk4hALq
EBFB97ljYE+GEBDEbsSsxIDJIbRG/DSm4Vcp0LJSJHv5lFh8/TTZp4ELywYAA49r
oy18kGcvBISCnY20fBrQAriBxycySFqDvStfJvhrua87bSMF7xW/isT8SJeuKwUS
lt4D9GMBUBZBbt/hvqw=
-----END PUBLIC KEY-----";

    #[test]
    fn pem_type_errors_say_what_was_sent() {
        assert!(matches!(
            decode_pem("public_key", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "PUBLIC KEY"),
            Err(KeyError::WrongPemType { got, .. }) if got == "CERTIFICATE"
        ));
        assert!(matches!(
            decode_pem(
                "public_key",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                "PUBLIC KEY"
            ),
            Err(KeyError::PrivateKey { .. })
        ));
        assert!(matches!(
            decode_pem("public_key", "hello", "PUBLIC KEY"),
            Err(KeyError::Pem { .. })
        ));
    }

    #[test]
    fn p521_is_refused_by_name() {
        let spki = parse_public_key_pem(P521).unwrap();
        let err = check_subject_key(&spki).unwrap_err();
        assert_eq!(
            err,
            KeyError::UnsupportedCurve("secp521r1 (1.3.132.0.35)".into())
        );
    }

    #[test]
    fn software_keys_of_each_kind() {
        use p256::elliptic_curve::Generate;
        use spki::EncodePublicKey;
        let k = p256::SecretKey::generate().public_key();
        let spki =
            SubjectPublicKeyInfoOwned::from_der(k.to_public_key_der().unwrap().as_bytes()).unwrap();
        assert_eq!(check_subject_key(&spki), Ok(SubjectKeyKind::P256));
        let k = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let spki =
            SubjectPublicKeyInfoOwned::from_der(k.to_public_key_der().unwrap().as_bytes()).unwrap();
        assert_eq!(check_subject_key(&spki), Ok(SubjectKeyKind::Ed25519));
    }
}
