//! List filters and page tokens: `ListClientCertificates.filter` and
//! `page_token`, `ListCertificateRequests.filter`.
#![no_main]

use hsmca::server::{replies, requests};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = replies::parse_filter(text);
    let _ = requests::parse_filter(text);
    if let Some((t, id)) = replies::decode_page_token(text) {
        // A token that decodes must survive a round trip.
        let again = replies::encode_page_token(t, &id);
        assert_eq!(replies::decode_page_token(&again), Some((t, id)));
    }
});
