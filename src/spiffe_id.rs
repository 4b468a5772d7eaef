//! SPIFFE IDs (SPIFFE-ID.md): `spiffe://trust-domain/path`, with the
//! character rules SPIFFE libraries enforce (go-spiffe, java-spiffe,
//! py-spiffe). A `spiffe://` URI that breaks them is refused rather than
//! issued, because every relying party that parses it as a SPIFFE ID would
//! reject the certificate — or, worse, read it differently.
//!
//! - scheme exactly `spiffe` (lowercase), then `://`;
//! - trust domain: 1 to 255 of `[a-z0-9._-]` (so no userinfo, port,
//!   uppercase or percent-encoding);
//! - path: empty, or `/`-separated segments of `[a-zA-Z0-9._-]`, none empty
//!   (no `//`, no trailing `/`) and none `.` or `..`;
//! - no query or fragment (`?` and `#` are not allowed characters);
//! - at most 2048 bytes in all.

use std::fmt;

const SCHEME_PREFIX: &str = "spiffe://";
/// SPIFFE-ID.md §2.3: implementations SHOULD NOT generate longer IDs.
pub const MAX_LEN: usize = 2048;
/// RFC 3986's limit on a host, which SPIFFE-ID.md applies to trust domains.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("the scheme must be \"spiffe://\" in lowercase")]
    Scheme,
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error(
        "{0:?} is not allowed in a trust domain (lowercase letters, digits, '.', '-' and '_' only; no port, userinfo or percent-encoding)"
    )]
    TrustDomainChar(char),
    #[error("the path has an empty segment (\"//\" or a trailing '/')")]
    EmptySegment,
    #[error("the path has a {0:?} segment")]
    DotSegment(&'static str),
    #[error(
        "{0:?} is not allowed in a path segment (letters, digits, '.', '-' and '_' only; no query, fragment or percent-encoding)"
    )]
    PathChar(char),
}

/// A valid SPIFFE ID, split into its two parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty, or `/segment/segment…`.
    path: String,
}

impl SpiffeId {
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        let rest = id
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::Scheme)?;
        if id.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(trust_domain)?;
        if let Some(segments) = path.strip_prefix('/') {
            for segment in segments.split('/') {
                check_segment(segment)?;
            }
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Empty for the ID of the trust domain itself.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

/// Whether `uri` claims to be a SPIFFE ID: its scheme is `spiffe` in any
/// case (RFC 3986 schemes are case-insensitive, so `SPIFFE:` is one too,
/// and is then refused by [`SpiffeId::parse`] for its case).
pub fn has_spiffe_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("spiffe"))
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

/// One path segment (also used for policy patterns' literal segments).
pub fn check_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => return Err(SpiffeIdError::EmptySegment),
        "." => return Err(SpiffeIdError::DotSegment(".")),
        ".." => return Err(SpiffeIdError::DotSegment("..")),
        _ => {}
    }
    match segment
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::PathChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for id in [
            "spiffe://example.org",
            "spiffe://example.org/ns/default/sa/web",
            "spiffe://k8s-west.example.com/payments/mysql",
            "spiffe://td_1.example/A-b_c.d/9eebccd2-12bf-40a6-b262-65fe0487d453",
            "spiffe://1.2.3.4/x",
            "spiffe://example.org/...",
            "spiffe://example.org/.hidden",
        ] {
            let parsed = SpiffeId::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(parsed.to_string(), id);
        }
        let id = SpiffeId::parse("spiffe://example.org/ns/a").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/a");
        assert_eq!(SpiffeId::parse("spiffe://example.org").unwrap().path(), "");
    }

    #[test]
    fn invalid_ids_say_why() {
        use SpiffeIdError::*;
        for (id, err) in [
            ("SPIFFE://example.org/x", Scheme),
            ("Spiffe://example.org/x", Scheme),
            ("spiffe:example.org/x", Scheme),
            ("spiffe:/example.org/x", Scheme),
            ("https://example.org/x", Scheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///x", EmptyTrustDomain),
            ("spiffe://Example.org/x", TrustDomainChar('E')),
            ("spiffe://example.org:8443/x", TrustDomainChar(':')),
            ("spiffe://user@example.org/x", TrustDomainChar('@')),
            ("spiffe://exa%6dple.org/x", TrustDomainChar('%')),
            ("spiffe://example.org?x=1", TrustDomainChar('?')),
            ("spiffe://example.org#f", TrustDomainChar('#')),
            ("spiffe://bücher.example/x", TrustDomainChar('ü')),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org//x", EmptySegment),
            ("spiffe://example.org/x/", EmptySegment),
            ("spiffe://example.org/./x", DotSegment(".")),
            ("spiffe://example.org/x/..", DotSegment("..")),
            ("spiffe://example.org/*", PathChar('*')),
            ("spiffe://example.org/..;", PathChar(';')),
            ("spiffe://example.org/x;y=z", PathChar(';')),
            ("spiffe://example.org/x:y", PathChar(':')),
            ("spiffe://example.org/w%65b", PathChar('%')),
            ("spiffe://example.org/x?y=1", PathChar('?')),
            ("spiffe://example.org/x#frag", PathChar('#')),
            ("spiffe://example.org/a b", PathChar(' ')),
            ("spiffe://example.org/x@y", PathChar('@')),
            ("spiffe://example.org/x~y", PathChar('~')),
            ("spiffe://example.org/é", PathChar('é')),
        ] {
            assert_eq!(SpiffeId::parse(id), Err(err), "{id}");
        }
    }

    #[test]
    fn lengths() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{td}a/x")),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
        let fits = format!("spiffe://e.org/{}", "p".repeat(MAX_LEN - 15));
        assert_eq!(fits.len(), MAX_LEN);
        assert!(SpiffeId::parse(&fits).is_ok());
        assert_eq!(
            SpiffeId::parse(&format!("{fits}p")),
            Err(SpiffeIdError::TooLong)
        );
    }

    #[test]
    fn scheme_detection() {
        assert!(has_spiffe_scheme("spiffe://x/y"));
        assert!(has_spiffe_scheme("SPIFFE://x/y"));
        assert!(has_spiffe_scheme("spiffe:x"));
        assert!(!has_spiffe_scheme("https://x/spiffe:"));
        assert!(!has_spiffe_scheme("urn:spiffe:x"));
        assert!(!has_spiffe_scheme("spiffe"));
    }
}
