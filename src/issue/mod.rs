//! Issuance, in three steps that the caller runs in order with the policy
//! between them:
//!
//! 1. [`Issuer::check`] validates an [`IssueRequest`] on its own terms:
//!    request id, profile, lifetime bounds, description, tags, the key or
//!    the CSR (its signature included). The names stay exactly as given.
//! 2. (The caller asks the policy about [`Checked::profile`] and
//!    [`Checked::raw_names`], before anything is normalised.)
//! 3. [`Issuer::decide`] applies what the policy granted ([`Limits`]) and
//!    decides every field of the certificate; [`Issuer::sign`] builds it
//!    and has the token sign its digest.
//!
//! Nothing is signed until everything has been checked. This module knows
//! no wire format, store or audit log: it takes plain input and returns the
//! certificate it built ([`Issued`]); the edges turn that into records,
//! audit entries and replies.

pub mod certificate;
pub mod csr;
mod offload;
pub use offload::low_priority;
pub mod request;
// The test hook that forces serials: real only in test builds, a stand-in
// without behaviour in the shipped one (see serial_hook_off.rs).
#[cfg_attr(not(feature = "test-faults"), path = "serial_hook_off.rs")]
mod serial_hook;
pub mod subject_key;
pub mod svid;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use der::{EncodePem, pem::LineEnding};
use spki::SubjectPublicKeyInfoOwned;

pub use self::request::{
    IssueRequest, MAX_TAGS, RESERVED_TAG_PREFIX, RequestedLifetime, check_description,
    check_request_id, check_tags,
};
use self::{
    certificate::{BuildError, LeafSpec},
    csr::{CsrError, VerifiedCsr},
    request::check_duration,
    subject_key::{KeyError, SubjectKeyKind},
};
use crate::{
    ca::CaChain,
    config::ProfilesConfig,
    names::{NameError, Names, RawNames},
    profile::{LeafProfile, Limits},
    signing::DigestSigner,
};

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

/// Where the key and the names come from.
enum Source {
    /// `public_key` and the name fields of the request.
    Fields {
        spki: SubjectPublicKeyInfoOwned,
        common_name: String,
        dns: Vec<String>,
        uris: Vec<String>,
        ips: Vec<String>,
    },
    /// A CSR whose signature verified.
    Csr(Box<VerifiedCsr>),
}

/// A request whose every field passed its own check. The names are still
/// as given, for the policy to judge.
pub struct Checked {
    profile: LeafProfile,
    lifetime: Duration,
    source: Source,
    description: String,
    tags: BTreeMap<String, String>,
    request_id: String,
}

impl Checked {
    pub fn profile(&self) -> LeafProfile {
        self.profile
    }

    /// The names exactly as requested (the CSR's, or the request fields).
    pub fn raw_names(&self) -> RawNames<'_> {
        match &self.source {
            Source::Fields {
                common_name,
                dns,
                uris,
                ips,
                ..
            } => RawNames {
                common_name,
                dns,
                uris,
                ips,
            },
            Source::Csr(v) => RawNames {
                common_name: &v.common_name,
                dns: &v.dns,
                uris: &v.uris,
                ips: &v.ips,
            },
        }
    }
}

/// A request with its certificate decided but not yet signed. Kept (cloned)
/// until the record is stored, so that a serial the store already holds
/// can be replaced ([`Decided::renew_serial`]) and the certificate signed again.
#[derive(Clone)]
pub struct Decided {
    pub spec: LeafSpec,
    pub subject: String,
    pub names: Names,
    pub serial_hex: String,
    pub create_time: SystemTime,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub request_id: String,
}

impl Decided {
    /// A fresh serial, for when the store says the decided one is taken:
    /// the certificate is then signed again, never handed out under a
    /// serial whose record could not be stored.
    pub fn renew_serial(&mut self) -> Result<(), IssueError> {
        let serial = certificate::new_serial()?;
        self.serial_hex = serial_hex(serial.as_bytes());
        self.spec.serial = serial;
        Ok(())
    }
}

/// How many times a certificate is signed again because its serial was
/// taken before the request fails: with 80 random bits a second collision
/// in a row does not happen unless something is broken.
pub const SERIAL_ATTEMPTS: u32 = 4;

