//! Validating a JWT-SVID (JWT-SVID.md §4 and Appendix A) against the keys of
//! this trust domain, with public-key code only: the compact form, a
//! protected header of `alg`/`kid`/`typ` only, an algorithm from the
//! allowlist that matches the key (never `none`, never HMAC), the
//! signature, `aud` holding the audience asked about, `exp` in the future,
//! `nbf` (if any) in the past, and `sub` a SPIFFE ID of this trust domain.

use std::time::SystemTime;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde_json::{Map, Value};

use super::{Jwk, JwtAlg, PublicJwtKey};
use crate::spiffe_id::SpiffeId;

/// Longer tokens are refused before any decoding: a JWT-SVID is a few
/// hundred bytes (an RSA-4096 signature adds under 700).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. The message is meant for the caller: it says
/// what is wrong with the token, never anything about the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("the token is empty")]
    Empty,
    #[error("the token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("the JOSE header has the parameter {0:?}, which a JWT-SVID must not carry")]
    HeaderParameter(String),
    #[error("typ {0:?} is not allowed (JWT or JOSE)")]
    Type(String),
    #[error("alg {0:?} is not allowed for JWT-SVIDs")]
    AlgorithmNotAllowed(String),
    #[error("alg {0} is not the algorithm of any key of this trust domain")]
    AlgorithmMismatch(&'static str),
    #[error("no key of this trust domain has kid {0:?}")]
    UnknownKey(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has no aud claim")]
    NoAudience,
    #[error("the audience {0:?} is not in the token's aud claim")]
    WrongAudience(String),
    #[error("the token has no exp claim")]
    NoExpiry,
    #[error("the token expired at {0} (Unix time)")]
    Expired(i64),
    #[error("the token is not valid before {0} (Unix time)")]
    NotYetValid(i64),
    #[error("the sub claim is missing")]
    NoSubject,
    #[error("the sub claim is not a SPIFFE ID: {0}")]
    BadSubject(String),
    #[error("the sub claim {got:?} is not in the trust domain {want}")]
    ForeignTrustDomain { got: String, want: String },
}

/// A token that passed every check: who it names, and all its claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub spiffe_id: SpiffeId,
    pub claims: Map<String, Value>,
}

/// The algorithm a key signs with.
fn alg_of(key: &PublicJwtKey) -> JwtAlg {
    match &key.jwk {
        Jwk::Ec { crv: "P-384", .. } => JwtAlg::Es384,
        Jwk::Ec { .. } => JwtAlg::Es256,
        Jwk::Rsa { .. } => JwtAlg::Rs256,
    }
}

