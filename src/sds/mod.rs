//! Envoy's Secret Discovery Service (`envoy.service.secret.v3`) on the
//! workload socket: the caller's SVIDs and the trust bundle as Envoy
//! `Secret`s, pushed again on every rotation. [`protocol`] decides when to
//! answer (xDS ACK/NACK and nonce rules), [`secrets`] what to answer.

pub mod protocol;
pub mod secrets;

/// Why a secret request is refused (mapped to gRPC codes in
/// `server::errors`).
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error(
        "the caller may not have the secret(s) {}{}; it may ask for {}",
        quoted(names),
        if *more > 0 { format!(" and {more} more") } else { String::new() },
        quoted(served)
    )]
    UnknownNames {
        /// The first few names refused (each shortened), so that the
        /// message stays small whatever the request held.
        names: Vec<String>,
        /// How many more were refused.
        more: usize,
        served: Vec<String>,
    },
    #[error(
        "type_url {0:?} is not served here; ask for type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    )]
    TypeUrl(String),
    #[error("PEM encoding: {0}")]
    Pem(#[from] der::pem::Error),
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
