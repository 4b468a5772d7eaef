//! The name fields: common_name, dns_names, uri_sans, ip_addresses, and the
//! subject and SAN encodings built from them; also RFC 4514 subjects.
//!
//! Input: lines. The first is the common name; then `d:NAME`, `u:URI`,
//! `i:IP` add a SAN of that kind; any other line is checked as a DNS name
//! and as an RFC 4514 subject on its own.
#![no_main]

use hsmca::names::{Names, check_dns, parse_subject};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let cn = lines.next().unwrap_or_default();
    let (mut dns, mut uris, mut ips) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        if let Some(v) = line.strip_prefix("d:") {
            dns.push(v.to_owned());
        } else if let Some(v) = line.strip_prefix("u:") {
            uris.push(v.to_owned());
        } else if let Some(v) = line.strip_prefix("i:") {
            ips.push(v.to_owned());
        } else {
            let _ = check_dns(line);
            let _ = parse_subject(line);
        }
    }
    if let Ok(names) = Names::parse(cn, &dns, &uris, &ips) {
        let _ = names.subject();
        let _ = names.general_names();
        let _ = names.has_wildcard();
    }
});