/// Checks `token` for `audience` against `keys` of `trust_domain` at `now`.
pub fn validate(
    token: &str,
    audience: &str,
    keys: &[PublicJwtKey],
    trust_domain: &str,
    now: SystemTime,
) -> Result<Validated, ValidateError> {
    if token.is_empty() {
        return Err(ValidateError::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(ValidateError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ValidateError::Malformed(
            "not a JWS in compact serialization (three base64url parts separated by '.')",
        ));
    };
    let header = json_object(h, "the JOSE header")?;
    let claims = json_object(c, "the claims")?;
    let signature = B64
        .decode(s)
        .map_err(|_| ValidateError::Malformed("the signature is not base64url"))?;

    // The header: alg from the allowlist, then only kid and typ.
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(ValidateError::Malformed("alg is not a string")),
        None => return Err(ValidateError::Malformed("the JOSE header has no alg")),
    };
    let alg = JwtAlg::from_name(alg_name)
        .ok_or_else(|| ValidateError::AlgorithmNotAllowed(alg_name.to_owned()))?;
    for (name, value) in &header {
        match name.as_str() {
            "alg" => {}
            "kid" if value.is_string() => {}
            "kid" => return Err(ValidateError::Malformed("kid is not a string")),
            "typ" => match value.as_str() {
                Some("JWT" | "JOSE") => {}
                Some(other) => return Err(ValidateError::Type(other.to_owned())),
                None => return Err(ValidateError::Malformed("typ is not a string")),
            },
            other => return Err(ValidateError::HeaderParameter(other.to_owned())),
        }
    }
    let candidates: Vec<&PublicJwtKey> = match header.get("kid").and_then(Value::as_str) {
        Some(kid) => {
            let key = keys
                .iter()
                .find(|k| k.kid == kid)
                .ok_or_else(|| ValidateError::UnknownKey(kid.to_owned()))?;
            vec![key]
        }
        None => keys.iter().collect(),
    };
    let candidates: Vec<_> = candidates
        .into_iter()
        .filter(|k| alg_of(k) == alg)
        .collect();
    if candidates.is_empty() {
        return Err(ValidateError::AlgorithmMismatch(alg.name()));
    }

    // The signature over the signing input, as the X.509 verifier wants it.
    let input = &token[..h.len() + 1 + c.len()];
    let x509_sig = match alg {
        JwtAlg::Es256 => p256::ecdsa::Signature::from_slice(&signature)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|_| ValidateError::BadSignature)?,
        JwtAlg::Es384 => p384::ecdsa::Signature::from_slice(&signature)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|_| ValidateError::BadSignature)?,
        JwtAlg::Rs256 => signature,
    };
    let alg_id = alg
        .scheme()
        .algorithm_identifier()
        .map_err(|_| ValidateError::BadSignature)?;
    if !candidates
        .iter()
        .any(|k| crate::verify::verify(&k.spki, &alg_id, input.as_bytes(), &x509_sig).is_ok())
    {
        return Err(ValidateError::BadSignature);
    }

    // The claims.
    let auds: Vec<&str> = match claims.get("aud") {
        None => return Err(ValidateError::NoAudience),
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().ok_or(ValidateError::Malformed(
                    "aud holds something other than strings",
                ))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ValidateError::Malformed(
                "aud is neither a string nor an array",
            ));
        }
    };
    if auds.is_empty() {
        return Err(ValidateError::NoAudience);
    }
    if !auds.contains(&audience) {
        return Err(ValidateError::WrongAudience(audience.to_owned()));
    }
    let now_secs = crate::time::unix_secs(now);
    let exp = numeric_date(&claims, "exp")?.ok_or(ValidateError::NoExpiry)?;
    if exp <= now_secs as f64 {
        return Err(ValidateError::Expired(exp as i64));
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && nbf > now_secs as f64
    {
        return Err(ValidateError::NotYetValid(nbf as i64));
    }
    let sub = match claims.get("sub") {
        None => return Err(ValidateError::NoSubject),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ValidateError::Malformed("sub is not a string")),
    };
    let spiffe_id = SpiffeId::parse(sub).map_err(|e| ValidateError::BadSubject(e.to_string()))?;
    if spiffe_id.trust_domain() != trust_domain {
        return Err(ValidateError::ForeignTrustDomain {
            got: sub.clone(),
            want: trust_domain.to_owned(),
        });
    }
    Ok(Validated { spiffe_id, claims })
}

