//! From the caller's X.509 identity state to Envoy `Secret`s: which names a
//! caller may ask for, and the secrets they stand for.
//!
//! - `default`, and each SVID's SPIFFE ID → a `tls_certificate` (the chain,
//!   leaf first, and the PKCS#8 key, both inline PEM); `default` is the
//!   caller's first SVID;
//! - `ROOTCA`, and the trust domain's ID (`spiffe://<td>`) → a
//!   `validation_context` whose `trusted_ca` is the bundle (inline PEM);
//! - no names → every SVID under its SPIFFE ID and the bundle under the
//!   trust domain's ID (what SPIRE's agent answers too, so Envoy
//!   configurations written for it work unchanged).
//!
//! A name outside these is refused as a whole request, naming it: Envoy
//! would otherwise wait for a secret that never comes.

use der::pem::LineEnding;
use envoy_types::pb::{
    envoy::{
        config::core::v3::{DataSource, data_source::Specifier},
        extensions::transport_sockets::tls::v3::{
            CertificateValidationContext, Secret, TlsCertificate, secret,
        },
        service::discovery::v3::DiscoveryResponse,
    },
    google::protobuf::Any,
};
use prost::{Message, Name};
use zeroize::Zeroizing;

use super::{SdsError, protocol::Reply};

/// The name of the caller's first SVID.
pub const DEFAULT_SVID: &str = "default";
/// The name of the trust domain's bundle.
pub const ROOT_CA: &str = "ROOTCA";

/// One SVID as the caller holds it.
#[derive(Clone)]
pub struct Svid<'a> {
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub chain: &'a [Vec<u8>],
    /// PKCS#8 DER.
    pub key: &'a [u8],
}

/// What one caller may be served.
#[derive(Clone)]
pub struct Identity<'a> {
    /// `spiffe://<trust domain>`.
    pub trust_domain_id: String,
    /// The default first.
    pub svids: Vec<Svid<'a>>,
    /// The trust domain's CA certificates, DER.
    pub bundle: &'a [Vec<u8>],
}

/// How many refused names an error spells out.
const MAX_NAMED: usize = 5;

/// The type URL of every resource served, and the only one a request may
/// name.
pub fn type_url() -> String {
    Secret::type_url()
}

/// The request's type URL is empty (Envoy leaves it out of FetchSecrets at
/// times) or the `Secret` one.
pub fn check_type_url(url: &str) -> Result<(), SdsError> {
    if url.is_empty() || url == type_url() {
        Ok(())
    } else {
        Err(SdsError::TypeUrl(shorten(url)))
    }
}

/// The secrets for `names` (empty: all of the caller's), in the order
/// asked, each once.
pub fn select<'n>(
    id: &Identity<'_>,
    names: impl IntoIterator<Item = &'n str>,
) -> Result<Vec<Secret>, SdsError> {
    let mut names: Vec<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(*n));
    if names.is_empty() {
        let mut out: Vec<Secret> = id
            .svids
            .iter()
            .map(|s| tls_certificate(&s.spiffe_id, s))
            .collect::<Result<_, _>>()?;
        out.push(validation_context(&id.trust_domain_id, id.bundle));
        return Ok(out);
    }
    let mut out = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in names {
        if name == ROOT_CA || name == id.trust_domain_id {
            out.push(validation_context(name, id.bundle));
        } else if let Some(svid) = find_svid(id, name) {
            out.push(tls_certificate(name, svid)?);
        } else {
            unknown.push(name);
        }
    }
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(SdsError::UnknownNames {
            names: unknown.iter().take(MAX_NAMED).map(|n| shorten(n)).collect(),
            more: unknown.len().saturating_sub(MAX_NAMED),
            served: served_names(id),
        })
    }
}

fn find_svid<'a>(id: &'a Identity<'a>, name: &str) -> Option<&'a Svid<'a>> {
    if name == DEFAULT_SVID {
        id.svids.first()
    } else {
        id.svids.iter().find(|s| s.spiffe_id == name)
    }
}

