//! Issuance: validate one request completely (request id, key or CSR, names,
//! profile, lifetime, metadata), then build the certificate and have the
//! token sign its digest. Nothing is signed until everything has been checked.

pub mod certificate;
pub mod csr;
pub mod subject_key;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use der::{EncodePem, pem::LineEnding};
use spki::SubjectPublicKeyInfoOwned;

use crate::{
    ca::CaChain,
    config::{ProfileBounds, ProfilesConfig},
    names::{NameError, Names},
    peer::Peer,
    policy::RawNames,
    proto::GenerateClientCertificateRequest,
    signing::DigestSigner,
    store::Record,
};
use certificate::{BuildError, LeafProfile, LeafSpec};
use csr::CsrError;
use subject_key::{KeyError, SubjectKeyKind};

pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY: usize = 128;
pub const MAX_TAG_VALUE: usize = 256;
pub const MAX_DESCRIPTION: usize = 1024;
pub const RESERVED_TAG_PREFIX: &str = "hsmca:";

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request is wrong; the message says how. → INVALID_ARGUMENT
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Name(#[from] NameError),
    /// The policy refuses the caller this request.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The CA cannot issue at all right now (e.g. it has expired).
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Build(#[from] BuildError),
}

fn invalid(msg: impl Into<String>) -> IssueError {
    IssueError::Invalid(msg.into())
}

/// A certificate that was just issued, with everything the reply carries.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_id: String,
    pub pem_certificate: String,
    pub serial_hex: String,
    pub subject: String,
    pub names: Names,
    pub profile: LeafProfile,
    pub create_time: SystemTime,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub request_id: String,
    /// SHA-256 of the TBSCertificate the token signed (hex).
    pub tbs_sha256: String,
    pub key_label: String,
}

/// What the policy decided about a request: a lifetime cap, and for an
/// intermediate the names it may sign.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub max_duration: Option<Duration>,
    pub permitted: Option<crate::policy::Permitted>,
}

/// A request that passed every check, with the certificate decided but not
/// yet signed.
pub struct Checked {
    pub spec: LeafSpec,
    pub subject: String,
    pub names: Names,
    pub serial_hex: String,
    pub create_time: SystemTime,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub request_id: String,
}

impl Issued {
    /// The audit entry for this certificate, issued to `who` by `operation`.
    pub fn audit_entry(
        &self,
        who: Option<&crate::policy::identity::Identity>,
        operation: &str,
    ) -> crate::audit::AuditEntry {
        let mut e = crate::audit::AuditEntry::by(who, operation);
        e.profile = self.profile.name().to_owned();
        e.names = crate::requests::spec::name_list(&self.names);
        e.serial = self.serial_hex.clone();
        e.tbs_sha256 = self.tbs_sha256.clone();
        e.key_label = self.key_label.clone();
        e.outcome = "issued".into();
        e
    }

    /// The certificate's record, owned by `owner`. `fingerprint` tells a
    /// request_id retry from a different request ("" without request_id).
    pub fn to_record(&self, owner: &Peer, fingerprint: String) -> Record {
        Record {
            id: self.certificate_id.clone(),
            serial: self.serial_hex.clone(),
            owner_uid: owner.uid,
            owner_gid: owner.gid,
            owner_pid: owner.pid.map_or(-1, i64::from),
            subject: self.subject.clone(),
            dns_names: self.names.dns.clone(),
            uri_sans: self.names.uris.clone(),
            ip_addresses: self.names.ips.iter().map(|ip| ip.to_string()).collect(),
            profile: self.profile.name().to_owned(),
            not_before: unix_secs(self.not_before),
            expire_time: unix_secs(self.not_after),
            create_time_us: unix_us(self.create_time),
            request_id: self.request_id.clone(),
            fingerprint,
            description: self.description.clone(),
            tags: self.tags.clone(),
            revoked: None,
            pem: self.pem_certificate.clone(),
            reply: Vec::new(),
        }
    }
}

/// Unix microseconds: the precision records are ordered by.
pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub struct Issuer<S> {
    /// The token key's label, for the audit log.
    key_label: String,
    signer: Arc<S>,
    ca: Arc<CaChain>,
    profiles: ProfilesConfig,
    backdate: Duration,
}

impl<S: DigestSigner> Issuer<S> {
    pub fn new(
        signer: Arc<S>,
        ca: Arc<CaChain>,
        profiles: ProfilesConfig,
        backdate: Duration,
    ) -> Self {
        Self {
            key_label: String::new(),
            signer,
            ca,
            profiles,
            backdate,
        }
    }

