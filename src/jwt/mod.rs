//! JWT-SVIDs (spiffe/spiffe `standards/JWT-SVID.md`): tokens that say "this
//! workload is `spiffe://td/path`" to an audience, for a few minutes.
//!
//! The signing key is a second key in the token, never the CA key, and it is
//! used exactly like the CA key: the JWS signing input is hashed here
//! (SHA-256 or SHA-384) and only the digest goes to a
//! [`DigestSigner`]. Its X.509-style answer (DER `ECDSA-Sig-Value`, or the
//! RSA signature) becomes the JWS signature (r‖s at full length, RFC 7518
//! §3.4). [`jwk`] publishes the key as a JWKS, and [`validate`] checks a
//! token against those keys with public-key code only.

pub mod authority;
pub mod jwk;
pub mod keys;
pub mod validate;

use std::{sync::Arc, time::SystemTime};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde::Serialize;

pub use self::{
    authority::{JwtAuthority, JwtBundle},
    jwk::{Jwk, JwkError, PublicJwtKey, jwks},
    keys::JwtKeys,
    validate::{ValidateError, Validated, validate},
};
use crate::{
    config::KeyType,
    signing::{DigestSigner, SignError, SignatureScheme},
    spiffe_id::SpiffeId,
};

/// The JWS algorithms a JWT-SVID key of this daemon signs with. The
/// validator accepts these and nothing else (no `none`, no HMAC, no
/// algorithm the key was not made for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl JwtAlg {
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Rs256 => "RS256",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Self::Es256),
            "ES384" => Some(Self::Es384),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }

    /// The token mechanism and hash behind the algorithm.
    pub fn scheme(self) -> SignatureScheme {
        match self {
            Self::Es256 => SignatureScheme::EcdsaP256Sha256,
            Self::Es384 => SignatureScheme::EcdsaP384Sha384,
            Self::Rs256 => SignatureScheme::RsaPkcs1Sha256,
        }
    }

    /// The algorithm a JWT key of this type signs with.
    pub fn for_key_type(kt: KeyType) -> Self {
        match kt {
            KeyType::P256 => Self::Es256,
            KeyType::P384 => Self::Es384,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => Self::Rs256,
        }
    }

    pub fn from_scheme(scheme: SignatureScheme) -> Option<Self> {
        match scheme {
            SignatureScheme::EcdsaP256Sha256 => Some(Self::Es256),
            SignatureScheme::EcdsaP384Sha384 => Some(Self::Es384),
            SignatureScheme::RsaPkcs1Sha256 => Some(Self::Rs256),
            _ => None,
        }
    }

    /// The JWS signature from the signer's X.509 signature value: ECDSA's
    /// DER becomes r‖s, each left-padded to the curve's size (RFC 7518
    /// §3.4); an RSA signature is used as it is.
    fn jws_signature(self, x509: &[u8]) -> Result<Vec<u8>, JwtError> {
        let bad = |_| JwtError::Sign(SignError::Rejected("malformed ECDSA signature".into()));
        Ok(match self {
            Self::Es256 => p256::ecdsa::Signature::from_der(x509)
                .map_err(bad)?
                .to_bytes()
                .to_vec(),
            Self::Es384 => p384::ecdsa::Signature::from_der(x509)
                .map_err(bad)?
                .to_bytes()
                .to_vec(),
            Self::Rs256 => x509.to_vec(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("at least one audience is required")]
    NoAudience,
    #[error("an audience must not be empty")]
    EmptyAudience,
    #[error("the signing key's scheme has no JWS algorithm")]
    UnsupportedScheme,
    #[error(transparent)]
    Jwk(#[from] JwkError),
    #[error("{0}")]
    Sign(#[from] SignError),
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

/// The registered claims a JWT-SVID carries. `aud` is always an array (RFC
/// 7519 §4.1.3 allows both forms; every JWT library reads both).
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a [String],
    exp: i64,
    iat: i64,
}

/// Signs JWT-SVIDs with one token key.
pub struct JwtSigner {
    signer: Arc<dyn DigestSigner>,
    alg: JwtAlg,
    key: PublicJwtKey,
}

impl JwtSigner {
    pub fn new(signer: Arc<dyn DigestSigner>) -> Result<Self, JwtError> {
        let alg = JwtAlg::from_scheme(signer.scheme()).ok_or(JwtError::UnsupportedScheme)?;
        let key = PublicJwtKey::new(signer.public_key().clone())?;
        Ok(Self { signer, alg, key })
    }

    pub fn alg(&self) -> JwtAlg {
        self.alg
    }

    /// The public key, its `kid` and JWK.
    pub fn key(&self) -> &PublicJwtKey {
        &self.key
    }

    /// A JWT-SVID for `sub`, valid for `audience` from `now` for `lifetime`.
    pub async fn sign(
        &self,
        sub: &SpiffeId,
        audience: &[String],
        now: SystemTime,
        lifetime: std::time::Duration,
    ) -> Result<String, JwtError> {
        if audience.is_empty() {
            return Err(JwtError::NoAudience);
        }
        if audience.iter().any(|a| a.is_empty()) {
            return Err(JwtError::EmptyAudience);
        }
        let iat = crate::time::unix_secs(now);
        let header = Header {
            alg: self.alg.name(),
            kid: &self.key.kid,
            typ: "JWT",
        };
        let claims = Claims {
            sub: &sub.to_string(),
            aud: audience,
            exp: iat.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            iat,
        };
        let mut token = String::new();
        // Plain structs of strings and integers always serialise.
        B64.encode_string(serde_json::to_vec(&header).unwrap_or_default(), &mut token);
        token.push('.');
        B64.encode_string(serde_json::to_vec(&claims).unwrap_or_default(), &mut token);
        let digest = self.alg.scheme().digest(token.as_bytes());
        let signature = self.signer.sign_digest(digest).await?;
        let jws = self.alg.jws_signature(&signature)?;
        token.push('.');
        B64.encode_string(jws, &mut token);
        Ok(token)
    }
}

#[cfg(test)]
pub(crate) mod test_signer {
    //! A software key behind the signing contract, for the pure tests.
    use super::*;
    use crate::signing::SignFuture;
    use der::Decode;
    use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};

    pub struct SoftP256(pub p256::ecdsa::SigningKey, SubjectPublicKeyInfoOwned);

    impl SoftP256 {
        pub fn new(seed: u8) -> Arc<Self> {
            let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
            let der = key.verifying_key().to_public_key_der().unwrap();
            let spki = SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).unwrap();
            Arc::new(Self(key, spki))
        }
    }

    impl DigestSigner for SoftP256 {
        fn scheme(&self) -> SignatureScheme {
            SignatureScheme::EcdsaP256Sha256
        }
        fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
            &self.1
        }
        fn sign_digest(&self, digest: Vec<u8>) -> SignFuture<'_> {
            use signature::hazmat::PrehashSigner;
            Box::pin(async move {
                assert_eq!(digest.len(), 32, "the signer gets a SHA-256 digest");
                let sig: p256::ecdsa::Signature = self.0.sign_prehash(&digest).unwrap();
                Ok(sig.to_der().as_bytes().to_vec())
            })
        }
    }

    pub struct SoftP384(p384::ecdsa::SigningKey, SubjectPublicKeyInfoOwned);

    impl SoftP384 {
        pub fn new(seed: u8) -> Arc<Self> {
            let key = p384::ecdsa::SigningKey::from_slice(&[seed; 48]).unwrap();
            let der = key.verifying_key().to_public_key_der().unwrap();
            let spki = SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).unwrap();
            Arc::new(Self(key, spki))
        }
    }

    impl DigestSigner for SoftP384 {
        fn scheme(&self) -> SignatureScheme {
            SignatureScheme::EcdsaP384Sha384
        }
        fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
            &self.1
        }
        fn sign_digest(&self, digest: Vec<u8>) -> SignFuture<'_> {
            use signature::hazmat::PrehashSigner;
            Box::pin(async move {
                assert_eq!(digest.len(), 48, "the signer gets a SHA-384 digest");
                let sig: p384::ecdsa::Signature = self.0.sign_prehash(&digest).unwrap();
                Ok(sig.to_der().as_bytes().to_vec())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{test_signer::*, *};

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn part(token: &str, n: usize) -> serde_json::Value {
        let p = token.split('.').nth(n).unwrap();
        serde_json::from_slice(&B64.decode(p).unwrap()).unwrap()
    }

    #[test]
    fn encodes_header_and_claims() {
        let signer = JwtSigner::new(SoftP256::new(9)).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let now = crate::time::from_unix(1_700_000_000);
        let token = block(signer.sign(
            &id,
            &["spiffe://example.org/db".to_string()],
            now,
            std::time::Duration::from_secs(300),
        ))
        .unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='), "base64url without padding");
        let header = part(&token, 0);
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": signer.key().kid, "typ": "JWT"})
        );
        let claims = part(&token, 1);
        assert_eq!(
            claims,
            serde_json::json!({
                "sub": "spiffe://example.org/web",
                "aud": ["spiffe://example.org/db"],
                "exp": 1_700_000_300i64,
                "iat": 1_700_000_000i64,
            })
        );
        // The signature is r‖s at full length and verifies over the signing input.
        let sig = B64.decode(token.rsplit('.').next().unwrap()).unwrap();
        assert_eq!(sig.len(), 64);
        use signature::Verifier;
        let input = token.rsplit_once('.').unwrap().0;
        signer_key(9)
            .verify(
                input.as_bytes(),
                &p256::ecdsa::Signature::from_slice(&sig).unwrap(),
            )
            .unwrap();
    }

    fn signer_key(seed: u8) -> p256::ecdsa::VerifyingKey {
        *p256::ecdsa::SigningKey::from_slice(&[seed; 32])
            .unwrap()
            .verifying_key()
    }

    #[test]
    fn es384_signatures_are_96_bytes() {
        let signer = JwtSigner::new(SoftP384::new(2)).unwrap();
        assert_eq!(signer.alg(), JwtAlg::Es384);
        let id = SpiffeId::parse("spiffe://example.org/x").unwrap();
        for _ in 0..8 {
            let t = block(signer.sign(
                &id,
                &["a".to_string()],
                SystemTime::now(),
                std::time::Duration::from_secs(60),
            ))
            .unwrap();
            let sig = B64.decode(t.rsplit('.').next().unwrap()).unwrap();
            assert_eq!(sig.len(), 96);
            assert_eq!(part(&t, 0)["alg"], "ES384");
        }
    }

    #[test]
    fn short_r_and_s_are_left_padded() {
        // r = 1, s = 2: DER carries one byte each; the JWS needs 32 each.
        let der = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
        let jws = JwtAlg::Es256.jws_signature(&der).unwrap();
        assert_eq!(jws.len(), 64);
        assert_eq!(jws[31], 1);
        assert_eq!(jws[63], 2);
        assert!(jws[..31].iter().chain(&jws[32..63]).all(|b| *b == 0));
    }

    #[test]
    fn audience_is_required() {
        let signer = JwtSigner::new(SoftP256::new(9)).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let now = SystemTime::now();
        let d = std::time::Duration::from_secs(60);
        assert!(matches!(
            block(signer.sign(&id, &[], now, d)),
            Err(JwtError::NoAudience)
        ));
        assert!(matches!(
            block(signer.sign(&id, &[String::new()], now, d)),
            Err(JwtError::EmptyAudience)
        ));
    }
}
