//! `pem_csr`: PEM → PKCS#10 → version, signature check (proof of
//! possession), subject key, and the names taken from the CSR.
#![no_main]

use hsmca::issue::{csr::parse_and_verify, subject_key::check_subject_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = parse_and_verify(text) {
        let _ = v.names();
        let _ = check_subject_key(&v.csr.info.public_key);
    }
});
