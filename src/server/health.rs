//! `grpc.health.v1.Health` follows the signer's readiness (the token): NOT_SERVING (for the overall
//! server, `""`, and for each named service) from the first token-level
//! fault until the signer has rebuilt the token, SERVING otherwise. Load
//! balancers and systemd watchdogs can then route around a daemon whose HSM
//! is away instead of sending it requests that would fail.

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::signing::Readiness;

/// Mirrors `state` onto `reporter` until the signer goes away.
pub async fn follow_signer(
    reporter: HealthReporter,
    mut state: watch::Receiver<Readiness>,
    services: Vec<&'static str>,
) {
    loop {
        let status = match *state.borrow_and_update() {
            Readiness::Ready => ServingStatus::Serving,
            Readiness::Unavailable => ServingStatus::NotServing,
        };
        reporter.set_service_status("", status).await;
        for s in &services {
            reporter.set_service_status(*s, status).await;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}
