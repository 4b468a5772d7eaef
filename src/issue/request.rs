//! One certificate as a caller asks for it, in plain terms (no wire types:
//! the gRPC service and the certificate-request worker each translate their
//! own messages into an [`IssueRequest`]), and the checks of its fields that
//! need nothing but the field itself.

use std::{collections::BTreeMap, time::Duration};

use super::IssueError;
use crate::{config::ProfileBounds, profile::LeafProfile};

pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY: usize = 128;
pub const MAX_TAG_VALUE: usize = 256;
pub const MAX_DESCRIPTION: usize = 1024;
pub const RESERVED_TAG_PREFIX: &str = "hsmca:";

/// A certificate as asked for. Exactly one of `public_key` (PEM) and
/// `pem_csr` is given; with a CSR the names come from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IssueRequest {
    /// "client" (also ""), "server" or "intermediate".
    pub profile: String,
    pub public_key: String,
    pub pem_csr: String,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub uri_sans: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// `None`: the profile's default lifetime.
    pub lifetime: Option<RequestedLifetime>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// A UUID that makes retries safe, or "".
    pub request_id: String,
}

/// A lifetime as the caller gave it, signs and all: it is checked, not
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedLifetime {
    pub seconds: i64,
    pub nanos: i32,
}

fn invalid(msg: impl Into<String>) -> IssueError {
    IssueError::Invalid(msg.into())
}

/// An optional UUID; the zero UUID is refused because clients that forget to
/// fill one in would all share it. Returned in canonical lowercase form.
pub fn check_request_id(id: &str) -> Result<String, IssueError> {
    if id.is_empty() {
        return Ok(String::new());
    }
    let uuid = uuid::Uuid::try_parse(id).map_err(|_| {
        invalid(format!(
            "request_id {id:?} is not a UUID (like 123e4567-e89b-12d3-a456-426614174000)"
        ))
    })?;
    if uuid.is_nil() {
        return Err(invalid("request_id must not be the zero UUID"));
    }
    Ok(uuid.hyphenated().to_string())
}

/// The requested lifetime within the profile's bounds (its default when
/// none was asked for).
pub fn check_duration(
    d: Option<&RequestedLifetime>,
    bounds: &ProfileBounds,
    profile: LeafProfile,
) -> Result<Duration, IssueError> {
    let Some(d) = d else {
        return Ok(bounds.default_duration);
    };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(invalid("cert_duration must be a positive duration"));
    }
    let dur = Duration::new(d.seconds as u64, d.nanos as u32);
    if dur < bounds.min_duration || dur > bounds.max_duration {
        return Err(invalid(format!(
            "cert_duration {} is outside the {} profile's bounds of {} to {}",
            humantime::format_duration(dur),
            profile.name(),
            humantime::format_duration(bounds.min_duration),
            humantime::format_duration(bounds.max_duration),
        )));
    }
    Ok(dur)
}

pub fn check_description(d: &str) -> Result<(), IssueError> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(invalid(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    if d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid("description contains a control character"));
    }
    Ok(())
}

fn tag_char_ok(c: char) -> bool {
    c.is_alphanumeric() || " +-=._:/@".contains(c)
}

/// Tags as AWS API Gateway has them: at most 50; key 1–128 characters, value
/// up to 256; letters, digits, space and `+ - = . _ : / @`; the `hsmca:` key
/// prefix is reserved for hsmca itself.
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), IssueError> {
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!(
            "{} tags given; at most {MAX_TAGS} are allowed",
            tags.len()
        )));
    }
    let mut keys: Vec<&String> = tags.keys().collect();
    keys.sort();
    for k in keys {
        let v = &tags[k];
        let n = k.chars().count();
        if n == 0 || n > MAX_TAG_KEY {
            return Err(invalid(format!(
                "tag key {k:?} must be 1 to {MAX_TAG_KEY} characters"
            )));
        }
        if k.to_ascii_lowercase().starts_with(RESERVED_TAG_PREFIX) {
            return Err(invalid(format!(
                "tag key {k:?} uses the reserved prefix {RESERVED_TAG_PREFIX:?}"
            )));
        }
        if let Some(c) = k.chars().find(|c| !tag_char_ok(*c)) {
            return Err(invalid(format!(
                "tag key {k:?} contains {c:?}; allowed are letters, digits, space and + - = . _ : / @"
            )));
        }
        if v.chars().count() > MAX_TAG_VALUE {
            return Err(invalid(format!(
                "tag {k:?}: value is longer than {MAX_TAG_VALUE} characters"
            )));
        }
        if let Some(c) = v.chars().find(|c| !tag_char_ok(*c)) {
            return Err(invalid(format!(
                "tag {k:?}: value contains {c:?}; allowed are letters, digits, space and + - = . _ : / @"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn request_ids() {
        assert_eq!(check_request_id("").unwrap(), "");
        assert_eq!(
            check_request_id("123E4567-E89B-12D3-A456-426614174000").unwrap(),
            "123e4567-e89b-12d3-a456-426614174000"
        );
        assert!(check_request_id("00000000-0000-0000-0000-000000000000").is_err());
        assert!(check_request_id("abc").is_err());
    }

    #[test]
    fn durations() {
        let b = ProfileBounds::default();
        let d = |s| RequestedLifetime {
            seconds: s,
            nanos: 0,
        };
        assert_eq!(
            check_duration(None, &b, LeafProfile::Client).unwrap(),
            Duration::from_secs(86400)
        );
        assert!(check_duration(Some(&d(3600)), &b, LeafProfile::Client).is_ok());
        assert!(check_duration(Some(&d(86400)), &b, LeafProfile::Client).is_ok());
        let e = check_duration(Some(&d(1800)), &b, LeafProfile::Client)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("30m") && e.contains("1h") && e.contains("1day"),
            "{e}"
        );
        assert!(check_duration(Some(&d(25 * 3600)), &b, LeafProfile::Client).is_err());
        assert!(check_duration(Some(&d(-5)), &b, LeafProfile::Client).is_err());
    }

    #[test]
    fn tags() {
        let t = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(check_tags(&t(&[("team", "pay ments"), ("a:b/c@d", "x+y=z.w_1-2")])).is_ok());
        for (bad, needle) in [
            (t(&[("", "x")]), "\"\""),
            (t(&[("hsmca:owner", "x")]), "reserved"),
            (t(&[("HSMCA:owner", "x")]), "reserved"),
            (t(&[("k!", "x")]), "'!'"),
            (t(&[("k", "v\n")]), "\"k\""),
            (t(&[(&"k".repeat(129), "v")]), "1 to 128"),
            (t(&[("k", &"v".repeat(257))]), "longer than 256"),
        ] {
            let e = check_tags(&bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let many: BTreeMap<String, String> =
            (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(
            check_tags(&many)
                .unwrap_err()
                .to_string()
                .contains("51 tags")
        );
        assert!(check_description(&"d".repeat(1025)).is_err());
        assert!(check_description("ok\nfine").is_ok());
    }
}
