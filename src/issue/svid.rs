//! The X509-SVID entry point: a certificate for a workload whose key the
//! daemon made, decided from a registration entry instead of a request.
//! X509-SVID.md, and nothing else, decides the fields: an empty subject,
//! exactly one URI SAN (the SPIFFE ID, checked as SPIFFE-ID.md requires)
//! plus the entry's DNS names, the SAN critical because the subject is
//! empty, basicConstraints critical with cA false, keyUsage critical with
//! digitalSignature (and keyEncipherment for RSA keys), and
//! extendedKeyUsage serverAuth and clientAuth. The certificate is then
//! signed by [`Issuer::sign`] like every other.

use std::time::{Duration, SystemTime};

use spki::SubjectPublicKeyInfoOwned;

use super::{
    Decided, IssueError, Issuer,
    certificate::{self, LeafSpec},
    invalid, serial_hex,
    subject_key::{self, SubjectKeyKind},
};
use crate::{names::Names, profile::LeafProfile, spiffe_id::SpiffeId};

/// What an SVID is made from.
pub struct SvidSpec {
    pub spki: SubjectPublicKeyInfoOwned,
    pub spiffe_id: SpiffeId,
    pub dns_names: Vec<String>,
    pub lifetime: Duration,
    /// For the record's description.
    pub description: String,
}

impl Issuer {
    /// Decides every field of an X509-SVID (see the module documentation).
    pub fn decide_svid(&self, spec: SvidSpec) -> Result<Decided, IssueError> {
        let kind = subject_key::check_subject_key(&spec.spki)?;
        let id = spec.spiffe_id.to_string();
        let names = Names::parse("", &spec.dns_names, std::slice::from_ref(&id), &[])?;
        if names.uris.len() != 1 || names.common_name.is_some() || !names.ips.is_empty() {
            return Err(invalid("an X509-SVID names exactly one SPIFFE ID"));
        }
        let now = SystemTime::now();
        let not_before = now - self.backdate;
        let mut not_after = now + spec.lifetime;
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
            .map_err(|e| invalid(format!("subject: {e}")))?;
        let serial = certificate::new_serial()?;
        let serial_hex = serial_hex(serial.as_bytes());
        let leaf = LeafSpec {
            subject: subject.clone(),
            general_names: names
                .general_names()
                .map_err(|e| invalid(format!("names: {e}")))?,
            spki: spec.spki,
            key_encipherment: matches!(kind, SubjectKeyKind::Rsa(_)),
            profile: LeafProfile::Svid,
            serial,
            not_before,
            not_after,
            permitted: None,
        };
        Ok(Decided {
            spec: leaf,
            subject: subject.to_string(),
            names,
            serial_hex,
            create_time: now,
            description: spec.description,
            tags: Default::default(),
            request_id: String::new(),
        })
    }
}
