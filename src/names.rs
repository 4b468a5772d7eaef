//! The names a certificate may carry, validated before anything is signed:
//! the subject common name and the subjectAltName entries (DNS, URI, IP).
//! Everything here is pure and strict — a name that a relying party might
//! read differently from hsmca is refused, not repaired.

use std::{net::IpAddr, str::FromStr};

use const_oid::db::rfc4519::CN as COMMON_NAME;
use der::{
    Any,
    asn1::{Ia5String, ObjectIdentifier, OctetString, SetOfVec, Utf8StringRef},
};
use x509_cert::{
    attr::AttributeTypeAndValue,
    ext::pkix::name::GeneralName,
    name::{Name, RdnSequence, RelativeDistinguishedName},
};

/// RFC 5280 ub-common-name.
pub const MAX_COMMON_NAME: usize = 64;
/// More names than this in one certificate is a mistake, not a use case.
pub const MAX_SANS: usize = 100;
const MAX_URI: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("common_name is longer than {MAX_COMMON_NAME} characters")]
    CommonNameTooLong,
    #[error("common_name contains a control character")]
    CommonNameControl,
    #[error("dns name {0:?} is not a valid host name ({1})")]
    Dns(String, &'static str),
    #[error("uri {0:?} is not an absolute URI ({1})")]
    Uri(String, String),
    #[error("ip address {0:?} is not an IPv4 or IPv6 address")]
    Ip(String),
    #[error("too many names: {0} (at most {MAX_SANS})")]
    TooMany(usize),
    #[error("name {0:?} appears twice")]
    Duplicate(String),
    #[error("subject {0:?} is not an RFC 4514 distinguished name like \"CN=Example CA,O=Example\"")]
    Subject(String),
}

/// The names of one certificate, validated and normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Names {
    /// Validates names given as strings (API fields, or read from a CSR).
    pub fn parse(
        common_name: &str,
        dns: &[String],
        uris: &[String],
        ips: &[String],
    ) -> Result<Self, NameError> {
        let total = dns.len() + uris.len() + ips.len();
        if total > MAX_SANS {
            return Err(NameError::TooMany(total));
        }
        let common_name = if common_name.is_empty() {
            None
        } else {
            Some(check_common_name(common_name)?)
        };
        let mut out = Names {
            common_name,
            ..Default::default()
        };
        for d in dns {
            let d = check_dns(d)?;
            if out.dns.contains(&d) {
                return Err(NameError::Duplicate(d));
            }
            out.dns.push(d);
        }
        for u in uris {
            let u = check_uri(u)?;
            if out.uris.contains(&u) {
                return Err(NameError::Duplicate(u));
            }
            out.uris.push(u);
        }
        for i in ips {
            let ip = IpAddr::from_str(i.trim()).map_err(|_| NameError::Ip(i.clone()))?;
            if out.ips.contains(&ip) {
                return Err(NameError::Duplicate(ip.to_string()));
            }
            out.ips.push(ip);
        }
        Ok(out)
    }

    pub fn has_sans(&self) -> bool {
        !(self.dns.is_empty() && self.uris.is_empty() && self.ips.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.common_name.is_none() && !self.has_sans()
    }

    pub fn has_wildcard(&self) -> bool {
        self.dns.iter().any(|d| d.starts_with("*."))
    }

    /// The subject: `CN=<common_name>` as a UTF8String, or the empty name.
    pub fn subject(&self) -> Result<Name, der::Error> {
        let mut seq = RdnSequence::default();
        if let Some(cn) = &self.common_name {
            let mut set = SetOfVec::new();
            set.insert(AttributeTypeAndValue {
                oid: COMMON_NAME,
                value: Any::encode_from(&Utf8StringRef::new(cn)?)?,
            })?;
            seq.push(RelativeDistinguishedName::try_from(set.into_vec())?);
        }
        Ok(Name::hazmat_from_rdn_sequence(seq))
    }

    pub fn general_names(&self) -> Result<Vec<GeneralName>, der::Error> {
        let mut out = Vec::with_capacity(self.dns.len() + self.uris.len() + self.ips.len());
        for d in &self.dns {
            out.push(GeneralName::DnsName(Ia5String::new(d)?));
        }
        for u in &self.uris {
            out.push(GeneralName::UniformResourceIdentifier(Ia5String::new(u)?));
        }
        for ip in &self.ips {
            let bytes = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            out.push(GeneralName::IpAddress(OctetString::new(bytes)?));
        }
        Ok(out)
    }
}

