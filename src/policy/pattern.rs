//! Name patterns of policy rules. Matching is deliberately literal: a name
//! matches only in the exact form it will take in the certificate
//! (lowercase, no trailing dot, no `..` path segments), so no spelling of a
//! name can slip past a pattern that its canonical form would fail.
//!
//! `{uid}`, `{user}` and `{group}` in a pattern are replaced by the caller's
//! before matching; a pattern whose placeholder has no value for the caller
//! (a uid without a user name) matches nothing.

use std::net::IpAddr;

use crate::peer::identity::Identity;

/// Placeholders a pattern may hold.
const PLACEHOLDERS: [&str; 3] = ["{uid}", "{user}", "{group}"];

/// Replaces the placeholders; `None` if one has no value for `who`, or the
/// value could smuggle pattern syntax in (`*`, `/`, `.` in a user name).
pub fn substitute(pattern: &str, who: &Identity) -> Option<String> {
    if !pattern.contains('{') {
        return Some(pattern.to_owned());
    }
    let safe = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // Values are used as they are, never case-folded: `Alice` and `alice`
    // are different users, and must not share names.
    let mut out = pattern.to_owned();
    if out.contains("{uid}") {
        out = out.replace("{uid}", &who.uid.to_string());
    }
    if out.contains("{user}") {
        let user = who.user.as_deref().filter(|u| safe(u))?;
        out = out.replace("{user}", user);
    }
    if out.contains("{group}") {
        let group = who.group.as_deref().filter(|g| safe(g))?;
        out = out.replace("{group}", group);
    }
    Some(out)
}

/// Checks a pattern's syntax at start-up, with sample placeholder values.
pub fn check_dns_pattern(p: &str) -> Result<(), String> {
    let p = sample(p)?;
    if p == "**" {
        return Ok(());
    }
    let labels: Vec<&str> = p.split('.').collect();
    for (i, l) in labels.iter().enumerate() {
        let wild = *l == "*" || *l == "**";
        if wild && i != 0 {
            return Err("`*` and `**` may only be the leftmost label".into());
        }
        if wild && labels.len() < 2 {
            return Err("a wildcard needs a domain after it".into());
        }
        if !wild && !is_ldh_label(l) {
            return Err(format!(
                "label {l:?} is not a lowercase host name label (letters, digits, '-')"
            ));
        }
    }
    Ok(())
}

pub fn check_uri_pattern(p: &str) -> Result<(), String> {
    let p = sample(p)?;
    if p == "**" {
        return Ok(());
    }
    let (scheme, authority, segments) =
        split_uri(&p).ok_or("must be scheme://authority/path, or `**`")?;
    if scheme.is_empty() || authority.is_empty() {
        return Err("needs a scheme and an authority".into());
    }
    for (i, s) in segments.iter().enumerate() {
        if *s == "**" && i + 1 != segments.len() {
            return Err("`**` may only be the last path segment".into());
        }
        if *s == "." || *s == ".." {
            return Err("`.` and `..` segments are not allowed".into());
        }
    }
    Ok(())
}

fn sample(p: &str) -> Result<String, String> {
    let mut s = p.to_owned();
    for ph in PLACEHOLDERS {
        s = s.replace(ph, "x");
    }
    if s.contains('{') || s.contains('}') {
        return Err("unknown placeholder; use {uid}, {user} or {group}".into());
    }
    if s.is_empty() {
        return Err("empty pattern".into());
    }
    Ok(s)
}

