//! Envoy's Secret Discovery Service on the workload socket
//! (`envoy.service.secret.v3.SecretDiscoveryService`): the tonic side of
//! `sds`. Each call attests its caller like the Workload API (Envoy sends
//! no SPIFFE security header, so none is asked for) and watches the same
//! per-identity state; `sds::protocol` decides when a stream answers and
//! `sds::secrets` what it answers. `DeltaSecrets` is not served.

use std::{pin::Pin, sync::Arc};

use envoy_types::pb::envoy::service::{
    discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    },
    secret::v3::secret_discovery_service_server::{
        SecretDiscoveryService, SecretDiscoveryServiceServer,
    },
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::workload::caller;
use crate::{
    metrics::metrics,
    sds::{
        protocol::{self, Decision, Reply, Why},
        secrets::{self, Identity, Svid},
    },
    workload::{Caller, Workload, X509State, X509Status, X509Watch},
};

/// Largest request message: Envoy's first request of a stream carries its
/// node description, whose list of compiled-in extensions alone runs to
/// tens of kilobytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

pub struct Sds {
    workload: Workload,
}

pub type SdsServer = SecretDiscoveryServiceServer<Sds>;

/// The service, ready for the workload socket's router.
pub fn service(workload: Workload) -> SdsServer {
    SecretDiscoveryServiceServer::new(Sds { workload }).max_decoding_message_size(MAX_REQUEST_BYTES)
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn denied() -> Status {
    metrics().workload.denied.inc();
    Status::permission_denied("no registration entry matches the caller")
}

/// Waits for the caller's first state that is not `Pending`; refuses the
/// call when no entry matches or no SVID could be signed yet.
async fn first_state(rx: &mut X509Watch) -> Result<Arc<X509State>, Status> {
    loop {
        let state = rx.borrow_and_update().clone();
        match state.status {
            X509Status::Ready => return Ok(state),
            X509Status::Denied => return Err(denied()),
            X509Status::Unavailable => {
                return Err(Status::unavailable(
                    "no X509-SVID could be signed yet (the signer is unavailable); retry shortly",
                ));
            }
            X509Status::Pending => {}
        }
        if rx.changed().await.is_err() {
            return Err(Status::unavailable("the daemon is stopping"));
        }
    }
}

/// What the caller may be served, from its current state.
fn identity<'a>(state: &'a X509State, trust_domain_id: &str) -> Identity<'a> {
    Identity {
        trust_domain_id: trust_domain_id.to_owned(),
        svids: state
            .svids
            .iter()
            .map(|s| Svid {
                spiffe_id: s.spiffe_id.to_string(),
                chain: &s.chain,
                key: &s.key,
            })
            .collect(),
        bundle: &state.bundle,
    }
}

fn build<'n>(
    state: &X509State,
    trust_domain_id: &str,
    names: impl IntoIterator<Item = &'n str>,
    reply: &Reply,
) -> Result<DiscoveryResponse, Status> {
    let chosen = secrets::select(&identity(state, trust_domain_id), names)?;
    Ok(secrets::response(reply, chosen))
}

/// The wire request as the protocol sees it.
fn request_view(m: DiscoveryRequest) -> protocol::Request {
    protocol::Request {
        version_info: m.version_info,
        response_nonce: m.response_nonce,
        resource_names: m.resource_names,
        error_detail: m.error_detail.map(|e| {
            if e.message.is_empty() {
                format!("code {}", e.code)
            } else {
                e.message
            }
        }),
    }
}

/// A prefix for a stream's nonces (or a FetchSecrets nonce): 12 random hex
/// digits, so that nonces of different streams never match.
fn nonce_tag() -> String {
    let mut b = [0u8; 6];
    // The OS CSPRNG does not fail on Linux once booted; a fixed tag would
    // still be correct within one stream.
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

fn log_quiet(who: &Caller, why: &Why) {
    let caller = who.describe();
    match why {
        Why::Nack { detail } => tracing::warn!(
            %caller,
            detail = ?detail.as_deref().unwrap_or("(none)"),
            "SDS client rejected the secrets sent (NACK); it keeps its previous ones until the next rotation"
        ),
        Why::StaleNonce { expected } => {
            tracing::debug!(%caller, %expected, "SDS request with a stale nonce ignored");
        }
        other => tracing::trace!(%caller, why = ?other, "SDS request needs no response"),
    }
}

/// One `StreamSecrets` stream: requests and state changes in, responses
/// out, until the client goes, a request is refused or the caller loses
/// its entries. A client that does not read holds up only this loop.
async fn stream_loop(
    who: Caller,
    mut inbound: Streaming<DiscoveryRequest>,
    mut rx: X509Watch,
    mut state: Arc<X509State>,
    trust_domain_id: String,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let _open = metrics().workload.stream("sds");
    let mut stream = protocol::Stream::new(nonce_tag());
    stream.on_state(state.version);
    loop {
        let decision = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if let Err(e) = secrets::check_type_url(&m.type_url) {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    stream.on_request(&request_view(m))
                }
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(caller = %who.describe(), %status, "SDS stream ended by the client");
                    return;
                }
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = rx.borrow_and_update().clone();
                match next.status {
                    X509Status::Denied => {
                        let _ = tx.send(Err(denied())).await;
                        return;
                    }
                    // A changed entry is being signed; the client keeps
                    // what it has meanwhile.
                    X509Status::Pending | X509Status::Unavailable => continue,
                    X509Status::Ready => {}
                }
                state = next;
                stream.on_state(state.version)
            },
            () = tx.closed() => return,
        };
        let reply = match decision {
            Decision::Respond(reply) => reply,
            Decision::Quiet(why) => {
                log_quiet(&who, &why);
                continue;
            }
        };
        match build(&state, &trust_domain_id, stream.names(), &reply) {
            Ok(resp) => {
                tracing::debug!(
                    caller = %who.describe(),
                    version = %reply.version,
                    nonce = %reply.nonce,
                    secrets = resp.resources.len(),
                    "SDS response"
                );
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
                stream.sent(&reply);
            }
            Err(status) => {
                tracing::info!(caller = %who.describe(), %status, "SDS request refused");
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "DeltaSecrets is not served; use StreamSecrets (Envoy's default for SDS)",
        ))
    }

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let who = caller(&req, &self.workload).await?;
        let mut rx = self.workload.subscribe(&who);
        let state = first_state(&mut rx).await?;
        let td = self.workload.trust_domain().to_string();
        let (tx, out) = mpsc::channel(1);
        tokio::spawn(stream_loop(who, req.into_inner(), rx, state, td, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        secrets::check_type_url(&req.get_ref().type_url)?;
        let who = caller(&req, &self.workload).await?;
        let mut rx = self.workload.subscribe(&who);
        let state = first_state(&mut rx).await?;
        let td = self.workload.trust_domain().to_string();
        let reply = Reply {
            version: state.version.to_string(),
            nonce: nonce_tag(),
        };
        let m = req.into_inner();
        let resp = build(
            &state,
            &td,
            m.resource_names.iter().map(String::as_str),
            &reply,
        )
        .inspect_err(|status| {
            tracing::info!(caller = %who.describe(), %status, "SDS fetch refused");
        })?;
        Ok(Response::new(resp))
    }
}