pub struct Issuer {
    /// The token key's label, for the audit log.
    key_label: String,
    signer: Arc<dyn DigestSigner>,
    ca: Arc<CaChain>,
    profiles: ProfilesConfig,
    backdate: Duration,
}

impl Issuer {
    pub fn new(
        signer: Arc<dyn DigestSigner>,
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

    /// The same issuer signing through `signer`: the same CA, profiles
    /// and key label, another way into the key (the token pool's
    /// background class, for work no client waits on).
    pub fn with_signer(&self, signer: Arc<dyn DigestSigner>) -> Self {
        Self {
            key_label: self.key_label.clone(),
            signer,
            ca: self.ca.clone(),
            profiles: self.profiles.clone(),
            backdate: self.backdate,
        }
    }

    pub fn ca(&self) -> &CaChain {
        &self.ca
    }

    /// Step 1: every check that needs nothing but the request itself.
    pub fn check(&self, req: IssueRequest) -> Result<Checked, IssueError> {
        let request_id = check_request_id(&req.request_id)?;
        let profile = LeafProfile::parse(&req.profile).ok_or_else(|| {
            invalid(format!(
                "profile {:?} is unknown; use \"client\", \"server\" or \"intermediate\"",
                req.profile
            ))
        })?;
        let bounds = match profile {
            // `parse` never gives `Svid`: SVIDs come from `decide_svid`.
            LeafProfile::Client | LeafProfile::Svid => self.profiles.client,
            LeafProfile::Server => self.profiles.server,
            LeafProfile::Intermediate => self.profiles.intermediate,
        };
        let lifetime = check_duration(req.lifetime.as_ref(), &bounds, profile)?;
        check_description(&req.description)?;
        check_tags(&req.tags)?;
        let source = match (
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
            (false, true) => Source::Fields {
                spki: subject_key::parse_public_key_pem(&req.public_key)?,
                common_name: req.common_name,
                dns: req.dns_names,
                uris: req.uri_sans,
                ips: req.ip_addresses,
            },
            (true, false) => {
                if !(req.common_name.is_empty()
                    && req.dns_names.is_empty()
                    && req.uri_sans.is_empty()
                    && req.ip_addresses.is_empty())
                {
                    return Err(invalid(
                        "with pem_csr the names come from the CSR: leave common_name, dns_names, uri_sans and ip_addresses empty",
                    ));
                }
                Source::Csr(Box::new(csr::parse_and_verify(&req.pem_csr)?))
            }
        };
        Ok(Checked {
            profile,
            lifetime,
            source,
            description: req.description,
            tags: req.tags,
            request_id,
        })
    }

    /// Step 3: normalises the names and decides every field of the
    /// certificate under what the policy granted, without signing anything.
    pub fn decide(&self, checked: Checked, limits: Limits) -> Result<Decided, IssueError> {
        let Checked {
            profile,
            mut lifetime,
            source,
            description,
            tags,
            request_id,
        } = checked;
        let (spki, names) = match source {
            Source::Fields {
                spki,
                common_name,
                dns,
                uris,
                ips,
            } => (spki, Names::parse(&common_name, &dns, &uris, &ips)?),
            Source::Csr(verified) => {
                let names = verified.names()?;
                (verified.csr.info.public_key, names)
            }
        };
        if let Some(cap) = limits.max_duration {
            lifetime = lifetime.min(cap);
        }
        let kind = subject_key::check_subject_key(&spki)?;
        check_names_fit(&names, profile)?;

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
                .then_some(limits.permitted)
                .flatten(),
        };
        Ok(Decided {
            spec,
            subject: subject.to_string(),
            names,
            serial_hex,
            create_time: now,
            description,
            tags,
            request_id,
        })
    }

    /// Step 4: builds the certificate `decide` decided on and has the token
    /// sign its digest.
    pub async fn sign(&self, decided: Decided) -> Result<Issued, IssueError> {
        let Decided {
            spec,
            subject,
            names,
            serial_hex,
            create_time,
            description,
            tags,
            request_id,
        } = decided;
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

/// The names a profile's certificate may carry: someone, no wildcard
/// outside a server certificate, and a subject for an intermediate.
fn check_names_fit(names: &Names, profile: LeafProfile) -> Result<(), IssueError> {
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
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::time::unix_us;

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
}
