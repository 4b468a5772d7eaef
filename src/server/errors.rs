//! The one place where errors become gRPC statuses (and where gRPC codes
//! get their names, for logs, metrics and the CLI). Clients get a message
//! they can act on; internal detail (PKCS#11 return values) goes to the log.

use tonic::{Code, Status};

use crate::{
    issue::{IssueError, certificate::BuildError},
    jwt::{JwtError, ValidateError},
    policy::PolicyError,
    requests::RequestError,
    sds::SdsError,
    signing::SignError,
    store::StoreError,
    workload::AttestError,
};

impl From<AttestError> for Status {
    fn from(e: AttestError) -> Self {
        match e {
            AttestError::Proc(_) => {
                tracing::error!(error = %e, "workload attestation could not read /proc");
                Status::unavailable("the caller could not be attested right now; retry shortly")
            }
            e => Status::permission_denied(format!("the caller could not be attested: {e}")),
        }
    }
}

impl From<IssueError> for Status {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Invalid(_)
            | IssueError::Key(_)
            | IssueError::Csr(_)
            | IssueError::Name(_) => Status::invalid_argument(e.to_string()),
            IssueError::Precondition(m) => Status::failed_precondition(m),
            IssueError::Build(BuildError::Sign(s)) => s.into(),
            IssueError::Build(other) => {
                tracing::error!(error = %other, "certificate building failed");
                Status::internal("the certificate could not be built; see the daemon's log")
            }
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                // The reason names the setting at fault (state.dir,
                // state.database, state.database_timeout) and never a
                // password: the store's errors are written that way.
                Status::unavailable(format!(
                    "the certificate store cannot be written right now ({m}); nothing was issued or changed; retry shortly"
                ))
            }
            StoreError::Duplicate => {
                Status::already_exists("a record with this key already exists")
            }
            StoreError::SerialTaken => {
                tracing::error!("new serials kept colliding with stored ones");
                Status::internal(
                    "the certificate's serial was already in the store, again and again; nothing was issued; see the daemon's log",
                )
            }
            StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "corrupt record");
                Status::internal("a stored record could not be read; see the daemon's log")
            }
        }
    }
}

impl From<PolicyError> for Status {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Denied(m) => Status::permission_denied(m),
            PolicyError::RateLimited(m) | PolicyError::Quota(m) => Status::resource_exhausted(m),
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Issue(i) => i.into(),
            RequestError::Policy(p) => p.into(),
            RequestError::Invalid(m) => Status::invalid_argument(m),
            RequestError::NotFound(_) => Status::not_found(e.to_string()),
            RequestError::AlreadyExists(m) => Status::already_exists(m),
            RequestError::Precondition(m) => Status::failed_precondition(m),
            RequestError::Store(s) => s.into(),
        }
    }
}

impl From<JwtError> for Status {
    fn from(e: JwtError) -> Self {
        match e {
            JwtError::NoAudience | JwtError::EmptyAudience => {
                Status::invalid_argument(format!("audience: {e}"))
            }
            JwtError::Sign(s) => s.into(),
            JwtError::UnsupportedScheme | JwtError::Jwk(_) => {
                tracing::error!(error = %e, "the JWT key cannot sign JWT-SVIDs");
                Status::internal("the JWT-SVID key cannot sign (see the daemon's log)")
            }
        }
    }
}

/// A token that fails validation is the caller's bad input: the message
/// says what is wrong with it.
impl From<ValidateError> for Status {
    fn from(e: ValidateError) -> Self {
        Status::invalid_argument(format!("the JWT-SVID is not valid: {e}"))
    }
}

impl From<SignError> for Status {
    fn from(e: SignError) -> Self {
        match e {
            SignError::Busy => Status::new(
                Code::ResourceExhausted,
                "the signer's queue is full; retry in a moment",
            ),
            SignError::Stopped => Status::unavailable("the daemon is shutting down; retry shortly"),
            SignError::Unavailable => {
                Status::unavailable("the HSM is unavailable and being reconnected; retry shortly")
            }
            SignError::Rejected(_) => {
                tracing::error!(error = %e, "the token refused to sign");
                Status::internal(
                    "the HSM refused to sign this certificate; nothing was issued (see the daemon's log)",
                )
            }
            SignError::Failed(_) => {
                tracing::error!(error = %e, "token signing failed");
                Status::unavailable("the HSM could not sign; retry shortly")
            }
        }
    }
}

impl From<SdsError> for Status {
    fn from(e: SdsError) -> Self {
        match e {
            SdsError::UnknownNames { .. } | SdsError::TypeUrl(_) => {
                Status::invalid_argument(e.to_string())
            }
            SdsError::Pem(_) => {
                tracing::error!(error = %e, "SDS secret encoding failed");
                Status::internal("the secrets could not be encoded; see the daemon's log")
            }
        }
    }
}

/// tonic answers an over-long message with OUT_OF_RANGE before the handler
/// runs; the contract says INVALID_ARGUMENT, with the limit in the message.
pub fn rewrite_oversize<B>(mut resp: http::Response<B>, limit: usize) -> http::Response<B> {
    let h = resp.headers();
    let is_oversize = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11")
        && h.get("grpc-message").is_some_and(|m| {
            String::from_utf8_lossy(m.as_bytes())
                .replace("%20", " ")
                .contains("message length too large")
        });
    if is_oversize {
        let msg = format!(
            "the request is larger than the {limit}-byte limit; send a single PEM key or CSR"
        );
        let h = resp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static("3"));
        if let Ok(v) = http::HeaderValue::from_str(&msg) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// The canonical gRPC name of a status code, as users see it in docs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
