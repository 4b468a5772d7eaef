//! The JWT-SVID half of the SPIFFE Workload API. The security header has
//! been checked and the caller attested before any of these is called.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::Status;

use crate::{
    proto::workload::{
        JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse,
        ValidateJwtsvidRequest, ValidateJwtsvidResponse,
    },
    workload::{Caller, Workload},
};

/// The stream of JWT bundles (JWKS documents by trust domain).
pub type JwtBundlesStream =
    Pin<Box<dyn Stream<Item = Result<JwtBundlesResponse, Status>> + Send + 'static>>;

/// JWT-SVIDs: what they are signed with, and the workload identities.
pub struct JwtApi {
    #[allow(dead_code)]
    workload: Workload,
}

impl JwtApi {
    pub fn new(workload: Workload) -> Self {
        Self { workload }
    }

    pub async fn fetch_jwt_svid(
        &self,
        _caller: Caller,
        _req: JwtsvidRequest,
    ) -> Result<JwtsvidResponse, Status> {
        Err(Status::unimplemented("JWT-SVIDs are not served yet"))
    }

    pub async fn fetch_jwt_bundles(
        &self,
        _caller: Caller,
        _req: JwtBundlesRequest,
    ) -> Result<JwtBundlesStream, Status> {
        Err(Status::unimplemented("JWT bundles are not served yet"))
    }

    pub async fn validate_jwt_svid(
        &self,
        _caller: Caller,
        _req: ValidateJwtsvidRequest,
    ) -> Result<ValidateJwtsvidResponse, Status> {
        Err(Status::unimplemented(
            "JWT-SVID validation is not served yet",
        ))
    }
}