    /// Names the token key in audit entries.
    pub fn with_key_label(mut self, label: impl Into<String>) -> Self {
        self.key_label = label.into();
        self
    }

    pub fn ca(&self) -> &CaChain {
        &self.ca
    }

    pub async fn issue(&self, req: GenerateClientCertificateRequest) -> Result<Issued, IssueError> {
        let checked = self.check(req)?;
        self.sign(checked).await
    }

    /// Validates `req` completely and decides every field of the
    /// certificate, without signing anything.
    pub fn check(&self, req: GenerateClientCertificateRequest) -> Result<Checked, IssueError> {
        self.check_with(req, &|_, _| Ok(Gate::default()))
    }

    /// As [`Issuer::check`], under `policy` for `who`: the grant says which
    /// rule allowed it (its rate and quota are the caller's to apply).
    pub fn check_authorized(
        &self,
        req: GenerateClientCertificateRequest,
        policy: &crate::policy::Policy,
        who: &crate::policy::identity::Identity,
    ) -> Result<(Checked, crate::policy::Grant), IssueError> {
        let granted = std::sync::Mutex::new(None);
        let checked = self.check_with(req, &|profile, names| {
            let grant = policy.authorize(who, profile, names)?;
            let gate = Gate {
                max_duration: grant.max_duration,
                permitted: Some(grant.permitted.clone()),
            };
            *granted.lock().unwrap_or_else(|p| p.into_inner()) = Some(grant);
            Ok(gate)
        })?;
        let grant = granted
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| IssueError::Invalid("the request names nothing to authorise".into()))?;
        Ok((checked, grant))
    }

    /// As [`Issuer::check`], with `gate` (the policy) judging the profile and
    /// the names exactly as requested, before they are normalised; it may
    /// cap the lifetime and constrain an intermediate.
    pub fn check_with(
        &self,
        req: GenerateClientCertificateRequest,
        gate: &dyn Fn(LeafProfile, &RawNames<'_>) -> Result<Gate, IssueError>,
    ) -> Result<Checked, IssueError> {
        let request_id = check_request_id(&req.request_id)?;
        let profile = LeafProfile::parse(&req.profile).ok_or_else(|| {
            invalid(format!(
                "profile {:?} is unknown; use \"client\", \"server\" or \"intermediate\"",
                req.profile
            ))
        })?;
        let bounds = match profile {
            LeafProfile::Client => self.profiles.client,
            LeafProfile::Server => self.profiles.server,
            LeafProfile::Intermediate => self.profiles.intermediate,
        };
        let mut lifetime = check_duration(req.cert_duration.as_ref(), &bounds, profile)?;
        check_description(&req.description)?;
        check_tags(&req.tags)?;

        let has_fields = !(req.common_name.is_empty()
            && req.dns_names.is_empty()
            && req.uri_sans.is_empty()
            && req.ip_addresses.is_empty());
        let gate_result: Option<Gate>;
        let (spki, names): (SubjectPublicKeyInfoOwned, Names) = match (
            req.public_key.trim().is_empty(),
            req.pem_csr.trim().is_empty(),
        ) {
            (true, true) => {
                return Err(invalid(
                    "give exactly one of public_key or pem_csr; neither was set",
                ));
            }
            (false, false) => {
                return Err(invalid(
                    "give exactly one of public_key or pem_csr; both were set",
                ));
            }
            (false, true) => {
                let spki = subject_key::parse_public_key_pem(&req.public_key)?;
                gate_result = Some(gate(
                    profile,
                    &RawNames {
                        common_name: &req.common_name,
                        dns: &req.dns_names,
                        uris: &req.uri_sans,
                        ips: &req.ip_addresses,
                    },
                )?);
                let names = Names::parse(
                    &req.common_name,
                    &req.dns_names,
                    &req.uri_sans,
                    &req.ip_addresses,
                )?;
                (spki, names)
            }
            (true, false) => {
                if has_fields {
                    return Err(invalid(
                        "with pem_csr the names come from the CSR: leave common_name, dns_names, uri_sans and ip_addresses empty",
                    ));
                }
                let verified = csr::parse_and_verify(&req.pem_csr)?;
                gate_result = Some(gate(
                    profile,
                    &RawNames {
                        common_name: &verified.common_name,
                        dns: &verified.dns,
                        uris: &verified.uris,
                        ips: &verified.ips,
                    },
                )?);
                let names = verified.names()?;
                (verified.csr.info.public_key, names)
            }
        };
        let gate_result = gate_result.unwrap_or_default();
        if let Some(cap) = gate_result.max_duration {
            lifetime = lifetime.min(cap);
        }
        let kind = subject_key::check_subject_key(&spki)?;
        if names.is_empty() {
            return Err(invalid(
                "the certificate would name nobody: give a common_name or at least one DNS name, URI or IP address",
            ));
        }
        if names.has_wildcard() && profile != LeafProfile::Server {
            return Err(invalid(
                "wildcard DNS names are only issued with the \"server\" profile",
            ));
        }
        if profile == LeafProfile::Intermediate && names.common_name.is_none() {
            return Err(invalid(
                "an intermediate CA needs a subject: give it a common name",
            ));
        }

        let now = SystemTime::now();
        let not_before = now - self.backdate;
        let mut not_after = now + lifetime;
        // Never outlive the CA: the reply shows the real expiry.
        if not_after > self.ca.not_after {
            not_after = self.ca.not_after;
        }
        if not_after <= now {
            return Err(IssueError::Precondition(
                "the CA certificate has expired; renew it with `hsmca init --force`".into(),
            ));
        }

        let subject = names
            .subject()
            .map_err(|e| invalid(format!("common_name: {e}")))?;
        let serial = certificate::new_serial()?;
        let serial_hex = serial_hex(serial.as_bytes());
        let spec = LeafSpec {
            subject: subject.clone(),
            general_names: names
                .general_names()
                .map_err(|e| invalid(format!("names: {e}")))?,
            spki,
            key_encipherment: matches!(kind, SubjectKeyKind::Rsa(_)),
            profile,
            serial,
            not_before,
            not_after,
            permitted: (profile == LeafProfile::Intermediate)
                .then_some(gate_result.permitted)
                .flatten(),
        };
        Ok(Checked {
            spec,
            subject: subject.to_string(),
            names,
            serial_hex,
            create_time: now,
            description: req.description,
            tags: req.tags,
            request_id,
        })
    }

    /// Builds and signs the certificate `check` decided on.
    pub async fn sign(&self, checked: Checked) -> Result<Issued, IssueError> {
        let Checked {
            spec,
            subject,
            names,
            serial_hex,
            create_time,
            description,
            tags,
            request_id,
        } = checked;
        let profile = spec.profile;
        let cert = certificate::build_leaf(self.signer.as_ref(), &self.ca.issuer, spec).await?;
        // The reply reports the certificate's own times (whole seconds).
        let validity = cert.tbs_certificate().validity();
        let (not_before, not_after) = (
            validity.not_before.to_system_time(),
            validity.not_after.to_system_time(),
        );
        let pem_certificate = cert
            .to_pem(LineEnding::LF)
            .map_err(|e| BuildError::Encoding(e.to_string()))?;
        let tbs_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            der::Encode::to_der(cert.tbs_certificate()).map_err(BuildError::from)?,
        ));
        Ok(Issued {
            // Time-ordered (UUIDv7): new rows append to the id index
            // instead of landing on a random page of it.
            certificate_id: uuid::Uuid::now_v7().to_string(),
            pem_certificate,
            serial_hex,
            subject,
            names,
            profile,
            create_time,
            not_before,
            not_after,
            description,
            tags,
            request_id,
            tbs_sha256,
            key_label: self.key_label.clone(),
        })
    }
}