/// The names this caller may ask for, for the error that refuses others.
fn served_names(id: &Identity<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if !id.svids.is_empty() {
        out.push(DEFAULT_SVID.to_owned());
    }
    out.extend(id.svids.iter().map(|s| s.spiffe_id.clone()));
    out.push(ROOT_CA.to_owned());
    out.push(id.trust_domain_id.clone());
    out
}

/// The response carrying `secrets`, with the stream's version and nonce.
pub fn response(reply: &Reply, secrets: Vec<Secret>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: reply.version.clone(),
        resources: secrets
            .into_iter()
            .map(|s| Any {
                type_url: type_url(),
                value: s.encode_to_vec(),
            })
            .collect(),
        type_url: type_url(),
        nonce: reply.nonce.clone(),
        ..Default::default()
    }
}

fn tls_certificate(name: &str, svid: &Svid<'_>) -> Result<Secret, SdsError> {
    let chain = pem_certificates(svid.chain);
    // The key's PEM is zeroized once copied into the message; the message
    // itself is encoded and dropped by the transport.
    let key = Zeroizing::new(der::pem::encode_string(
        "PRIVATE KEY",
        LineEnding::LF,
        svid.key,
    )?);
    Ok(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain.into_bytes())),
            private_key: Some(inline(key.as_bytes().to_vec())),
            ..Default::default()
        })),
    })
}

fn validation_context(name: &str, bundle: &[Vec<u8>]) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(pem_certificates(bundle).into_bytes())),
                ..Default::default()
            },
        )),
    }
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}

fn pem_certificates(ders: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for d in ders {
        // Encoding bytes as PEM fails only on a length overflow.
        if let Ok(p) = der::pem::encode_string("CERTIFICATE", LineEnding::LF, d) {
            out.push_str(&p);
        }
    }
    out
}

