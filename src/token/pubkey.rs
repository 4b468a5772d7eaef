//! Turning the token's public-key attributes into a SubjectPublicKeyInfo, and
//! the EC domain parameters the token expects when generating keys.

use cryptoki::{
    object::{Attribute, AttributeType, ObjectHandle},
    session::Session,
};
use der::{Decode, Encode, asn1::OctetString};
use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};

use super::TokenError;
use crate::config::KeyType;

/// DER OID of the named curve, as CKA_EC_PARAMS wants it.
pub fn ec_params(kt: KeyType) -> Option<Vec<u8>> {
    match kt {
        // 1.2.840.10045.3.1.7
        KeyType::P256 => Some(vec![
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]),
        // 1.3.132.0.34
        KeyType::P384 => Some(vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
        _ => None,
    }
}

pub fn read_spki(
    session: &Session,
    public: ObjectHandle,
    kt: KeyType,
) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
    let bad = |m: String| TokenError::KeyUnsuitable {
        key: "public key".into(),
        problem: m,
    };
    if let Some(params) = ec_params(kt) {
        let attrs = session
            .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(TokenError::from_ck)?;
        let (mut got_params, mut point) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::EcParams(v) => got_params = v,
                Attribute::EcPoint(v) => point = v,
                _ => {}
            }
        }
        if got_params != params {
            return Err(bad(format!(
                "curve parameters {} do not match ca.key_type {}",
                hex::encode(&got_params),
                kt.name()
            )));
        }
        // CKA_EC_POINT is a DER OCTET STRING around the SEC1 point.
        let sec1 = OctetString::from_der(&point)
            .map(|o| o.as_bytes().to_vec())
            .unwrap_or(point);
        let der = match kt {
            KeyType::P256 => p256::PublicKey::from_sec1_bytes(&sec1)
                .map_err(|_| bad("CKA_EC_POINT is not a P-256 point".into()))?
                .to_public_key_der(),
            _ => p384::PublicKey::from_sec1_bytes(&sec1)
                .map_err(|_| bad("CKA_EC_POINT is not a P-384 point".into()))?
                .to_public_key_der(),
        }
        .map_err(|e| bad(e.to_string()))?;
        SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| bad(e.to_string()))
    } else {
        let attrs = session
            .get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(TokenError::from_ck)?;
        let (mut n, mut e) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = v,
                Attribute::PublicExponent(v) => e = v,
                _ => {}
            }
        }
        let key = rsa::RsaPublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&n),
            rsa::BoxedUint::from_be_slice_vartime(&e),
        )
        .map_err(|e| bad(format!("invalid RSA public key: {e}")))?;
        let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
        if Some(bits as u64) != kt.rsa_bits() {
            return Err(bad(format!(
                "it is RSA-{bits} but ca.key_type is {}",
                kt.name()
            )));
        }
        let der = key.to_public_key_der().map_err(|e| bad(e.to_string()))?;
        let spki =
            SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| bad(e.to_string()))?;
        // Round-trip check that the encoding is canonical.
        debug_assert_eq!(spki.to_der().ok().as_deref(), Some(der.as_bytes()));
        Ok(spki)
    }
}