/// Lowercase hex of the serial's value, without the DER sign byte: what
/// `openssl x509 -serial` prints, lowercased.
pub fn serial_hex(der_int: &[u8]) -> String {
    let start = der_int
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(der_int.len().saturating_sub(1));
    hex::encode(&der_int[start..])
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

pub fn check_duration(
    d: Option<&prost_types::Duration>,
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
    use super::*;

    #[test]
    fn serial_hex_drops_the_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0xde, 0x02]), "de02");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn serials_are_16_positive_bytes_with_80_random_bits_and_ascend_by_time() {
        let a = certificate::new_serial().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = certificate::new_serial().unwrap();
        let (a, b) = (serial_hex(a.as_bytes()), serial_hex(b.as_bytes()));
        assert_eq!(a.len(), 32, "{a}");
        assert_eq!(b.len(), 32, "{b}");
        assert!(a < b, "{a} then {b}");
        // The time prefix is now, in milliseconds.
        let ms = u64::from_str_radix(&a[..12], 16).unwrap();
        let now = unix_us(std::time::SystemTime::now()) as u64 / 1000;
        assert!(now - ms < 60_000, "{ms} vs {now}");
        // The random tails differ.
        let c = serial_hex(certificate::new_serial().unwrap().as_bytes());
        assert_ne!(&a[12..], &c[12..]);
    }

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
        let d = |s| prost_types::Duration {
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
