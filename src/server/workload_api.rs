//! The SPIFFE Workload API (`SpiffeWorkloadAPI`, SPIFFE_Workload_API.md):
//! every method requires the `workload.spiffe.io: true` header (so that a
//! browser or a confused proxy cannot be made to call it) and attests its
//! caller. The X.509 methods stream the caller's view of the identity
//! cache: the state at once, then one message per change; the JWT methods
//! are in `workload_jwt`.

use std::{pin::Pin, sync::Arc};

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    workload::caller,
    workload_jwt::{JwtApi, JwtBundlesStream},
};
use crate::{
    metrics::metrics,
    proto::workload::{
        JwtBundlesRequest, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
        ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid,
        X509svidRequest, X509svidResponse, spiffe_workload_api_server::SpiffeWorkloadApi,
    },
    workload::{Workload, X509State, X509Status, X509Watch},
};

/// The header every Workload API call must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

pub struct WorkloadApi {
    workload: Workload,
    jwt: JwtApi,
}

impl WorkloadApi {
    pub fn new(workload: Workload, jwt: JwtApi) -> Self {
        Self { workload, jwt }
    }
}

/// SPIFFE_Workload_Endpoint.md §4: a call without the header is refused.
pub fn check_security_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

pub type X509SvidStream = Pin<Box<dyn Stream<Item = Result<X509svidResponse, Status>> + Send>>;
pub type X509BundlesStream =
    Pin<Box<dyn Stream<Item = Result<X509BundlesResponse, Status>> + Send>>;

fn denied() -> Status {
    metrics().workload.denied.inc();
    Status::permission_denied("no registration entry matches the caller")
}

fn unavailable() -> Status {
    Status::unavailable(
        "no X509-SVID could be signed yet (the signer is unavailable); retry shortly",
    )
}

/// Waits for the first state that is not `Pending`, and refuses the call
/// when it is `Denied` or `Unavailable`.
async fn first_state(rx: &mut X509Watch) -> Result<Arc<X509State>, Status> {
    loop {
        let state = rx.borrow_and_update().clone();
        match state.status {
            X509Status::Ready => return Ok(state),
            X509Status::Denied => return Err(denied()),
            X509Status::Unavailable => return Err(unavailable()),
            X509Status::Pending => {}
        }
        if rx.changed().await.is_err() {
            return Err(Status::unavailable("the daemon is stopping"));
        }
    }
}

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.concat()
}

fn x509_response(state: &X509State) -> X509svidResponse {
    let bundle = concat(&state.bundle);
    X509svidResponse {
        svids: state
            .svids
            .iter()
            .map(|s| X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: concat(&s.chain),
                x509_svid_key: s.key.to_vec(),
                bundle: bundle.clone(),
                hint: s.hint.clone(),
            })
            .collect(),
        crl: state.crl.iter().map(|c| c.to_vec()).collect(),
        federated_bundles: Default::default(),
    }
}

/// One stream's loop: sends `first`, then every later state that differs,
/// until the client goes away or the caller loses its entries. A client
/// that does not read holds up only its own loop (each reads the cache's
/// watch channel on its own, and skips states it was too slow for).
fn stream_loop<R: Send + 'static>(
    api: &'static str,
    mut rx: X509Watch,
    first: Arc<X509State>,
    render: impl Fn(&X509State, Option<&X509State>) -> Option<R> + Send + 'static,
) -> ReceiverStream<Result<R, Status>> {
    let (tx, out) = mpsc::channel(1);
    let guard = metrics().workload.stream(api);
    tokio::spawn(async move {
        let _guard = guard;
        let mut last = first.clone();
        if let Some(msg) = render(&first, None)
            && tx.send(Ok(msg)).await.is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
            let state = rx.borrow_and_update().clone();
            match state.status {
                X509Status::Denied => {
                    let _ = tx.send(Err(denied())).await;
                    return;
                }
                // Pending or Unavailable after a first SVID: a changed entry
                // is being signed; the client keeps what it has meanwhile.
                X509Status::Pending | X509Status::Unavailable => continue,
                X509Status::Ready => {}
            }
            if let Some(msg) = render(&state, Some(&last))
                && tx.send(Ok(msg)).await.is_err()
            {
                return;
            }
            last = state;
        }
    });
    ReceiverStream::new(out)
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = X509SvidStream;
    type FetchX509BundlesStream = X509BundlesStream;
    type FetchJWTBundlesStream = JwtBundlesStream;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_security_header(&req)?;
        let who = caller(&req, &self.workload).await?;
        let mut rx = self.workload.subscribe(&who);
        let first = first_state(&mut rx).await?;
        let stream = stream_loop("workload", rx, first, |state, _| Some(x509_response(state)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_security_header(&req)?;
        let who = caller(&req, &self.workload).await?;
        let mut rx = self.workload.subscribe(&who);
        let first = first_state(&mut rx).await?;
        let td = self.workload.trust_domain().to_string();
        let stream = stream_loop("workload", rx, first, move |state, last| {
            let same = last.is_some_and(|l| {
                Arc::ptr_eq(&l.bundle, &state.bundle)
                    && match (&l.crl, &state.crl) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            (!same).then(|| X509BundlesResponse {
                crl: state.crl.iter().map(|c| c.to_vec()).collect(),
                bundles: [(td.clone(), concat(&state.bundle))].into_iter().collect(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_security_header(&req)?;
        let who = caller(&req, &self.workload).await?;
        let resp = self.jwt.fetch_jwt_svid(who, req.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_security_header(&req)?;
        let who = caller(&req, &self.workload).await?;
        let stream = self.jwt.fetch_jwt_bundles(who, req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_security_header(&req)?;
        let who = caller(&req, &self.workload).await?;
        let resp = self.jwt.validate_jwt_svid(who, req.into_inner()).await?;
        Ok(Response::new(resp))
    }
}
