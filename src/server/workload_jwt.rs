//! The JWT-SVID half of the SPIFFE Workload API. The security header has
//! been checked and the caller attested before any of these is called.
//! Every method needs a registration entry for the caller: JWT-SVIDs are
//! signed for the caller's own SPIFFE IDs only, and the JWT bundle and
//! validation are for registered workloads like the X.509 bundle.

use std::{pin::Pin, sync::Arc};

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use crate::{
    jwt::{JwtAuthority, JwtBundle},
    metrics::metrics,
    proto::workload::{
        JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
        ValidateJwtsvidRequest, ValidateJwtsvidResponse,
    },
    spiffe_id::SpiffeId,
    workload::{Caller, Workload, X509Status},
};

/// The stream of JWT bundles (JWKS documents by trust domain).
pub type JwtBundlesStream =
    Pin<Box<dyn Stream<Item = Result<JwtBundlesResponse, Status>> + Send + 'static>>;

/// JWT-SVIDs: what they are signed with, and the workload identities.
pub struct JwtApi {
    workload: Workload,
    /// `None` only when the daemon was built without a JWT key (tests of
    /// the X.509 side); the JWT methods then answer UNAVAILABLE.
    jwt: Option<Arc<JwtAuthority>>,
}

fn denied() -> Status {
    metrics().workload.denied.inc();
    Status::permission_denied("no registration entry matches the caller")
}

impl JwtApi {
    pub fn new(workload: Workload, jwt: Option<Arc<JwtAuthority>>) -> Self {
        Self { workload, jwt }
    }

    fn authority(&self) -> Result<&Arc<JwtAuthority>, Status> {
        self.jwt
            .as_ref()
            .ok_or_else(|| Status::unavailable("this daemon has no JWT-SVID key"))
    }

    pub async fn fetch_jwt_svid(
        &self,
        caller: Caller,
        req: JwtsvidRequest,
    ) -> Result<JwtsvidResponse, Status> {
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("an audience must not be empty"));
        }
        let wanted = if req.spiffe_id.is_empty() {
            None
        } else {
            Some(SpiffeId::parse(&req.spiffe_id).map_err(|e| {
                Status::invalid_argument(format!("spiffe_id {:?}: {e}", req.spiffe_id))
            })?)
        };
        let jwt = self.authority()?;
        let mut identities = self.workload.identities(&caller);
        if identities.is_empty() {
            return Err(denied());
        }
        if let Some(id) = &wanted {
            identities.retain(|i| &i.spiffe_id == id);
            if identities.is_empty() {
                metrics().workload.denied.inc();
                return Err(Status::permission_denied(format!(
                    "the caller has no SVID for {id}"
                )));
            }
        }
        let ids: Vec<SpiffeId> = identities.iter().map(|i| i.spiffe_id.clone()).collect();
        let tokens = jwt.mint(&ids, &req.audience).await?;
        tracing::debug!(caller = %caller.describe(), svids = tokens.len(), "JWT-SVIDs signed");
        Ok(JwtsvidResponse {
            svids: identities
                .into_iter()
                .zip(tokens)
                .map(|(i, svid)| Jwtsvid {
                    spiffe_id: i.spiffe_id.to_string(),
                    svid,
                    hint: i.hint,
                })
                .collect(),
        })
    }

    /// The JWKS at once, then again whenever it changes (a JWT key leaving
    /// after a rotation). A caller whose entry disappears gets
    /// PERMISSION_DENIED on the stream.
    pub async fn fetch_jwt_bundles(
        &self,
        caller: Caller,
        _req: JwtBundlesRequest,
    ) -> Result<JwtBundlesStream, Status> {
        let jwt = self.authority()?;
        if self.workload.identities(&caller).is_empty() {
            return Err(denied());
        }
        let td = self.workload.trust_domain().to_string();
        let mut bundles = jwt.bundle();
        let mut entries = self.workload.subscribe(&caller);
        let render = move |b: &JwtBundle| JwtBundlesResponse {
            bundles: [(td.clone(), b.jwks.clone())].into_iter().collect(),
        };
        let (tx, out) = mpsc::channel(1);
        let guard = metrics().workload.stream("workload");
        tokio::spawn(async move {
            let _guard = guard;
            let first = bundles.borrow_and_update().clone();
            if tx.send(Ok(render(&first))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    r = bundles.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let b = bundles.borrow_and_update().clone();
                        if tx.send(Ok(render(&b))).await.is_err() {
                            return;
                        }
                    }
                    r = entries.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let denied_now = entries.borrow_and_update().status == X509Status::Denied;
                        if denied_now {
                            let _ = tx.send(Err(denied())).await;
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(out)))
    }

    pub async fn validate_jwt_svid(
        &self,
        caller: Caller,
        req: ValidateJwtsvidRequest,
    ) -> Result<ValidateJwtsvidResponse, Status> {
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let jwt = self.authority()?;
        if self.workload.identities(&caller).is_empty() {
            return Err(denied());
        }
        let valid = jwt.validate(&req.svid, &req.audience)?;
        Ok(ValidateJwtsvidResponse {
            spiffe_id: valid.spiffe_id.to_string(),
            claims: Some(to_struct(valid.claims)),
        })
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
