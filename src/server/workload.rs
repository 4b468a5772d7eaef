//! The workload socket: a second gRPC server, beside the API socket, for
//! local workloads that are identified by attestation rather than by the
//! socket's file mode. Its services are built in [`routes`], one line each;
//! every call attests its caller with [`caller`] first. Connections get the
//! same bounds and the same `:authority` fix as the API socket.

use std::future::Future;

use tokio::net::UnixListener;
use tonic::{
    Request, Status,
    service::{Routes, RoutesBuilder},
    transport::Server,
};

use super::{ServeError, bounds, service::peer, workload_api::WorkloadApi, workload_jwt::JwtApi};
use crate::{
    proto::workload::{FILE_DESCRIPTOR_SET, spiffe_workload_api_server::SpiffeWorkloadApiServer},
    workload::{Caller, ConnectedPeer, Workload},
};

/// Largest request message on the workload socket: its requests are tiny
/// (an audience list, a JWT to validate).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What the workload socket serves.
pub struct WorkloadServices {
    pub workload: Workload,
    pub jwt: JwtApi,
}

/// The attested caller of a request on the workload socket (the kernel's
/// SO_PEERCRED, then `/proc`; see `workload::attest`).
pub async fn caller<T>(req: &Request<T>, workload: &Workload) -> Result<Caller, Status> {
    let peer = peer(req)?;
    let conn = req.extensions().get::<bounds::ConnInfo>();
    Ok(workload
        .attest(ConnectedPeer {
            peer,
            connected_for: conn.map(bounds::ConnInfo::connected_for),
            pidfd: conn.and_then(bounds::ConnInfo::pidfd),
        })
        .await?)
}

/// Every service of the workload socket: the SPIFFE Workload API, Envoy
/// SDS, health and reflection. A new service is one `add_service` line here.
pub async fn routes(services: WorkloadServices) -> Result<Routes, ServeError> {
    let WorkloadServices { workload, jwt } = services;
    let mut routes = RoutesBuilder::default();
    let sds = super::sds::service(workload.clone());
    let api = SpiffeWorkloadApiServer::new(WorkloadApi::new(workload, jwt))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SpiffeWorkloadApiServer<WorkloadApi>>()
        .await;
    health.set_serving::<super::sds::SdsServer>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    routes
        .add_service(api)
        .add_service(sds)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);
    Ok(routes.routes())
}

/// Serves the workload socket until `shutdown` resolves.
pub async fn run<F>(
    services: WorkloadServices,
    listener: UnixListener,
    limits: bounds::Limits,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let routes = routes(services).await?;
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(bounds::BoundsLayer::new(limits.request_timeout))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            bounds::incoming(listener, limits, bounds::PeerPidfd::Take),
            shutdown,
        )
        .await?;
    Ok(())
}
