//! The workload endpoint's part of `hsmca serve`: the identity cache, its
//! socket and its server, when `workload.socket` is set.

use std::sync::Arc;

use super::CliResult;
use crate::{
    ca::CaChain,
    config::Config,
    crl::CrlPublisher,
    issue::Issuer,
    server::{
        socket::{self, BoundSocket, SocketFile},
        workload::{self as server, WorkloadServices},
        workload_jwt::JwtApi,
    },
    store::Store,
    workload::Workload,
};

/// The running endpoint; dropping it stops it and removes its socket.
pub struct WorkloadEndpoint {
    pub workload: Workload,
    tasks: tokio::task::JoinSet<()>,
    _socket: SocketFile,
}

impl Drop for WorkloadEndpoint {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Starts the endpoint if the configuration has one.
pub async fn start(
    cfg: &Config,
    issuer: Arc<Issuer>,
    store: Arc<dyn Store>,
    ca: &CaChain,
    crl: Arc<CrlPublisher>,
) -> CliResult<Option<WorkloadEndpoint>> {
    let Some(path) = cfg.workload.socket.clone() else {
        return Ok(None);
    };
    socket::check_socket_dir(&path).map_err(|e| format!("workload.socket: {e}"))?;
    let workload = Workload::new(&cfg.workload, issuer, store, ca)?;
    let bound = BoundSocket::bind(&path, cfg.workload.socket_mode_bits())
        .map_err(|e| format!("workload.socket: {e}"))?;
    let (listener, file) = bound.into_parts();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(workload.clone().run(crl));
    let services = WorkloadServices {
        workload: workload.clone(),
        jwt: JwtApi::new(workload.clone()),
    };
    let limits = cfg.server.limits();
    tasks.spawn(async move {
        if let Err(e) = server::run(services, listener, limits, std::future::pending()).await {
            tracing::error!(error = %e, "the workload socket stopped serving");
        }
    });
    tracing::info!(
        socket = %path.display(),
        trust_domain = %cfg.workload.trust_domain,
        entries = cfg.workload.entries.len(),
        "serving the SPIFFE Workload API"
    );
    Ok(Some(WorkloadEndpoint {
        workload,
        tasks,
        _socket: file,
    }))
}