/// A client-chosen string as it appears in an error: at most 200
/// characters.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "spiffe://hsmca.test/user/alice";
    const ID_B: &str = "spiffe://hsmca.test/web";

    fn identity<'a>(chains: &'a [Vec<Vec<u8>>], bundle: &'a [Vec<u8>]) -> Identity<'a> {
        Identity {
            trust_domain_id: "spiffe://hsmca.test".into(),
            svids: vec![
                Svid {
                    spiffe_id: ID_A.into(),
                    chain: &chains[0],
                    key: b"key-a",
                },
                Svid {
                    spiffe_id: ID_B.into(),
                    chain: &chains[1],
                    key: b"key-b",
                },
            ],
            bundle,
        }
    }

    fn fixtures() -> (Vec<Vec<Vec<u8>>>, Vec<Vec<u8>>) {
        (
            vec![
                vec![b"leaf-a".to_vec(), b"ca".to_vec()],
                vec![b"leaf-b".to_vec(), b"ca".to_vec()],
            ],
            vec![b"ca".to_vec()],
        )
    }

    fn data(d: &Option<DataSource>) -> String {
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    fn tls(s: &Secret) -> (String, String) {
        match &s.r#type {
            Some(secret::Type::TlsCertificate(t)) => {
                (data(&t.certificate_chain), data(&t.private_key))
            }
            _ => panic!("{} is not a tls_certificate", s.name),
        }
    }

    fn trusted_ca(s: &Secret) -> String {
        match &s.r#type {
            Some(secret::Type::ValidationContext(v)) => data(&v.trusted_ca),
            _ => panic!("{} is not a validation_context", s.name),
        }
    }

    fn pem(label: &str, der: &[u8]) -> String {
        der::pem::encode_string(label, LineEnding::LF, der).unwrap()
    }

    #[test]
    fn default_is_the_first_svid_as_pem() {
        let (chains, bundle) = fixtures();
        let id = identity(&chains, &bundle);
        let got = select(&id, ["default"]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "default");
        let (chain, key) = tls(&got[0]);
        assert_eq!(
            chain,
            pem("CERTIFICATE", b"leaf-a") + &pem("CERTIFICATE", b"ca")
        );
        assert_eq!(key, pem("PRIVATE KEY", b"key-a"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }

    #[test]
    fn spiffe_ids_and_bundle_names() {
        let (chains, bundle) = fixtures();
        let id = identity(&chains, &bundle);
        let got = select(&id, [ID_B, "ROOTCA", "spiffe://hsmca.test", ID_B]).unwrap();
        let names: Vec<_> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [ID_B, "ROOTCA", "spiffe://hsmca.test"]);
        assert_eq!(tls(&got[0]).1, pem("PRIVATE KEY", b"key-b"));
        assert_eq!(trusted_ca(&got[1]), pem("CERTIFICATE", b"ca"));
        assert_eq!(trusted_ca(&got[2]), trusted_ca(&got[1]));
    }

    #[test]
    fn no_names_means_all_of_the_callers() {
        let (chains, bundle) = fixtures();
        let id = identity(&chains, &bundle);
        for names in [vec![], vec![""]] {
            let got = select(&id, names).unwrap();
            let names: Vec<_> = got.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, [ID_A, ID_B, "spiffe://hsmca.test"]);
        }
    }

    #[test]
    fn names_the_caller_may_not_have_are_refused_by_name() {
        let (chains, bundle) = fixtures();
        let id = identity(&chains, &bundle);
        let long = "x".repeat(10_000);
        for (names, want) in [
            (
                vec!["default", "spiffe://hsmca.test/other"],
                "spiffe://hsmca.test/other",
            ),
            (vec!["rootca"], "rootca"),
            (vec!["spiffe://other.test"], "spiffe://other.test"),
            (vec![long.as_str()], "xxxxxxxx…"),
        ] {
            let e = select(&id, names).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, SdsError::UnknownNames { .. }), "{e:?}");
            assert!(msg.contains(want), "{msg}");
            assert!(msg.len() < 1000, "{msg}");
            assert!(
                msg.contains(ID_A),
                "the error lists what may be asked: {msg}"
            );
        }
    }

    #[test]
    fn many_refused_names_give_a_short_error() {
        let (chains, bundle) = fixtures();
        let id = identity(&chains, &bundle);
        let names: Vec<String> = (0..10_000).map(|i| format!("name-{i:05}")).collect();
        let e = select(&id, names.iter().map(String::as_str)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"name-00000\""), "{msg}");
        assert!(msg.contains("\"name-00004\" and 9995 more"), "{msg}");
        assert!(!msg.contains("name-00005"), "{msg}");
        assert!(msg.len() < 1000, "{msg}");
    }

    #[test]
    fn a_caller_without_svids_gets_only_the_bundle() {
        let (_, bundle) = fixtures();
        let id = Identity {
            trust_domain_id: "spiffe://hsmca.test".into(),
            svids: vec![],
            bundle: &bundle,
        };
        assert!(select(&id, ["default"]).is_err());
        assert_eq!(select(&id, []).unwrap().len(), 1);
    }

    #[test]
    fn response_wraps_secrets_in_any_with_version_and_nonce() {
        let (chains, bundle) = fixtures();
        let id = identity(&chains, &bundle);
        let secrets = select(&id, ["default", "ROOTCA"]).unwrap();
        let reply = Reply {
            version: "3".into(),
            nonce: "n-1".into(),
        };
        let r = response(&reply, secrets.clone());
        assert_eq!(r.version_info, "3");
        assert_eq!(r.nonce, "n-1");
        assert_eq!(
            r.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        );
        assert_eq!(r.resources.len(), 2);
        for (any, s) in r.resources.iter().zip(&secrets) {
            assert_eq!(any.type_url, r.type_url);
            assert_eq!(&Secret::decode(any.value.as_slice()).unwrap(), s);
        }
    }

    #[test]
    fn type_url_must_be_the_secret_one_or_empty() {
        assert!(check_type_url("").is_ok());
        assert!(check_type_url(&type_url()).is_ok());
        let e = check_type_url("type.googleapis.com/envoy.config.cluster.v3.Cluster").unwrap_err();
        assert!(
            e.to_string().contains("envoy.config.cluster.v3.Cluster"),
            "{e}"
        );
    }
}
