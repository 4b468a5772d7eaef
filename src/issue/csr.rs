//! PKCS#10 requests: decode, check the proof of possession (the CSR's own
//! signature), and read the names it asks for. The CA takes from a CSR only
//! its key, the subject common name and the subjectAltName entries; every
//! other attribute and requested extension is decided by the CA, not the CSR.

use der::{Decode, Encode};
use x509_cert::{
    ext::{
        Extension,
        pkix::{SubjectAltName, name::GeneralName},
    },
    request::{CertReq, ExtensionReq},
};

use super::subject_key::{KeyError, decode_pem};
use crate::{names::Names, verify::VerifyError};
use const_oid::db::rfc4519::CN as COMMON_NAME;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error(transparent)]
    Pem(#[from] KeyError),
    #[error("pem_csr: the CSR is malformed: {0}")]
    Der(String),
    #[error("pem_csr: the CSR's signature does not prove possession of its key: {0}")]
    Signature(VerifyError),
    #[error("pem_csr: the CSR subject has {0} common names; at most one is allowed")]
    ManyCommonNames(usize),
    #[error("pem_csr: the CSR subject common name is not a string")]
    CommonNameEncoding,
    #[error(
        "pem_csr: the CSR asks for a {0} subjectAltName, which hsmca does not issue (DNS, URI and IP only)"
    )]
    UnsupportedSan(&'static str),
    #[error("pem_csr: the CSR has a malformed {0} extension")]
    BadExtension(&'static str),
    #[error("pem_csr: version {0} is not PKCS#10 v1")]
    Version(u8),
}

/// The useful content of a verified CSR.
pub struct VerifiedCsr {
    pub csr: CertReq,
    pub common_name: String,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub ips: Vec<String>,
}

pub fn parse_and_verify(text: &str) -> Result<VerifiedCsr, CsrError> {
    let der = decode_pem("pem_csr", text, "CERTIFICATE REQUEST")?;
    let csr = CertReq::from_der(&der).map_err(|e| CsrError::Der(e.to_string()))?;
    if csr.info.version as u8 != 0 {
        return Err(CsrError::Version(csr.info.version as u8));
    }
    let info = csr
        .info
        .to_der()
        .map_err(|e| CsrError::Der(e.to_string()))?;
    let sig = csr
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Der("signature has unused bits".into()))?;
    crate::verify::verify(&csr.info.public_key, &csr.algorithm, &info, sig)
        .map_err(CsrError::Signature)?;

    let cns: Vec<_> = csr
        .info
        .subject
        .iter()
        .filter(|atv| atv.oid == COMMON_NAME)
        .collect();
    let common_name = match cns.as_slice() {
        [] => String::new(),
        [one] => x509_cert::ext::pkix::name::DirectoryString::try_from(&one.value)
            .map(|d| d.value().into_owned())
            .map_err(|_| CsrError::CommonNameEncoding)?,
        many => return Err(CsrError::ManyCommonNames(many.len())),
    };

    let (mut dns, mut uris, mut ips) = (Vec::new(), Vec::new(), Vec::new());
    for ext in requested_extensions(&csr)? {
        if ext.extn_id != <SubjectAltName as const_oid::AssociatedOid>::OID {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|_| CsrError::BadExtension("subjectAltName"))?;
        for gn in san.0 {
            match gn {
                GeneralName::DnsName(s) => dns.push(s.to_string()),
                GeneralName::UniformResourceIdentifier(s) => uris.push(s.to_string()),
                GeneralName::IpAddress(o) => ips.push(ip_text(o.as_bytes())?),
                GeneralName::Rfc822Name(_) => {
                    return Err(CsrError::UnsupportedSan("email (rfc822Name)"));
                }
                GeneralName::OtherName(_) => return Err(CsrError::UnsupportedSan("otherName")),
                GeneralName::DirectoryName(_) => {
                    return Err(CsrError::UnsupportedSan("directoryName"));
                }
                GeneralName::EdiPartyName(_) => {
                    return Err(CsrError::UnsupportedSan("ediPartyName"));
                }
                GeneralName::RegisteredId(_) => {
                    return Err(CsrError::UnsupportedSan("registeredID"));
                }
            }
        }
    }
    Ok(VerifiedCsr {
        csr,
        common_name,
        dns,
        uris,
        ips,
    })
}

fn ip_text(bytes: &[u8]) -> Result<String, CsrError> {
    match bytes.len() {
        4 => Ok(std::net::Ipv4Addr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| CsrError::BadExtension("subjectAltName"))?,
        )
        .to_string()),
        16 => Ok(std::net::Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| CsrError::BadExtension("subjectAltName"))?,
        )
        .to_string()),
        _ => Err(CsrError::BadExtension("subjectAltName (IP address length)")),
    }
}

fn requested_extensions(csr: &CertReq) -> Result<Vec<Extension>, CsrError> {
    let mut out = Vec::new();
    for attr in csr.info.attributes.iter() {
        if attr.oid != <ExtensionReq as const_oid::AssociatedOid>::OID {
            continue;
        }
        for value in attr.values.iter() {
            let req: ExtensionReq = value
                .decode_as()
                .map_err(|_| CsrError::BadExtension("extensionRequest"))?;
            out.extend(req.0);
        }
    }
    Ok(out)
}

impl VerifiedCsr {
    pub fn names(&self) -> Result<Names, crate::names::NameError> {
        Names::parse(&self.common_name, &self.dns, &self.uris, &self.ips)
    }
}