fn check_common_name(cn: &str) -> Result<String, NameError> {
    if cn.chars().count() > MAX_COMMON_NAME {
        return Err(NameError::CommonNameTooLong);
    }
    if cn.chars().any(char::is_control) {
        return Err(NameError::CommonNameControl);
    }
    Ok(cn.to_owned())
}

/// A host name in preferred name syntax (RFC 1034 §3.5 as relaxed by RFC
/// 1123), lowercased; `*.` is allowed as the whole leftmost label.
pub fn check_dns(name: &str) -> Result<String, NameError> {
    let err = |why| NameError::Dns(name.to_owned(), why);
    if name.is_empty() {
        return Err(err("empty"));
    }
    if name.len() > 253 {
        return Err(err("longer than 253 characters"));
    }
    if !name.is_ascii() {
        return Err(err("not ASCII; use the xn-- form for international names"));
    }
    let lower = name.to_ascii_lowercase();
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    if body.is_empty() {
        return Err(err("a wildcard needs a domain after it"));
    }
    for label in body.split('.') {
        if label.is_empty() {
            return Err(err("empty label"));
        }
        if label.len() > 63 {
            return Err(err("label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a label cannot start or end with '-'"));
        }
    }
    Ok(lower)
}

fn check_uri(uri: &str) -> Result<String, NameError> {
    let err = |why: &str| NameError::Uri(uri.to_owned(), why.to_owned());
    if uri.len() > MAX_URI {
        return Err(err("too long"));
    }
    if !uri.is_ascii() {
        return Err(err("not ASCII; percent-encode it"));
    }
    let parsed = fluent_uri::Uri::parse(uri).map_err(|e| err(&e.to_string()))?;
    if parsed.authority().is_none() && parsed.path().as_str().is_empty() {
        return Err(err("nothing after the scheme"));
    }
    Ok(uri.to_owned())
}

/// Parses an RFC 4514 distinguished name; used for the CA's own subject.
pub fn parse_subject(s: &str) -> Result<Name, NameError> {
    let name = Name::from_str(s).map_err(|_| NameError::Subject(s.to_owned()))?;
    if name.is_empty() {
        return Err(NameError::Subject(s.to_owned()));
    }
    Ok(name)
}

/// A readable name for an OID ("secp521r1"), or its dotted form.
pub fn oid_name(oid: ObjectIdentifier) -> String {
    // Key types people send by mistake that const-oid's database lacks.
    const EXTRA: &[(&str, &str)] = &[
        ("1.3.132.0.10", "secp256k1"),
        ("1.3.36.3.3.2.8.1.1.7", "brainpoolP256r1"),
        ("1.3.36.3.3.2.8.1.1.11", "brainpoolP384r1"),
        ("1.3.36.3.3.2.8.1.1.13", "brainpoolP512r1"),
        ("1.3.101.110", "X25519"),
        ("1.3.101.111", "X448"),
        ("1.3.101.113", "Ed448"),
        ("1.2.840.10040.4.1", "DSA"),
    ];
    let dotted = oid.to_string();
    if let Some((_, name)) = EXTRA.iter().find(|(o, _)| *o == dotted) {
        return format!("{name} ({dotted})");
    }
    const_oid::db::DB
        .by_oid(&oid)
        .map(|n| format!("{n} ({oid})"))
        .unwrap_or(dotted)
}

/// Names as requested: the CSR's or the request fields, not yet normalised.
#[derive(Debug, Clone, Copy)]
pub struct RawNames<'a> {
    pub common_name: &'a str,
    pub dns: &'a [String],
    pub uris: &'a [String],
    pub ips: &'a [String],
}

/// Every name as `TYPE:value`, in a fixed order: the same set of names
/// always gives the same text, however a CSR ordered them. Audit entries
/// list names this way, and certificate requests key duplicates and
/// renewals by it.
pub fn name_list(names: &Names) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(cn) = &names.common_name {
        out.push(format!("CN:{cn}"));
    }
    let mut sans: Vec<String> = names
        .dns
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(names.uris.iter().map(|u| format!("URI:{u}")))
        .chain(names.ips.iter().map(|i| format!("IP:{i}")))
        .collect();
    sans.sort();
    sans.dedup();
    out.extend(sans);
    out
}

