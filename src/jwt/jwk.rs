//! Public keys as JSON Web Keys: the JWK of a token key (RFC 7517/7518),
//! its RFC 7638 thumbprint (the `kid` of every JWT-SVID it signs), and the
//! JWKS that the Workload API hands out as a trust domain's JWT bundle
//! (SPIFFE Trust Domain and Bundle §4: each key carries `use: jwt-svid`).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use der::Decode;
use sha2::{Digest, Sha256};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};

use const_oid::db::rfc5912::{
    ID_EC_PUBLIC_KEY as EC_PUBLIC_KEY, RSA_ENCRYPTION, SECP_256_R_1 as SECP256R1,
    SECP_384_R_1 as SECP384R1,
};

/// The `use` every key of a JWT bundle carries (SPIFFE bundle format).
pub const JWT_SVID_USE: &str = "jwt-svid";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("the public key cannot be written as a JWK: {0}")]
    Unsupported(String),
}

/// The public members of a JWK, each already base64url where the JWA says
/// so. Only the key types a JWT-SVID key may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwk {
    Ec {
        crv: &'static str,
        x: String,
        y: String,
    },
    Rsa {
        n: String,
        e: String,
    },
}

impl Jwk {
    /// The JWK of a P-256, P-384 or RSA SubjectPublicKeyInfo.
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, JwkError> {
        let bits = spki.subject_public_key.raw_bytes();
        match spki.algorithm.oid {
            EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
                let (crv, len) = match curve {
                    Some(SECP256R1) => ("P-256", 32),
                    Some(SECP384R1) => ("P-384", 48),
                    other => {
                        return Err(JwkError::Unsupported(format!(
                            "EC curve {}",
                            other.map(|o| o.to_string()).unwrap_or_default()
                        )));
                    }
                };
                // An uncompressed SEC1 point: 0x04 || x || y, each the
                // curve's field size (RFC 7518 §6.2.1.2: full length).
                if bits.len() != 1 + 2 * len || bits[0] != 0x04 {
                    return Err(JwkError::Unsupported(
                        "the EC point is not uncompressed".into(),
                    ));
                }
                Ok(Self::Ec {
                    crv,
                    x: B64.encode(&bits[1..1 + len]),
                    y: B64.encode(&bits[1 + len..]),
                })
            }
            RSA_ENCRYPTION => {
                // UintRef drops leading zeros: RFC 7518 §6.3.1.1 wants the
                // minimum number of octets.
                let key = rsa::pkcs1::RsaPublicKeyRef::from_der(bits)
                    .map_err(|e| JwkError::Unsupported(format!("RSA key: {e}")))?;
                Ok(Self::Rsa {
                    n: B64.encode(key.modulus.as_bytes()),
                    e: B64.encode(key.public_exponent.as_bytes()),
                })
            }
            other => Err(JwkError::Unsupported(format!("key algorithm {other}"))),
        }
    }

    /// RFC 7638: SHA-256 over the required members in lexicographic order,
    /// no whitespace, base64url. Every value here is base64url or a fixed
    /// name, so none needs JSON escaping.
    pub fn thumbprint(&self) -> String {
        let canonical = match self {
            Self::Ec { crv, x, y } => {
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            Self::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        B64.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// The JWK as a bundle entry: its members plus `kid` and `use`.
    pub fn to_json(&self, kid: &str) -> serde_json::Value {
        match self {
            Self::Ec { crv, x, y } => serde_json::json!({
                "kty": "EC", "use": JWT_SVID_USE, "kid": kid, "crv": crv, "x": x, "y": y,
            }),
            Self::Rsa { n, e } => serde_json::json!({
                "kty": "RSA", "use": JWT_SVID_USE, "kid": kid, "n": n, "e": e,
            }),
        }
    }
}

/// One key a relying party should accept JWT-SVIDs from: its public key,
/// the `kid` naming it (its thumbprint) and its JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwtKey {
    pub kid: String,
    pub jwk: Jwk,
    pub spki: SubjectPublicKeyInfoOwned,
}

impl PublicJwtKey {
    pub fn new(spki: SubjectPublicKeyInfoOwned) -> Result<Self, JwkError> {
        let jwk = Jwk::from_spki(&spki)?;
        Ok(Self {
            kid: jwk.thumbprint(),
            jwk,
            spki,
        })
    }
}

/// The JWKS document of these keys (a SPIFFE JWT bundle), as bytes.
/// `refresh_hint` (seconds) tells relying parties how often to look again.
pub fn jwks(keys: &[PublicJwtKey], refresh_hint: Option<u64>) -> Vec<u8> {
    let mut doc = serde_json::Map::new();
    doc.insert(
        "keys".into(),
        serde_json::Value::Array(keys.iter().map(|k| k.jwk.to_json(&k.kid)).collect()),
    );
    if let Some(hint) = refresh_hint {
        doc.insert("spiffe_refresh_hint".into(), hint.into());
    }
    // A Map of Values always serialises.
    serde_json::to_vec(&serde_json::Value::Object(doc)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spki::EncodePublicKey;

    fn spki_of(der: &[u8]) -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned::from_der(der).unwrap()
    }

    /// RFC 7638 §3.1: the example RSA key and its thumbprint.
    #[test]
    fn rfc7638_example_thumbprint() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let key = rsa::RsaPublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&B64.decode(n).unwrap()),
            rsa::BoxedUint::from_be_slice_vartime(&B64.decode("AQAB").unwrap()),
        )
        .unwrap();
        let spki = spki_of(key.to_public_key_der().unwrap().as_bytes());
        let jwk = Jwk::from_spki(&spki).unwrap();
        assert_eq!(
            jwk,
            Jwk::Rsa {
                n: n.into(),
                e: "AQAB".into()
            }
        );
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn ec_keys_have_full_length_coordinates() {
        let k256 = p256::SecretKey::from_slice(&[3u8; 32])
            .unwrap()
            .public_key();
        let spki = spki_of(k256.to_public_key_der().unwrap().as_bytes());
        let Jwk::Ec { crv, x, y } = Jwk::from_spki(&spki).unwrap() else {
            panic!("not EC")
        };
        assert_eq!(crv, "P-256");
        assert_eq!(B64.decode(&x).unwrap().len(), 32);
        assert_eq!(B64.decode(&y).unwrap().len(), 32);

        let k384 = p384::SecretKey::from_slice(&[3u8; 48])
            .unwrap()
            .public_key();
        let spki = spki_of(k384.to_public_key_der().unwrap().as_bytes());
        let jwk = Jwk::from_spki(&spki).unwrap();
        let Jwk::Ec { crv, x, .. } = &jwk else {
            panic!("not EC")
        };
        assert_eq!(*crv, "P-384");
        assert_eq!(B64.decode(x).unwrap().len(), 48);
        // The thumbprint is of the canonical form, and stable.
        assert_eq!(jwk.thumbprint(), jwk.clone().thumbprint());
        assert_eq!(B64.decode(jwk.thumbprint()).unwrap().len(), 32);
    }

    #[test]
    fn ed25519_is_refused() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]).verifying_key();
        let spki = spki_of(key.to_public_key_der().unwrap().as_bytes());
        assert!(matches!(
            Jwk::from_spki(&spki),
            Err(JwkError::Unsupported(_))
        ));
    }

    #[test]
    fn jwks_marks_every_key_for_jwt_svids() {
        let a = p256::SecretKey::from_slice(&[4u8; 32])
            .unwrap()
            .public_key();
        let b = p256::SecretKey::from_slice(&[5u8; 32])
            .unwrap()
            .public_key();
        let keys: Vec<_> = [a, b]
            .iter()
            .map(|k| PublicJwtKey::new(spki_of(k.to_public_key_der().unwrap().as_bytes())).unwrap())
            .collect();
        let doc: serde_json::Value = serde_json::from_slice(&jwks(&keys, Some(60))).unwrap();
        let entries = doc["keys"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        for (entry, key) in entries.iter().zip(&keys) {
            assert_eq!(entry["use"], "jwt-svid");
            assert_eq!(entry["kty"], "EC");
            assert_eq!(entry["kid"], key.kid.as_str());
        }
        assert_eq!(doc["spiffe_refresh_hint"], 60);
    }
}
