//! The daemon's front: gRPC over a Unix socket. [`run`] takes an already
//! bound listener and a shutdown future, so tests and socket activation can
//! hand it their own.

pub mod bounds;
pub mod errors;
pub mod health;
pub mod http2_authority;
pub mod inflight;
pub mod replies;
pub mod requests;
pub mod sds;
pub mod service;
pub mod socket;
pub mod workload;
pub mod workload_api;
pub mod workload_jwt;

use std::future::Future;

use tokio::net::UnixListener;
use tonic::transport::Server;

use crate::proto::{
    FILE_DESCRIPTOR_SET, certificate_authority_server::CertificateAuthorityServer,
    certificate_requests_server::CertificateRequestsServer,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
}

pub struct ServeOptions {
    pub max_request_bytes: usize,
    /// Counts requests being served; shutdown waits on it.
    pub in_flight: inflight::InFlight,
    /// The signer's readiness; health follows it when given.
    pub readiness: Option<tokio::sync::watch::Receiver<crate::signing::Readiness>>,
    /// Connections, streams, deadlines: see [`bounds`].
    pub limits: bounds::Limits,
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish, and returns.
pub async fn run<F>(
    service: service::CaService,
    requests: requests::RequestsService,
    listener: UnixListener,
    opts: ServeOptions,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let limit = opts.max_request_bytes;
    let ca = CertificateAuthorityServer::new(service).max_decoding_message_size(limit);
    let requests = CertificateRequestsServer::new(requests).max_decoding_message_size(limit);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CertificateAuthorityServer<service::CaService>>()
        .await;
    health
        .set_serving::<CertificateRequestsServer<requests::RequestsService>>()
        .await;
    let follower = opts.readiness.map(|state| {
        use tonic::server::NamedService;
        tokio::spawn(health::follow_signer(
            health.clone(),
            state,
            vec![
                CertificateAuthorityServer::<service::CaService>::NAME,
                CertificateRequestsServer::<requests::RequestsService>::NAME,
            ],
        ))
    });
    // v1 for current tools; v1alpha for grpcurl < 1.9 and Python's client.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let in_flight = opts.in_flight.clone();
    let limits = opts.limits;
    let served = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(tower::util::MapFutureLayer::new(move |fut| {
            let guard = in_flight.enter();
            async move {
                let r = fut.await;
                drop(guard);
                r
            }
        }))
        .layer(bounds::BoundsLayer::new(limits.request_timeout))
        .layer(tower::util::MapResponseLayer::new(move |resp| {
            errors::rewrite_oversize(resp, limit)
        }))
        .add_service(ca)
        .add_service(requests)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(
            bounds::incoming(listener, limits, bounds::PeerPidfd::Skip),
            shutdown,
        )
        .await;
    if let Some(f) = follower {
        f.abort();
    }
    served?;
    Ok(())
}