fn is_ldh_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Whether `name` (as requested) matches the DNS `pattern` (substituted).
/// A requested wildcard label `*` is matched only by a pattern wildcard, and
/// only when `allow_wildcards`.
pub fn dns_matches(pattern: &str, name: &str, allow_wildcards: bool) -> bool {
    if pattern == "**" {
        // Any name: its syntax is the issuer's to judge.
        return allow_wildcards || !name.starts_with("*.");
    }
    let labels: Vec<&str> = name.split('.').collect();
    let requested_wildcard = labels.first() == Some(&"*");
    if requested_wildcard && !allow_wildcards {
        return false;
    }
    // Canonical form only: every label a lowercase LDH label (bar a leading
    // requested wildcard), so `A.x`, `a.x.`, `a..x` and Unicode never match.
    let body = if requested_wildcard {
        &labels[1..]
    } else {
        &labels[..]
    };
    if body.is_empty() || !body.iter().all(|l| is_ldh_label(l)) || name.len() > 253 {
        return false;
    }
    let pat: Vec<&str> = pattern.split('.').collect();
    let (head, rest) = match pat.first() {
        Some(&"*") => (Some(1usize), &pat[1..]),
        Some(&"**") => (None, &pat[1..]),
        _ => {
            // Literal: equal, label for label (a requested `*` is not `*`).
            return !requested_wildcard && pat == labels;
        }
    };
    if labels.len() <= rest.len() || labels[labels.len() - rest.len()..] != *rest {
        return false;
    }
    let extra = labels.len() - rest.len();
    match head {
        Some(n) => extra == n,
        None => extra >= 1,
    }
}

/// Splits `scheme://authority/seg/seg` into its parts; `None` for anything
/// with a query, fragment, userinfo, or not of that shape.
fn split_uri(u: &str) -> Option<(String, String, Vec<&str>)> {
    let (scheme, rest) = u.split_once("://")?;
    if rest.contains(['?', '#', '@', '\\']) {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let segments = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    Some((scheme.to_owned(), authority.to_owned(), segments))
}

/// Whether the requested URI matches the URI `pattern` (substituted). The
/// URI must be plain: lowercase scheme and host, no `.`/`..`/empty segments,
/// no percent-encoding, query, fragment or userinfo.
pub fn uri_matches(pattern: &str, uri: &str) -> bool {
    if pattern == "**" {
        // Any URI: its syntax is the issuer's to judge.
        return true;
    }
    if !uri.is_ascii() || uri.contains('%') {
        return false;
    }
    let Some((scheme, authority, segments)) = split_uri(uri) else {
        return false;
    };
    if scheme != scheme.to_ascii_lowercase()
        || authority != authority.to_ascii_lowercase()
        || authority.is_empty()
        || segments
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return false;
    }
    let Some((pscheme, pauth, psegs)) = split_uri(pattern) else {
        return false;
    };
    if pscheme != scheme || pauth != authority {
        return false;
    }
    let mut i = 0;
    for (n, p) in psegs.iter().enumerate() {
        if *p == "**" && n + 1 == psegs.len() {
            return segments.len() > i;
        }
        match segments.get(i) {
            Some(s) if *p == "*" || p == s => i += 1,
            _ => return false,
        }
    }
    i == segments.len()
}

/// A common name: `**`, or exact (after substitution).
pub fn cn_matches(pattern: &str, cn: &str) -> bool {
    pattern == "**" || pattern == cn
}

