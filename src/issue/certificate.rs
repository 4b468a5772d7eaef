//! Building certificates: the TBSCertificate is assembled by x509-cert's
//! builder, hashed here, signed by the token as a digest, and the signature
//! assembled back in. The extensions of every profile are set in this file.

use std::time::SystemTime;

use der::{Encode, asn1::BitString, referenced::OwnedToRef};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef,
};
use x509_cert::{
    Certificate,
    builder::{Builder, CertificateBuilder, profile::BuilderProfile},
    certificate::TbsCertificate,
    ext::{
        Extension, ToExtension,
        pkix::{
            AuthorityKeyIdentifier, BasicConstraints, CrlDistributionPoints, ExtendedKeyUsage,
            KeyUsage, KeyUsages, NameConstraints, SubjectAltName, SubjectKeyIdentifier,
            constraints::name::GeneralSubtree,
            crl::dp::DistributionPoint,
            name::{DistributionPointName, GeneralName},
        },
    },
    name::Name,
    serial_number::SerialNumber,
    time::{Time, Validity},
};

use crate::{
    ca::IssuerInfo,
    profile::{LeafProfile, Permitted},
    signing::{DigestSigner, SignError},
};
pub use const_oid::db::rfc5280::ID_KP_CLIENT_AUTH;
pub use const_oid::db::rfc5280::ID_KP_SERVER_AUTH;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot encode the certificate: {0}")]
    Encoding(String),
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl From<der::Error> for BuildError {
    fn from(e: der::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}
impl From<x509_cert::builder::Error> for BuildError {
    fn from(e: x509_cert::builder::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}
impl From<spki::Error> for BuildError {
    fn from(e: spki::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}

/// The token key as x509-cert's builders see it: a public key and an
/// algorithm identifier. It cannot sign; [`sign_with`] does that through the
/// [`DigestSigner`].
#[derive(Clone)]
pub struct TokenKeypair {
    spki: SpkiKey,
    alg: AlgorithmIdentifierOwned,
}

#[derive(Clone)]
pub struct SpkiKey(SubjectPublicKeyInfoOwned);

impl EncodePublicKey for SpkiKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::encode_msg(&self.0)?)
    }
}

impl signature::Keypair for TokenKeypair {
    type VerifyingKey = SpkiKey;
    fn verifying_key(&self) -> SpkiKey {
        self.spki.clone()
    }
}

impl DynSignatureAlgorithmIdentifier for TokenKeypair {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.alg.clone())
    }
}

impl TokenKeypair {
    pub fn of<S: DigestSigner + ?Sized>(signer: &S) -> Result<Self, BuildError> {
        Ok(Self {
            spki: SpkiKey(signer.public_key().clone()),
            alg: signer
                .scheme()
                .algorithm_identifier()
                .map_err(|e| BuildError::Encoding(e.to_string()))?,
        })
    }
}

/// TBS → digest in Rust → token → assembled object. Works for certificates,
/// CSRs and CRLs alike.
pub async fn sign_with<B, S>(mut builder: B, signer: &S) -> Result<B::Output, BuildError>
where
    B: Builder + Send,
    S: DigestSigner + ?Sized,
{
    let keypair = TokenKeypair::of(signer)?;
    let tbs = builder.finalize(&keypair)?;
    let digest = signer.scheme().digest(&tbs);
    let signature = signer.sign_digest(digest).await?;
    Ok(builder.assemble(BitString::from_bytes(&signature)?, &keypair)?)
}

/// Everything that goes into one leaf certificate besides the issuer.
#[derive(Clone)]
pub struct LeafSpec {
    pub subject: Name,
    pub general_names: Vec<GeneralName>,
    pub spki: SubjectPublicKeyInfoOwned,
    /// RSA subject keys may also encrypt key material (TLS 1.2 RSA kx).
    pub key_encipherment: bool,
    pub profile: LeafProfile,
    pub serial: SerialNumber,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// For the intermediate profile: what certificates it signs may name.
    pub permitted: Option<Permitted>,
}

