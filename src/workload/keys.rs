//! Workload keys: made in memory from the OS CSPRNG, handed out as PKCS#8
//! DER in a buffer that is zeroized when dropped, and never written
//! anywhere. RSA generation takes a while, so callers run it off the async
//! runtime.

use const_oid::{AssociatedOid, ObjectIdentifier, db::rfc5912::ID_EC_PUBLIC_KEY};
use der::Decode;
use p256::{
    elliptic_curve::{
        AffinePoint, CurveArithmetic, FieldBytesSize, Generate, SecretKey,
        sec1::{FromSec1Point, ModulusSize, ToSec1Point},
    },
    pkcs8,
};
use spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroizing;

use crate::config::WorkloadKeyType;

#[derive(Debug, thiserror::Error)]
pub enum KeyGenError {
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    #[error("cannot make or encode the key: {0}")]
    Encoding(String),
}

/// A fresh key pair.
pub struct WorkloadKey {
    pub pkcs8: Zeroizing<Vec<u8>>,
    pub spki: SubjectPublicKeyInfoOwned,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(..)")
    }
}

/// Makes a key of type `kt` (blocking; RSA takes up to a second or more).
pub fn generate(kt: WorkloadKeyType) -> Result<WorkloadKey, KeyGenError> {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let enc = |e: &dyn std::fmt::Display| KeyGenError::Encoding(e.to_string());
    // Fail cleanly (not in the middle of RSA generation) when the CSPRNG
    // is not usable.
    let mut probe = [0u8; 16];
    getrandom::fill(&mut probe).map_err(|e| KeyGenError::Random(e.to_string()))?;
    let (pkcs8, spki_der) = match kt {
        WorkloadKeyType::P256 => ec_key::<p256::NistP256>()?,
        WorkloadKeyType::P384 => ec_key::<p384::NistP384>()?,
        WorkloadKeyType::Rsa2048 => {
            let mut rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
            let sk = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| enc(&e))?;
            (
                Zeroizing::new(sk.to_pkcs8_der().map_err(|e| enc(&e))?.as_bytes().to_vec()),
                sk.to_public_key()
                    .to_public_key_der()
                    .map_err(|e| enc(&e))?,
            )
        }
    };
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(|e| enc(&e))?;
    Ok(WorkloadKey { pkcs8, spki })
}

/// A fresh key on curve `C`: its PKCS#8 and its SPKI (DER), from one
/// computation of its public point. `SecretKey::to_pkcs8_der` computes
/// the point again, and that scalar multiplication is half of what a
/// workload key costs.
fn ec_key<C>() -> Result<(Zeroizing<Vec<u8>>, der::Document), KeyGenError>
where
    C: AssociatedOid + CurveArithmetic,
    AffinePoint<C>: FromSec1Point<C> + ToSec1Point<C>,
    FieldBytesSize<C>: ModulusSize,
{
    use p256::pkcs8::EncodePublicKey;
    let sk = SecretKey::<C>::try_generate_from_rng(&mut getrandom::SysRng)
        .map_err(|e| KeyGenError::Random(e.to_string()))?;
    let pk = sk.public_key();
    let point = pk.to_sec1_point(false);
    let secret = Zeroizing::new(sk.to_bytes());
    let spki = pk
        .to_public_key_der()
        .map_err(|e| KeyGenError::Encoding(e.to_string()))?;
    Ok((ec_pkcs8(C::OID, &secret, point.as_bytes())?, spki))
}

/// The PKCS#8 of an EC key (RFC 5915's ECPrivateKey inside, with its public
/// key), exactly as `SecretKey::to_pkcs8_der` writes it, from the secret
/// scalar and the public point.
fn ec_pkcs8(
    curve: ObjectIdentifier,
    secret: &[u8],
    point: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyGenError> {
    use der::Encode;
    let enc = |e: der::Error| KeyGenError::Encoding(e.to_string());
    let ec = Zeroizing::new(
        sec1::EcPrivateKey {
            private_key: secret,
            parameters: None,
            public_key: Some(point),
        }
        .to_der()
        .map_err(enc)?,
    );
    let info = pkcs8::PrivateKeyInfoRef::new(
        pkcs8::AlgorithmIdentifierRef {
            oid: ID_EC_PUBLIC_KEY,
            parameters: Some((&curve).into()),
        },
        der::asn1::OctetStringRef::new(&ec).map_err(enc)?,
    );
    Ok(Zeroizing::new(info.to_der().map_err(enc)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn keys_of_each_type_are_fresh_and_match_their_public_half() {
        for kt in [
            WorkloadKeyType::P256,
            WorkloadKeyType::P384,
            WorkloadKeyType::Rsa2048,
        ] {
            let a = generate(kt).unwrap();
            let b = generate(kt).unwrap();
            assert_ne!(*a.pkcs8, *b.pkcs8, "{kt:?}");
            let pk = p256::pkcs8::PrivateKeyInfoRef::from_der(&a.pkcs8).unwrap();
            assert_eq!(pk.algorithm.oid, a.spki.algorithm.oid, "{kt:?}");
        }
    }

    #[test]
    fn ec_keys_are_encoded_as_the_curve_crates_encode_them() {
        use der::Encode;
        use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
        for _ in 0..8 {
            let k = generate(WorkloadKeyType::P256).unwrap();
            let sk = p256::SecretKey::from_pkcs8_der(&k.pkcs8).unwrap();
            assert_eq!(sk.to_pkcs8_der().unwrap().as_bytes(), k.pkcs8.as_slice());
            let spki = sk.public_key().to_public_key_der().unwrap();
            assert_eq!(spki.as_bytes(), k.spki.to_der().unwrap());
            let k = generate(WorkloadKeyType::P384).unwrap();
            let sk = p384::SecretKey::from_pkcs8_der(&k.pkcs8).unwrap();
            assert_eq!(sk.to_pkcs8_der().unwrap().as_bytes(), k.pkcs8.as_slice());
            let spki = sk.public_key().to_public_key_der().unwrap();
            assert_eq!(spki.as_bytes(), k.spki.to_der().unwrap());
        }
    }
}
