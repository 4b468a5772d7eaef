//! request_id, description, tags (the same rules serve labels) and
//! cert_duration against both profiles' bounds.
//!
//! Input: 12 bytes of duration (i64 seconds, i32 nanos, little-endian),
//! then lines: the request_id, the description, then `key=value` tags.
#![no_main]

use std::collections::BTreeMap;

use hsmca::{
    config::ProfileBounds,
    issue::{
        RequestedLifetime, check_description, check_request_id, check_tags,
        request::check_duration,
    },
    profile::LeafProfile,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, rest) = data.split_at(12);
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&head[..8]);
    let mut nanos = [0u8; 4];
    nanos.copy_from_slice(&head[8..12]);
    let duration = RequestedLifetime {
        seconds: i64::from_le_bytes(secs),
        nanos: i32::from_le_bytes(nanos),
    };
    let bounds = ProfileBounds::default();
    for profile in [LeafProfile::Client, LeafProfile::Server] {
        let _ = check_duration(Some(&duration), &bounds, profile);
    }
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let _ = check_request_id(lines.next().unwrap_or_default());
    let _ = check_description(lines.next().unwrap_or_default());
    let tags: BTreeMap<String, String> = lines
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect();
    let _ = check_tags(&tags);
});