fn json_object(part: &str, what: &'static str) -> Result<Map<String, Value>, ValidateError> {
    let bytes = B64.decode(part).map_err(|_| {
        ValidateError::Malformed(if what == "the claims" {
            "the claims are not base64url"
        } else {
            "the JOSE header is not base64url"
        })
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ValidateError::Malformed(if what == "the claims" {
            "the claims are not a JSON object"
        } else {
            "the JOSE header is not a JSON object"
        })),
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional).
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, ValidateError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or(ValidateError::Malformed(if name == "exp" {
                "exp is not a number"
            } else {
                "nbf is not a number"
            })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{JwtSigner, test_signer::*};
    use std::time::Duration;

    const TD: &str = "example.org";

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn now() -> SystemTime {
        crate::time::from_unix(1_700_000_000)
    }

    fn signed(signer: &JwtSigner, sub: &str, aud: &[&str], lifetime: u64) -> String {
        let aud: Vec<String> = aud.iter().map(|a| a.to_string()).collect();
        block(signer.sign(
            &SpiffeId::parse(sub).unwrap(),
            &aud,
            now(),
            Duration::from_secs(lifetime),
        ))
        .unwrap()
    }

    /// A token with this header and these claims, signed by `seed`'s P-256 key.
    fn forged(header: Value, claims: Value, seed: u8) -> String {
        use signature::Signer;
        let mut t = B64.encode(header.to_string());
        t.push('.');
        t.push_str(&B64.encode(claims.to_string()));
        let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        let sig: p256::ecdsa::Signature = key.sign(t.as_bytes());
        t.push('.');
        t.push_str(&B64.encode(sig.to_bytes()));
        t
    }

    fn setup() -> (JwtSigner, Vec<PublicJwtKey>) {
        let s = JwtSigner::new(SoftP256::new(7)).unwrap();
        let keys = vec![s.key().clone()];
        (s, keys)
    }

    fn claims(sub: &str, aud: Value, exp: i64) -> Value {
        serde_json::json!({"sub": sub, "aud": aud, "exp": exp, "iat": 1_700_000_000})
    }

    #[test]
    fn a_good_token_validates() {
        let (s, keys) = setup();
        let t = signed(&s, "spiffe://example.org/web", &["db", "cache"], 300);
        let v = validate(&t, "cache", &keys, TD, now()).unwrap();
        assert_eq!(v.spiffe_id.to_string(), "spiffe://example.org/web");
        assert_eq!(v.claims["exp"], 1_700_000_300i64);
        // A bare-string aud and no kid are fine too.
        let kid = keys[0].kid.clone();
        let t = forged(
            serde_json::json!({"alg": "ES256", "typ": "JOSE"}),
            claims("spiffe://example.org/a", "db".into(), 1_700_000_001),
            7,
        );
        validate(&t, "db", &keys, TD, now()).unwrap();
        let t = forged(
            serde_json::json!({"alg": "ES256", "kid": kid}),
            claims("spiffe://example.org/a", "db".into(), 1_700_000_001),
            7,
        );
        validate(&t, "db", &keys, TD, now()).unwrap();
    }

    /// The fuzz target's valid seed was made by another implementation
    /// (Python's `cryptography`, fuzz/make_corpus.py) for the same key:
    /// its kid is this code's thumbprint and it validates.
    #[test]
    fn the_fuzz_seed_from_python_validates() {
        let (_, keys) = setup();
        let seed = include_str!("../../fuzz/corpus/jwt_validate/valid-es256");
        let (aud, token) = seed.split_once('\n').unwrap();
        let v = validate(token, aud, &keys, "hsmca.test", now()).unwrap();
        assert_eq!(v.spiffe_id.to_string(), "spiffe://hsmca.test/user/a");
    }

    #[test]
    fn wrong_audience() {
        let (s, keys) = setup();
        let t = signed(&s, "spiffe://example.org/web", &["db"], 300);
        assert_eq!(
            validate(&t, "dbx", &keys, TD, now()),
            Err(ValidateError::WrongAudience("dbx".into()))
        );
        let no_aud = forged(
            serde_json::json!({"alg": "ES256"}),
            serde_json::json!({"sub": "spiffe://example.org/a", "exp": 1_800_000_000}),
            7,
        );
        assert_eq!(
            validate(&no_aud, "db", &keys, TD, now()),
            Err(ValidateError::NoAudience)
        );
        let empty = forged(
            serde_json::json!({"alg": "ES256"}),
            claims(
                "spiffe://example.org/a",
                serde_json::json!([]),
                1_800_000_000,
            ),
            7,
        );
        assert_eq!(
            validate(&empty, "db", &keys, TD, now()),
            Err(ValidateError::NoAudience)
        );
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let (s, keys) = setup();
        let t = signed(&s, "spiffe://example.org/web", &["db"], 300);
        let later = now() + Duration::from_secs(300);
        assert_eq!(
            validate(&t, "db", &keys, TD, later),
            Err(ValidateError::Expired(1_700_000_300))
        );
        let no_exp = forged(
            serde_json::json!({"alg": "ES256"}),
            serde_json::json!({"sub": "spiffe://example.org/a", "aud": "db"}),
            7,
        );
        assert_eq!(
            validate(&no_exp, "db", &keys, TD, now()),
            Err(ValidateError::NoExpiry)
        );
        let mut c = claims("spiffe://example.org/a", "db".into(), 1_800_000_000);
        c["nbf"] = 1_750_000_000.into();
        let early = forged(serde_json::json!({"alg": "ES256"}), c, 7);
        assert_eq!(
            validate(&early, "db", &keys, TD, now()),
            Err(ValidateError::NotYetValid(1_750_000_000))
        );
    }

    #[test]
    fn bad_signature() {
        let (s, keys) = setup();
        let t = signed(&s, "spiffe://example.org/web", &["db"], 300);
        // Another key's signature over the same input.
        let other = JwtSigner::new(SoftP256::new(8)).unwrap();
        let t2 = signed(&other, "spiffe://example.org/web", &["db"], 300);
        let (input, _) = t.rsplit_once('.').unwrap();
        let (_, sig2) = t2.rsplit_once('.').unwrap();
        let spliced = format!("{input}.{sig2}");
        assert_eq!(
            validate(&spliced, "db", &keys, TD, now()),
            Err(ValidateError::BadSignature)
        );
        // A changed claim under the original signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let c = B64.encode(
            claims(
                "spiffe://example.org/admin",
                serde_json::json!(["db"]),
                1_700_000_300,
            )
            .to_string(),
        );
        parts[1] = &c;
        assert_eq!(
            validate(&parts.join("."), "db", &keys, TD, now()),
            Err(ValidateError::BadSignature)
        );
        // A signature of the wrong length.
        assert_eq!(
            validate(&format!("{input}.AAAA"), "db", &keys, TD, now()),
            Err(ValidateError::BadSignature)
        );
        // The other key's own token names a kid this trust domain lacks.
        assert!(matches!(
            validate(&t2, "db", &keys, TD, now()),
            Err(ValidateError::UnknownKey(_))
        ));
    }

    #[test]
    fn alg_none_and_hmac_are_refused() {
        let (_, keys) = setup();
        let c = claims("spiffe://example.org/a", "db".into(), 1_800_000_000);
        for alg in [
            "none", "None", "HS256", "HS384", "HS512", "ES512", "PS256", "EdDSA",
        ] {
            let t = format!(
                "{}.{}.",
                B64.encode(serde_json::json!({"alg": alg}).to_string()),
                B64.encode(c.to_string())
            );
            assert_eq!(
                validate(&t, "db", &keys, TD, now()),
                Err(ValidateError::AlgorithmNotAllowed(alg.into())),
                "{alg}"
            );
        }
        // ES384 is allowed, but no key of the trust domain is P-384.
        let t = forged(serde_json::json!({"alg": "ES384"}), c, 7);
        assert_eq!(
            validate(&t, "db", &keys, TD, now()),
            Err(ValidateError::AlgorithmMismatch("ES384"))
        );
    }

    #[test]
    fn foreign_trust_domain_and_bad_subjects() {
        let (s, keys) = setup();
        let t = signed(&s, "spiffe://other.org/web", &["db"], 300);
        assert_eq!(
            validate(&t, "db", &keys, TD, now()),
            Err(ValidateError::ForeignTrustDomain {
                got: "spiffe://other.org/web".into(),
                want: TD.into()
            })
        );
        for sub in [
            "https://example.org/web",
            "spiffe://example.org/a/../b",
            "spiffe://Example.org/x",
        ] {
            let t = forged(
                serde_json::json!({"alg": "ES256"}),
                claims(sub, "db".into(), 1_800_000_000),
                7,
            );
            assert!(
                matches!(
                    validate(&t, "db", &keys, TD, now()),
                    Err(ValidateError::BadSubject(_))
                ),
                "{sub}"
            );
        }
    }

    #[test]
    fn malformed_tokens_get_clear_errors() {
        let (_, keys) = setup();
        let c = claims("spiffe://example.org/a", "db".into(), 1_800_000_000);
        let cases: Vec<(String, ValidateError)> = vec![
            (String::new(), ValidateError::Empty),
            ("a".repeat(MAX_TOKEN_LEN + 1), ValidateError::TooLong),
            (
                "abc".into(),
                ValidateError::Malformed(
                    "not a JWS in compact serialization (three base64url parts separated by '.')",
                ),
            ),
            (
                "a.b.c.d".into(),
                ValidateError::Malformed(
                    "not a JWS in compact serialization (three base64url parts separated by '.')",
                ),
            ),
            (
                "!!.e30.AA".into(),
                ValidateError::Malformed("the JOSE header is not base64url"),
            ),
            (
                format!("{}.e30.AA", B64.encode("[1]")),
                ValidateError::Malformed("the JOSE header is not a JSON object"),
            ),
            (
                format!("{}.e30.AA", B64.encode("{}")),
                ValidateError::Malformed("the JOSE header has no alg"),
            ),
            (
                forged(
                    serde_json::json!({"alg": "ES256", "jku": "https://x"}),
                    c.clone(),
                    7,
                ),
                ValidateError::HeaderParameter("jku".into()),
            ),
            (
                forged(
                    serde_json::json!({"alg": "ES256", "typ": "at+jwt"}),
                    c.clone(),
                    7,
                ),
                ValidateError::Type("at+jwt".into()),
            ),
            (
                // Padding is not base64url-without-padding.
                format!(
                    "{}=.e30.AA",
                    B64.encode(serde_json::json!({"alg": "ES256"}).to_string())
                ),
                ValidateError::Malformed("the JOSE header is not base64url"),
            ),
        ];
        for (token, want) in cases {
            assert_eq!(
                validate(&token, "db", &keys, TD, now()),
                Err(want),
                "{token:.60}"
            );
        }
    }
}
