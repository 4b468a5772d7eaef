//! What a certificate request asks for: its spec checked exactly as a
//! one-shot issue would be, and the keys that find duplicates and group
//! renewals.

use std::collections::BTreeMap;

use der::Encode;
use sha2::{Digest, Sha256};

use crate::{
    issue::{IssueError, Issuer, check_tags},
    names::Names,
    policy::{Grant, Policy, identity::Identity},
    proto::{CertificateRequestSpec, GenerateClientCertificateRequest},
    signing::DigestSigner,
};

/// A spec that passed every check, with its derived keys.
pub struct CheckedSpec {
    /// The spec with defaults filled in (profile, auto_renew), as stored and
    /// reported.
    pub spec: CertificateRequestSpec,
    /// DER SubjectPublicKeyInfo of the CSR's key.
    pub spki: Vec<u8>,
    pub names: Names,
    pub names_key: String,
    pub dup_key: String,
}

/// The one-shot request that issues a certificate for `spec`.
pub fn issue_request(spec: &CertificateRequestSpec) -> GenerateClientCertificateRequest {
    GenerateClientCertificateRequest {
        pem_csr: spec.pem_csr.clone(),
        profile: spec.profile.clone(),
        cert_duration: spec.cert_duration,
        description: spec.description.clone(),
        ..Default::default()
    }
}

/// Checks `spec` as the issuer would check a one-shot request from it under
/// `policy` for `who`, and its labels as tags.
pub fn check<S: DigestSigner>(
    issuer: &Issuer<S>,
    spec: &CertificateRequestSpec,
    policy: &Policy,
    who: &Identity,
) -> Result<(CheckedSpec, Grant), IssueError> {
    if spec.pem_csr.trim().is_empty() {
        return Err(IssueError::Invalid(
            "spec.pem_csr is required: a certificate request carries a PKCS#10 CSR".into(),
        ));
    }
    let labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_tags(&labels).map_err(|e| IssueError::Invalid(format!("labels: {e}")))?;
    let (checked, grant) = issuer.check_authorized(issue_request(spec), policy, who)?;
    let spki = checked
        .spec
        .spki
        .to_der()
        .map_err(|e| IssueError::Invalid(format!("pem_csr: the public key: {e}")))?;
    let names_key = names_key(&checked.names);
    let mut h = Sha256::new();
    h.update(&spki);
    h.update([0u8]);
    h.update(names_key.as_bytes());
    let dup_key = hex::encode(h.finalize());
    let mut spec = spec.clone();
    spec.profile = checked.spec.profile.name().to_owned();
    spec.auto_renew = Some(spec.auto_renew.unwrap_or(true));
    Ok((
        CheckedSpec {
            spec,
            spki,
            names: checked.names,
            names_key,
            dup_key,
        },
        grant,
    ))
}

/// Every name as `TYPE:value`, in a fixed order: the same set of names
/// always gives the same text, however the CSR ordered them.
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

pub fn names_key(names: &Names) -> String {
    name_list(names).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