/// Whether `ip` (as requested text) lies in `net`. Only the standard text
/// form of an address is accepted.
pub fn ip_matches(net: &ipnet::IpNet, ip: &str) -> bool {
    match ip.parse::<IpAddr>() {
        Ok(addr) => addr.to_string() == ip && net.contains(&addr),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: Option<&str>) -> Identity {
        Identity {
            uid: 1000,
            gid: 1000,
            pid: None,
            user: user.map(str::to_owned),
            group: Some("web".into()),
            groups: vec![],
            exe: None,
        }
    }

    #[test]
    fn dns_patterns() {
        let m = |p, n| dns_matches(p, n, false);
        assert!(m("*.svc.example", "a.svc.example"));
        assert!(!m("*.svc.example", "svc.example"));
        assert!(!m("*.svc.example", "a.b.svc.example"));
        assert!(m("**.svc.example", "a.b.svc.example"));
        assert!(!m("**.svc.example", "svc.example"));
        assert!(m("host.example", "host.example"));
        assert!(!m("host.example", "a.host.example"));
        // Tricks.
        assert!(!m("*.svc.example", "a.svc.example.evil.com"));
        assert!(!m("*.svc.example", "A.SVC.EXAMPLE"));
        assert!(!m("*.svc.example", "a.svc.example."));
        assert!(!m("*.svc.example", "a..svc.example"));
        assert!(!m("*.svc.example", "а.svc.example")); // Cyrillic а
        assert!(!m("*.svc.example", "*.svc.example"));
        assert!(!m("*.svc.example", "evilsvc.example"));
        // `**` leaves the syntax to the issuer, but not wildcards.
        assert!(m("**", "UPPER.example"));
        assert!(m("**", "any.thing"));
        assert!(!m("**", "*.any.thing"));
        // A requested wildcard only with allow_wildcards, only by a pattern wildcard.
        assert!(dns_matches("*.svc.example", "*.svc.example", true));
        assert!(dns_matches("**.svc.example", "*.a.svc.example", true));
        assert!(!dns_matches("a.svc.example", "*.svc.example", true));
        assert!(!dns_matches("x.*.svc.example", "x.a.svc.example", true));
    }

    #[test]
    fn uri_patterns() {
        let p = "spiffe://example.org/ns/alice/*";
        assert!(uri_matches(p, "spiffe://example.org/ns/alice/web"));
        assert!(!uri_matches(p, "spiffe://example.org/ns/alice/web/x"));
        assert!(!uri_matches(p, "spiffe://example.org/ns/alice/../bob/web"));
        assert!(!uri_matches(p, "spiffe://example.org/ns/alice/./web"));
        assert!(!uri_matches(p, "spiffe://example.org/ns/alice//web"));
        assert!(!uri_matches(p, "https://example.org/ns/alice/web"));
        assert!(!uri_matches(p, "SPIFFE://example.org/ns/alice/web"));
        assert!(!uri_matches(p, "spiffe://EXAMPLE.org/ns/alice/web"));
        assert!(!uri_matches(p, "spiffe://example.org/ns/alice/w%65b"));
        assert!(!uri_matches(p, "spiffe://example.org/ns/alice/web?x=1"));
        assert!(!uri_matches(p, "spiffe://evil@example.org/ns/alice/web"));
        assert!(!uri_matches(p, "spiffe://example.org.evil/ns/alice/web"));
        let deep = "spiffe://example.org/ns/alice/**";
        assert!(uri_matches(deep, "spiffe://example.org/ns/alice/a/b"));
        assert!(!uri_matches(deep, "spiffe://example.org/ns/alice"));
        assert!(uri_matches("**", "https://x.example/y"));
    }

    #[test]
    fn ips_and_substitution() {
        let net: ipnet::IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(ip_matches(&net, "10.1.2.3"));
        assert!(!ip_matches(&net, "10.2.0.1"));
        assert!(!ip_matches(&net, "::ffff:10.1.2.3"));
        assert!(!ip_matches(&net, "010.1.2.3"));
        assert_eq!(
            substitute("spiffe://e.org/ns/{user}/{uid}/*", &who(Some("alice"))).unwrap(),
            "spiffe://e.org/ns/alice/1000/*"
        );
        // Not folded: a DNS pattern with `Alice` matches nothing.
        let upper = substitute("{user}.users.example", &who(Some("Alice"))).unwrap();
        assert!(!dns_matches(&upper, "alice.users.example", false));
        assert_eq!(substitute("{user}.users.example", &who(None)), None);
        assert_eq!(substitute("{user}.x", &who(Some("a.b"))), None);
        assert_eq!(substitute("{group}.x", &who(None)).unwrap(), "web.x");
    }

    #[test]
    fn pattern_syntax() {
        assert!(check_dns_pattern("*.svc.example").is_ok());
        assert!(check_dns_pattern("{user}.users.example").is_ok());
        assert!(check_dns_pattern("a.*.example").is_err());
        assert!(check_dns_pattern("*").is_err());
        assert!(check_dns_pattern("Upper.example").is_err());
        assert!(check_dns_pattern("{nobody}.example").is_err());
        assert!(check_uri_pattern("spiffe://example.org/ns/{user}/*").is_ok());
        assert!(check_uri_pattern("spiffe://example.org/**/x").is_err());
        assert!(check_uri_pattern("example.org/x").is_err());
    }
}
