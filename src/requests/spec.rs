//! What a certificate request asks for: its spec checked exactly as a
//! one-shot issue would be, and the keys that find duplicates and group
//! renewals.

use std::{collections::BTreeMap, sync::Arc};

use der::Encode;
use sha2::{Digest, Sha256};

use super::RequestError;
use crate::{
    issue::{Decided, IssueError, IssueRequest, Issuer, RequestedLifetime, check_tags},
    names::{Names, names_key},
    peer::identity::Identity,
    policy::{Grant, Policy},
    proto::CertificateRequestSpec,
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
pub fn issue_request(spec: &CertificateRequestSpec) -> IssueRequest {
    IssueRequest {
        pem_csr: spec.pem_csr.clone(),
        profile: spec.profile.clone(),
        lifetime: spec.cert_duration.map(|d| RequestedLifetime {
            seconds: d.seconds,
            nanos: d.nanos,
        }),
        description: spec.description.clone(),
        ..Default::default()
    }
}

/// What a one-shot issue for `spec` would decide for `who` under `policy`:
/// check, authorize, decide, in the same order as the service's. The CSR's
/// signature is verified off the async runtime, by the issuer's bounded
/// verifier (as for GenerateClientCertificate).
pub async fn decide(
    issuer: &Arc<Issuer>,
    spec: &CertificateRequestSpec,
    policy: &Policy,
    who: &Identity,
) -> Result<(Decided, Grant), RequestError> {
    let checked = issuer.check_off_runtime(issue_request(spec)).await?;
    let grant = policy.authorize(who, checked.profile(), &checked.raw_names())?;
    let decided = issuer.decide(checked, grant.limits())?;
    Ok((decided, grant))
}

/// Checks `spec` as the issuer would check a one-shot request from it under
/// `policy` for `who`, and its labels as tags.
pub async fn check(
    issuer: &Arc<Issuer>,
    spec: &CertificateRequestSpec,
    policy: &Policy,
    who: &Identity,
) -> Result<(CheckedSpec, Grant), RequestError> {
    if spec.pem_csr.trim().is_empty() {
        return Err(IssueError::Invalid(
            "spec.pem_csr is required: a certificate request carries a PKCS#10 CSR".into(),
        )
        .into());
    }
    let labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_tags(&labels).map_err(|e| IssueError::Invalid(format!("labels: {e}")))?;
    let (checked, grant) = decide(issuer, spec, policy, who).await?;
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
