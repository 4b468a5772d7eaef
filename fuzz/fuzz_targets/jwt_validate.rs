//! ValidateJWTSVID's parser and checks: a token from a client, validated
//! against a fixed bundle (a P-256 key from seed 7 and a P-384 key from
//! seed 9) for the trust domain `hsmca.test`.
//!
//! Input: the first line is the audience, the rest the token.
#![no_main]

use std::{sync::LazyLock, time::SystemTime};

use der::Decode;
use hsmca::jwt::{PublicJwtKey, validate};
use libfuzzer_sys::fuzz_target;
use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};

static KEYS: LazyLock<Vec<PublicJwtKey>> = LazyLock::new(|| {
    let p256 = p256::SecretKey::from_slice(&[7u8; 32])
        .map(|k| k.public_key().to_public_key_der());
    let p384 = p384::SecretKey::from_slice(&[9u8; 48])
        .map(|k| k.public_key().to_public_key_der());
    [p256.ok().and_then(|d| d.ok()), p384.ok().and_then(|d| d.ok())]
        .into_iter()
        .flatten()
        .filter_map(|d| SubjectPublicKeyInfoOwned::from_der(d.as_bytes()).ok())
        .filter_map(|s| PublicJwtKey::new(s).ok())
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (audience, token) = text.split_once('\n').unwrap_or(("db", &text));
    // A fixed "now" inside the seeds' validity.
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let _ = validate(token, audience, &KEYS, "hsmca.test", now);
});