/// [`name_list`] as one string: the key of a set of names.
pub fn names_key(names: &Names) -> String {
    name_list(names).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn dns_names() {
        assert_eq!(check_dns("Api.Example.COM").unwrap(), "api.example.com");
        assert_eq!(check_dns("*.svc.example").unwrap(), "*.svc.example");
        assert_eq!(check_dns("localhost").unwrap(), "localhost");
        assert_eq!(
            check_dns("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a.b.",
            "*",
            "*.",
            "a.*.b",
            "bü.cher",
            "a b",
            &"a".repeat(64),
            &format!("{}.x", "a.".repeat(130)),
        ] {
            assert!(check_dns(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uris() {
        assert!(check_uri("spiffe://example.org/ns/a/sa/b").is_ok());
        assert!(check_uri("https://example.com/x?y=1").is_ok());
        assert!(check_uri("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66").is_ok());
        for bad in [
            "",
            "no-scheme",
            "/relative",
            "spiffe://exa mple",
            "http://é.x",
            "a:",
        ] {
            assert!(check_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_parse_and_encode() {
        let n = Names::parse(
            "svc",
            &s(&["b.example", "A.example"]),
            &s(&["spiffe://t/x"]),
            &s(&["10.0.0.1", "::1"]),
        )
        .unwrap();
        assert_eq!(n.dns, s(&["b.example", "a.example"]));
        let gns = n.general_names().unwrap();
        assert_eq!(gns.len(), 5);
        assert!(matches!(&gns[3], GeneralName::IpAddress(o) if o.as_bytes() == [10, 0, 0, 1]));
        assert!(matches!(&gns[4], GeneralName::IpAddress(o) if o.as_bytes().len() == 16));
        let subject = n.subject().unwrap();
        assert_eq!(subject.to_string(), "CN=svc");
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "svc" } } }
        assert_eq!(
            hex::encode(subject.to_der().unwrap()),
            "300e310c300a06035504030c03737663"
        );
        assert!(Names::parse("", &[], &[], &[]).unwrap().is_empty());
    }

    #[test]
    fn names_refused() {
        assert_eq!(
            Names::parse(&"x".repeat(65), &[], &[], &[]),
            Err(NameError::CommonNameTooLong)
        );
        assert_eq!(
            Names::parse("a\nb", &[], &[], &[]),
            Err(NameError::CommonNameControl)
        );
        assert_eq!(
            Names::parse("", &[], &[], &s(&["10.0.0.256"])),
            Err(NameError::Ip("10.0.0.256".into()))
        );
        assert_eq!(
            Names::parse("", &s(&["a.b", "A.b"]), &[], &[]),
            Err(NameError::Duplicate("a.b".into()))
        );
        let many: Vec<String> = (0..101).map(|i| format!("h{i}.example")).collect();
        assert_eq!(
            Names::parse("", &many, &[], &[]),
            Err(NameError::TooMany(101))
        );
    }

    #[test]
    fn subjects() {
        assert!(parse_subject("CN=hsmca CA,O=Example").is_ok());
        assert!(parse_subject("not a name").is_err());
        assert!(parse_subject("").is_err());
        assert_eq!(
            oid_name(ObjectIdentifier::new_unwrap("1.3.132.0.35")),
            "secp521r1 (1.3.132.0.35)"
        );
    }

    #[test]
    fn names_key_ignores_order() {
        let a = Names::parse(
            "svc",
            &["b.example".into(), "a.example".into()],
            &[],
            &["10.0.0.1".into()],
        )
        .unwrap();
        let b = Names::parse(
            "svc",
            &["a.example".into(), "b.example".into()],
            &[],
            &["10.0.0.1".into()],
        )
        .unwrap();
        assert_eq!(names_key(&a), names_key(&b));
        assert_eq!(
            name_list(&a),
            ["CN:svc", "DNS:a.example", "DNS:b.example", "IP:10.0.0.1"]
        );
        let c = Names::parse("svc", &["a.example".into()], &[], &[]).unwrap();
        assert_ne!(names_key(&a), names_key(&c));
    }
}
