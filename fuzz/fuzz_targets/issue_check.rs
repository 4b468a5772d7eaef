//! The whole check of a GenerateClientCertificate request, from the bytes
//! of the protobuf message: decoding, request_id, profile, duration,
//! description, tags, the key or the CSR (signature included), the names,
//! and every decision up to the certificate to be signed. Nothing is
//! signed: `Issuer::check` and `Issuer::decide` never call the signer, and the one used here
//! refuses anyway; no token is involved.
#![no_main]

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use hsmca::{
    ca::CaChain,
    config::ProfilesConfig,
    issue::Issuer,
    profile::Limits,
    proto::GenerateClientCertificateRequest,
    server::service::issue_request,
    signing::{DigestSigner, SignError, SignFuture, SignatureScheme},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::{Certificate, der::DecodePem};

/// A self-signed P-256 CA certificate made by openssl for the fuzzer only
/// (its key was thrown away).
const CA_PEM: &str = include_str!("../ca.pem");

struct NoSigner(SubjectPublicKeyInfoOwned);

impl DigestSigner for NoSigner {
    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::EcdsaP256Sha256
    }
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.0
    }
    fn sign_digest(&self, _digest: Vec<u8>) -> SignFuture<'_> {
        Box::pin(async { Err(SignError::Stopped) })
    }
}

static ISSUER: LazyLock<Issuer> = LazyLock::new(|| {
    let cert = Certificate::from_pem(CA_PEM).expect("fuzz/ca.pem parses");
    let spki = cert.tbs_certificate().subject_public_key_info().clone();
    let ca = CaChain::from_certs(vec![cert], "fuzz/ca.pem").expect("fuzz/ca.pem is a CA");
    Issuer::new(
        Arc::new(NoSigner(spki)),
        Arc::new(ca),
        ProfilesConfig::default(),
        Duration::from_secs(60),
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(req) = GenerateClientCertificateRequest::decode(data) else {
        return;
    };
    // Every decision the issuer makes, under a policy that grants all.
    if let Ok(checked) = ISSUER.check(issue_request(req)) {
        let _ = ISSUER.decide(checked, Limits::default());
    }
});
