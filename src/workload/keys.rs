//! Workload keys: made in memory from the OS CSPRNG, handed out as PKCS#8
//! DER in a buffer that is zeroized when dropped, and never written
//! anywhere. RSA generation takes a while, so callers run it off the async
//! runtime.

use der::Decode;
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
        WorkloadKeyType::P256 => {
            use p256::elliptic_curve::Generate;
            let sk = p256::SecretKey::try_generate_from_rng(&mut getrandom::SysRng)
                .map_err(|e| KeyGenError::Random(e.to_string()))?;
            (
                sk.to_pkcs8_der().map_err(|e| enc(&e))?,
                sk.public_key().to_public_key_der().map_err(|e| enc(&e))?,
            )
        }
        WorkloadKeyType::P384 => {
            use p384::elliptic_curve::Generate;
            let sk = p384::SecretKey::try_generate_from_rng(&mut getrandom::SysRng)
                .map_err(|e| KeyGenError::Random(e.to_string()))?;
            (
                sk.to_pkcs8_der().map_err(|e| enc(&e))?,
                sk.public_key().to_public_key_der().map_err(|e| enc(&e))?,
            )
        }
        WorkloadKeyType::Rsa2048 => {
            let mut rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
            let sk = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| enc(&e))?;
            (
                sk.to_pkcs8_der().map_err(|e| enc(&e))?,
                sk.to_public_key()
                    .to_public_key_der()
                    .map_err(|e| enc(&e))?,
            )
        }
    };
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(|e| enc(&e))?;
    Ok(WorkloadKey {
        pkcs8: Zeroizing::new(pkcs8.as_bytes().to_vec()),
        spki,
    })
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
}
