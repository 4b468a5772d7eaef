//! `public_key` of GenerateClientCertificate: PEM → SubjectPublicKeyInfo →
//! the subject key checks (curve point, RSA modulus and exponent).
#![no_main]

use hsmca::issue::subject_key::{check_subject_key, parse_public_key_pem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spki) = parse_public_key_pem(text) {
        let _ = check_subject_key(&spki);
    }
});
