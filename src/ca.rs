//! The CA's certificates: the issuing certificate whose key is in the token,
//! and the issuers above it up to the root. Every link is checked when the
//! chain is loaded, so a reply never carries a chain that does not verify.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use der::{Encode, EncodePem, pem::LineEnding, referenced::OwnedToRef};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::{
    Certificate,
    ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier},
};

use x509_cert::name::Name;

use crate::{config::CaConfig, verify::VerifyError};

/// The issuing CA as a leaf sees it.
#[derive(Debug, Clone)]
pub struct IssuerInfo {
    pub name: Name,
    /// The CA certificate's subjectKeyIdentifier, copied into the leaf's AKI.
    pub key_id: Vec<u8>,
    /// CRL distribution point, when configured.
    pub crl_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no CA certificate; run `hsmca init --config …` first")]
    Missing(PathBuf),
    #[error("{what}: not a PEM certificate list: {reason}")]
    Pem { what: String, reason: String },
    #[error("{0}: the chain is empty")]
    Empty(String),
    #[error(
        "certificate {index} ({subject}) is not a CA certificate (basicConstraints CA=true and keyCertSign are required)"
    )]
    NotCa { index: usize, subject: String },
    #[error(
        "certificate {index} ({subject}) is not signed by the next certificate ({issuer}): {reason}"
    )]
    BrokenLink {
        index: usize,
        subject: String,
        issuer: String,
        reason: VerifyError,
    },
    #[error(
        "the chain ends with {0}, which is not a self-signed root; include the root certificate"
    )]
    NoRoot(String),
    #[error(
        "the CA certificate's public key is not the token's CA key (was the key regenerated without a new certificate?): certificate key SHA-256 {certificate}, token key SHA-256 {token}"
    )]
    KeyMismatch { certificate: String, token: String },
    #[error("cannot encode: {0}")]
    Encoding(String),
}

/// The loaded chain, ready to be copied into replies.
#[derive(Debug, Clone)]
pub struct CaChain {
    /// The certificate whose key is in the token.
    pub issuing: Certificate,
    /// PEM of the issuing certificate, then each issuer, ending with the root.
    pub chain_pem: Vec<String>,
    /// PEM of the root.
    pub root_pem: String,
    pub issuer: IssuerInfo,
    pub not_after: SystemTime,
}

impl CaChain {
    /// Reads `ca.certificate` (and `ca.chain` when set and present).
    pub fn load(cfg: &CaConfig) -> Result<Self, CaError> {
        if !cfg.certificate.exists() {
            return Err(CaError::Missing(cfg.certificate.clone()));
        }
        let mut certs = read_pem_certs(&cfg.certificate)?;
        if certs.len() != 1 {
            return Err(CaError::Pem {
                what: cfg.certificate.display().to_string(),
                reason: format!("expected exactly one certificate, found {}", certs.len()),
            });
        }
        if let Some(chain) = &cfg.chain
            && chain.exists()
        {
            certs.extend(read_pem_certs(chain)?);
        }
        Self::from_certs(certs, &cfg.certificate.display().to_string())
    }

    /// Validates `certs` (issuing first, root last): each is a CA certificate
    /// signed by the next, and the last signs itself.
    pub fn from_certs(certs: Vec<Certificate>, what: &str) -> Result<Self, CaError> {
        if certs.is_empty() {
            return Err(CaError::Empty(what.to_owned()));
        }
        for (i, c) in certs.iter().enumerate() {
            if !is_ca(c) {
                return Err(CaError::NotCa {
                    index: i,
                    subject: c.tbs_certificate().subject().to_string(),
                });
            }
            let issuer = certs.get(i + 1).unwrap_or(c);
            check_signed_by(c, issuer).map_err(|reason| {
                if i + 1 == certs.len() {
                    CaError::NoRoot(c.tbs_certificate().subject().to_string())
                } else {
                    CaError::BrokenLink {
                        index: i,
                        subject: c.tbs_certificate().subject().to_string(),
                        issuer: issuer.tbs_certificate().subject().to_string(),
                        reason,
                    }
                }
            })?;
        }
        let chain_pem = certs
            .iter()
            .map(|c| c.to_pem(LineEnding::LF))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::Encoding(e.to_string()))?;
        let issuing = certs[0].clone();
        let tbs = issuing.tbs_certificate();
        let key_id = match tbs.get_extension::<SubjectKeyIdentifier>() {
            Ok(Some((_, ski))) => ski.0.as_bytes().to_vec(),
            _ => SubjectKeyIdentifier::try_from(tbs.subject_public_key_info().owned_to_ref())
                .map_err(|e| CaError::Encoding(e.to_string()))?
                .0
                .as_bytes()
                .to_vec(),
        };
        let not_after = certs
            .iter()
            .map(|c| c.tbs_certificate().validity().not_after.to_system_time())
            .min()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Self {
            issuer: IssuerInfo {
                name: tbs.subject().clone(),
                key_id,
                crl_url: None,
            },
            root_pem: chain_pem.last().cloned().unwrap_or_default(),
            chain_pem,
            issuing,
            not_after,
        })
    }

    /// The issuing certificate must certify exactly the token's key.
    pub fn check_key(&self, token_key: &SubjectPublicKeyInfoOwned) -> Result<(), CaError> {
        let ours = self.issuing.tbs_certificate().subject_public_key_info();
        let same = ours
            .to_der()
            .ok()
            .zip(token_key.to_der().ok())
            .is_some_and(|(a, b)| a == b);
        if same {
            Ok(())
        } else {
            Err(CaError::KeyMismatch {
                certificate: crate::signing::fingerprint(ours),
                token: crate::signing::fingerprint(token_key),
            })
        }
    }
}

fn is_ca(c: &Certificate) -> bool {
    let tbs = c.tbs_certificate();
    let bc = matches!(tbs.get_extension::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca);
    let ku = match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) => ku.0.contains(KeyUsages::KeyCertSign),
        // keyUsage is optional in RFC 5280; without it the key may sign certificates.
        Ok(None) => true,
        Err(_) => false,
    };
    bc && ku
}

/// Verifies that `issuer`'s key signed `cert`.
pub fn check_signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), VerifyError> {
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|_| VerifyError::Malformed)?;
    let sig = cert.signature().as_bytes().ok_or(VerifyError::Malformed)?;
    crate::verify::verify(
        issuer.tbs_certificate().subject_public_key_info(),
        cert.signature_algorithm(),
        &tbs,
        sig,
    )
}

pub fn read_pem_certs(path: &Path) -> Result<Vec<Certificate>, CaError> {
    let bytes = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_pem_certs(&bytes, &path.display().to_string())
}

pub fn parse_pem_certs(bytes: &[u8], what: &str) -> Result<Vec<Certificate>, CaError> {
    Certificate::load_pem_chain(bytes).map_err(|e| CaError::Pem {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// crash never leaves a half-written certificate behind.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut tmp, contents).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
