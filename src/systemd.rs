//! Talking to systemd (`Type=notify`): `STATUS=` lines while starting,
//! `READY=1` once the daemon serves, `STOPPING=1` at shutdown, and the
//! watchdog. Without `NOTIFY_SOCKET` every notification is a no-op.
//!
//! The watchdog pings come from the signing path, not from a timer alone:
//! every half `WatchdogSec` a probe signs a random digest through the
//! signer pool (the same queue, threads and sessions as client requests)
//! and verifies the signature with the CA certificate's key; only a
//! verified signature earns `WATCHDOG=1`. A C_Sign that hangs, or a pool
//! that stopped signing, stops the pings and systemd restarts the daemon
//! (`Restart=on-failure`).
//!
//! While the token is *unavailable* (a token-level fault was seen and the
//! recovery thread is rebuilding it: [`crate::signing::Readiness`]) the
//! pings go on and `STATUS=` says so: the daemon is alive, answers what
//! needs no signature, reports NOT_SERVING on `grpc.health.v1`, and will
//! serve again by itself as soon as the token is back — a restart would do
//! no better, and a restart loop against a dead HSM would end in
//! systemd's start limit with nothing serving at all.

use std::{future::Future, time::Duration};

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::signing::Readiness;

/// Sends `STATUS=msg` (and nothing else).
pub fn status(msg: &str) {
    notify(&[NotifyState::Status(msg)]);
}

/// Sends `READY=1` with a status line.
pub fn ready(msg: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(msg)]);
}

/// Sends `STOPPING=1` with a status line.
pub fn stopping(msg: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(msg)]);
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or names this process).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A signature came back and verified.
    Signed,
    /// The token is being rebuilt; requests fail fast meanwhile.
    Unavailable,
    /// Anything else: an error, a bad signature. Carries the reason.
    Failed(String),
}

/// Runs until dropped: every `period / 2` a probe (cut off after the same
/// time), then `WATCHDOG=1` unless the probe failed or timed out. `send`
/// receives the notifications (systemd's socket in the daemon, a recorder
/// in tests); a `STATUS=` line goes with a ping only when the state changes.
pub async fn run_watchdog<P, F>(
    period: Duration,
    state: watch::Receiver<Readiness>,
    mut probe: P,
    send: impl Fn(&[NotifyState]),
) where
    P: FnMut() -> F,
    F: Future<Output = Probe>,
{
    let every = period / 2;
    let mut last: Option<String> = None;
    loop {
        let started = tokio::time::Instant::now();
        let found = if *state.borrow() == Readiness::Unavailable {
            Probe::Unavailable
        } else {
            match tokio::time::timeout(every, probe()).await {
                Ok(p) => p,
                Err(_) => Probe::Failed(format!("no signature within {every:?}")),
            }
        };
        let (ping, line) = match &found {
            Probe::Signed => (true, "serving".to_string()),
            Probe::Unavailable => (
                true,
                "HSM unavailable: reconnecting; signing requests fail with UNAVAILABLE".to_string(),
            ),
            Probe::Failed(why) => (false, format!("watchdog probe failed: {why}")),
        };
        if !ping {
            tracing::warn!(reason = %line, "watchdog: no ping this round");
        }
        let changed = last.as_deref() != Some(line.as_str());
        match (ping, changed) {
            (true, true) => send(&[NotifyState::Watchdog, NotifyState::Status(&line)]),
            (true, false) => send(&[NotifyState::Watchdog]),
            (false, true) => send(&[NotifyState::Status(&line)]),
            (false, false) => {}
        }
        last = Some(line);
        tokio::time::sleep_until(started + every).await;
    }
}

/// The daemon's watchdog: [`run_watchdog`] with systemd's socket.
pub async fn watchdog<P, F>(period: Duration, state: watch::Receiver<Readiness>, probe: P)
where
    P: FnMut() -> F,
    F: Future<Output = Probe>,
{
    run_watchdog(period, state, probe, notify).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<String>>>;

    fn recorder() -> (Seen, impl Fn(&[NotifyState])) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let send = move |states: &[NotifyState]| {
            let line = states
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            s.lock().unwrap().push(line);
        };
        (seen, send)
    }

    #[tokio::test]
    async fn pings_follow_the_probe_and_the_token_state() {
        let (tx, rx) = watch::channel(Readiness::Ready);
        let (seen, send) = recorder();
        // Rounds: signed, signed, hung (timeout), failed, signed; then the
        // token goes unavailable.
        let plan = Arc::new(Mutex::new(vec![
            Some(Probe::Signed),
            Some(Probe::Signed),
            None,
            Some(Probe::Failed("CKR_FUNCTION_FAILED".into())),
            Some(Probe::Signed),
        ]));
        let p = plan.clone();
        let probe = move || {
            let next = {
                let mut p = p.lock().unwrap();
                if p.is_empty() {
                    Some(Probe::Signed)
                } else {
                    p.remove(0)
                }
            };
            async move {
                match next {
                    Some(r) => r,
                    None => std::future::pending().await,
                }
            }
        };
        let count = || seen.lock().unwrap().len();
        let task = tokio::spawn(run_watchdog(Duration::from_millis(200), rx, probe, send));
        while count() < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(Readiness::Unavailable).unwrap();
        while count() < 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen[..5],
            [
                "WATCHDOG=1\nSTATUS=serving",
                "WATCHDOG=1",
                "STATUS=watchdog probe failed: no signature within 100ms",
                "STATUS=watchdog probe failed: CKR_FUNCTION_FAILED",
                "WATCHDOG=1\nSTATUS=serving",
            ],
            "{seen:#?}"
        );
        // A round may already have passed as "serving" before the switch.
        let rest: Vec<_> = seen[5..]
            .iter()
            .skip_while(|s| *s == "WATCHDOG=1")
            .collect();
        assert_eq!(
            rest[0],
            "WATCHDOG=1\nSTATUS=HSM unavailable: reconnecting; signing requests fail with UNAVAILABLE"
        );
        assert!(rest[1..].iter().all(|s| *s == "WATCHDOG=1"), "{seen:#?}");
        assert!(rest.len() >= 2, "{seen:#?}");
    }
}
