//! The whole check of a GenerateClientCertificate request, from the bytes
//! of the protobuf message: decoding, request_id, profile, duration,
//! description, tags, the key or the CSR (signature included), the names,
//! and every decision up to the certificate to be signed. Nothing is
//! signed: `Issuer::check` never calls the signer, and the one used here
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
    proto::GenerateClientCertificateRequest,
    signing::{DigestSigner, SignError, SignatureScheme},
    token::TokenError,
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
    async fn sign_digest(&self, _digest: Vec<u8>) -> Result<Vec<u8>, SignError> {
        Err(SignError::Token(TokenError::Stopped))
    }
}

static ISSUER: LazyLock<Issuer<NoSigner>> = LazyLock::new(|| {
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
    let _ = ISSUER.check(req);
});