struct Fixed {
    subject: Name,
    issuer: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for Fixed {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// NameConstraints (critical, permitted subtrees only) from what a policy
/// rule allows: its DNS names, URI hosts, IP networks and exact common names
/// (as `CN=…` directoryName subtrees), and no e-mail address. A name type the rule allows nothing of gets a subtree no
/// real name falls in (`hsmca.invalid`, a /32 and /128 host), so the
/// intermediate cannot sign that type at all; a type the rule allows
/// entirely (`**`) is left unconstrained.
fn name_constraints(p: &Permitted) -> Result<Option<NameConstraints>, BuildError> {
    const NOTHING: &str = "hsmca.invalid";
    let subtree = |base| GeneralSubtree {
        base,
        minimum: 0,
        maximum: None,
    };
    let mut subtrees = Vec::new();
    // The policy never grants e-mail addresses.
    subtrees.push(subtree(GeneralName::Rfc822Name(der::asn1::Ia5String::new(
        NOTHING,
    )?)));
    if let Some(cns) = &p.common_names {
        let cns: Vec<&str> = if cns.is_empty() {
            vec![NOTHING]
        } else {
            cns.iter().map(String::as_str).collect()
        };
        for cn in cns {
            let name = crate::names::Names {
                common_name: Some(cn.to_owned()),
                ..Default::default()
            }
            .subject()?;
            subtrees.push(subtree(GeneralName::DirectoryName(name)));
        }
    }
    if let Some(dns) = &p.dns {
        let hosts: Vec<&str> = if dns.is_empty() {
            vec![NOTHING]
        } else {
            dns.iter().map(String::as_str).collect()
        };
        for d in hosts {
            subtrees.push(subtree(GeneralName::DnsName(der::asn1::Ia5String::new(d)?)));
        }
    }
    if let Some(uris) = &p.uri_hosts {
        let hosts: Vec<&str> = if uris.is_empty() {
            vec![NOTHING]
        } else {
            uris.iter().map(String::as_str).collect()
        };
        for h in hosts {
            subtrees.push(subtree(GeneralName::UniformResourceIdentifier(
                der::asn1::Ia5String::new(h)?,
            )));
        }
    }
    if let Some(ips) = &p.ips {
        let nets: Vec<ipnet::IpNet> = if ips.is_empty() {
            vec![
                ipnet::IpNet::from(ipnet::Ipv4Net::from(std::net::Ipv4Addr::UNSPECIFIED)),
                ipnet::IpNet::from(ipnet::Ipv6Net::from(std::net::Ipv6Addr::UNSPECIFIED)),
            ]
        } else {
            ips.clone()
        };
        for n in nets {
            let mut bytes = match n.network() {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            match n.netmask() {
                std::net::IpAddr::V4(m) => bytes.extend(m.octets()),
                std::net::IpAddr::V6(m) => bytes.extend(m.octets()),
            }
            subtrees.push(subtree(GeneralName::IpAddress(
                der::asn1::OctetString::new(bytes)?,
            )));
        }
    }
    // A rule that allows every name of every type constrains nothing.
    Ok((!subtrees.is_empty()).then_some(NameConstraints {
        permitted_subtrees: Some(subtrees),
        excluded_subtrees: None,
    }))
}

/// A fresh serial: 16 bytes, the issue time in milliseconds (6 bytes,
/// big-endian) then 10 bytes (80 bits) from the OS CSPRNG. The CA/Browser
/// Forum asks for at least 64 unpredictable bits; the time prefix makes
/// serials ascend, so the store's serial index grows at its end instead of
/// rewriting a random page per certificate. The first byte is non-zero
/// until the year 10889, so the encoding keeps all 16 bytes, and its top bit
/// is clear, so no sign byte is added.
pub fn new_serial() -> Result<SerialNumber, BuildError> {
    if let Some(bytes) = super::serial_hook::forced() {
        return Ok(SerialNumber::new(&bytes)?);
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| BuildError::Encoding(format!("the clock is before 1970: {e}")))?
        .as_millis() as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    getrandom::fill(&mut bytes[6..]).map_err(|e| BuildError::Encoding(e.to_string()))?;
    Ok(SerialNumber::new(&bytes)?)
}

fn push<E: ToExtension<Error = der::Error>>(
    exts: &mut Vec<Extension>,
    subject: &Name,
    e: E,
) -> Result<(), BuildError> {
    let ext = e.to_extension(subject, exts)?;
    exts.push(ext);
    Ok(())
}

/// The purposes of a leaf; for an intermediate, those its leaves may have
/// (the granting rule's: an EKU in a CA certificate constrains the chain),
/// and none when the rule gives none.
fn extended_key_usage(
    profile: LeafProfile,
    permitted: Option<&Permitted>,
) -> Option<ExtendedKeyUsage> {
    let ekus = match profile {
        LeafProfile::Client => vec![ID_KP_CLIENT_AUTH],
        LeafProfile::Server => vec![ID_KP_SERVER_AUTH],
        // X509-SVID.md §4.4: a leaf SVID is for TLS both ways.
        LeafProfile::Svid => vec![ID_KP_SERVER_AUTH, ID_KP_CLIENT_AUTH],
        LeafProfile::Intermediate => {
            let mut ekus = Vec::new();
            if let Some(p) = permitted {
                if p.client {
                    ekus.push(ID_KP_CLIENT_AUTH);
                }
                if p.server {
                    ekus.push(ID_KP_SERVER_AUTH);
                }
            }
            ekus
        }
    };
    (!ekus.is_empty()).then_some(ExtendedKeyUsage(ekus))
}

pub async fn build_leaf<S: DigestSigner + ?Sized>(
    signer: &S,
    issuer: &IssuerInfo,
    spec: LeafSpec,
) -> Result<Certificate, BuildError> {
    let subject = spec.subject;
    let mut exts = Vec::with_capacity(8);
    let ca = spec.profile == LeafProfile::Intermediate;
    push(
        &mut exts,
        &subject,
        (
            true,
            &BasicConstraints {
                ca,
                // An intermediate signs leaves only, never another CA.
                path_len_constraint: ca.then_some(0),
            },
        ),
    )?;
    let usage = if ca {
        KeyUsages::KeyCertSign | KeyUsages::CRLSign
    } else {
        let mut usage = KeyUsages::DigitalSignature.into();
        if spec.key_encipherment {
            usage |= KeyUsages::KeyEncipherment;
        }
        usage
    };
    push(&mut exts, &subject, &KeyUsage(usage))?;
    if let Some(eku) = extended_key_usage(spec.profile, spec.permitted.as_ref()) {
        push(&mut exts, &subject, &eku)?;
    }
    push(
        &mut exts,
        &subject,
        &SubjectKeyIdentifier::try_from(spec.spki.owned_to_ref())?,
    )?;
    push(
        &mut exts,
        &subject,
        &AuthorityKeyIdentifier {
            key_identifier: Some(der::asn1::OctetString::new(issuer.key_id.clone())?),
            ..Default::default()
        },
    )?;
    if !spec.general_names.is_empty() {
        // Critical exactly when the subject is empty (RFC 5280 §4.2.1.6);
        // x509-cert decides that from the subject.
        push(&mut exts, &subject, &SubjectAltName(spec.general_names))?;
    }
    if ca
        && let Some(permitted) = &spec.permitted
        && let Some(nc) = name_constraints(permitted)?
    {
        push(&mut exts, &subject, &nc)?;
    }
    if let Some(url) = &issuer.crl_url {
        push(
            &mut exts,
            &subject,
            &CrlDistributionPoints(vec![DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![
                    GeneralName::UniformResourceIdentifier(der::asn1::Ia5String::new(url)?),
                ])),
                reasons: None,
                crl_issuer: None,
            }]),
        )?;
    }
    let profile = Fixed {
        subject,
        issuer: issuer.name.clone(),
        extensions: exts,
    };
    let validity = Validity::new(
        Time::try_from(spec.not_before)?,
        Time::try_from(spec.not_after)?,
    );
    let builder = CertificateBuilder::new(profile, spec.serial, validity, spec.spki)?;
    sign_with(builder, signer).await
}

