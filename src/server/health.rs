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

/// One readiness from two (the signer's and the store's): ready while both
/// are.
pub fn both_ready(
    mut a: watch::Receiver<Readiness>,
    mut b: watch::Receiver<Readiness>,
) -> watch::Receiver<Readiness> {
    fn now(a: &mut watch::Receiver<Readiness>, b: &mut watch::Receiver<Readiness>) -> Readiness {
        let (a, b) = (*a.borrow_and_update(), *b.borrow_and_update());
        if a == Readiness::Ready && b == Readiness::Ready {
            Readiness::Ready
        } else {
            Readiness::Unavailable
        }
    }
    let (tx, rx) = watch::channel(now(&mut a, &mut b));
    tokio::spawn(async move {
        loop {
            let changed = tokio::select! {
                r = a.changed() => r,
                r = b.changed() => r,
                _ = tx.closed() => return,
            };
            if changed.is_err() {
                return;
            }
            let state = now(&mut a, &mut b);
            tx.send_if_modified(|s| std::mem::replace(s, state) != state);
        }
    });
    rx
}