/// The CA's own certificate: self-signed, `CA=true`, signing certificates and CRLs.
pub async fn build_root<S: DigestSigner + ?Sized>(
    signer: &S,
    subject: Name,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Certificate, BuildError> {
    let spki = signer.public_key().clone();
    let ski = SubjectKeyIdentifier::try_from(spki.owned_to_ref())?;
    let mut exts = Vec::with_capacity(4);
    push(
        &mut exts,
        &subject,
        (
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
        ),
    )?;
    push(
        &mut exts,
        &subject,
        &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
    )?;
    push(&mut exts, &subject, &ski)?;
    push(
        &mut exts,
        &subject,
        &AuthorityKeyIdentifier {
            key_identifier: Some(ski.0.clone()),
            ..Default::default()
        },
    )?;
    let profile = Fixed {
        issuer: subject.clone(),
        subject,
        extensions: exts,
    };
    let validity = Validity::new(Time::try_from(not_before)?, Time::try_from(not_after)?);
    let builder = CertificateBuilder::new(profile, new_serial()?, validity, spki)?;
    sign_with(builder, signer).await
}

/// A CSR for the CA key, for an external root to sign (the CA then issues as
/// an intermediate).
pub async fn build_ca_csr<S: DigestSigner + ?Sized>(
    signer: &S,
    subject: Name,
) -> Result<x509_cert::request::CertReq, BuildError> {
    let mut builder = x509_cert::request::RequestBuilder::new(subject)?;
    builder.add_extension((
        true,
        &BasicConstraints {
            ca: true,
            path_len_constraint: None,
        },
    ))?;
    builder.add_extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))?;
    sign_with(builder, signer).await
}

/// DER of a certificate's TBS part, for logs and tests.
pub fn tbs_der(cert: &Certificate) -> Result<Vec<u8>, der::Error> {
    cert.tbs_certificate().to_der()
}
