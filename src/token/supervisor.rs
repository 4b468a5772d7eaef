//! The token's state, shared by the signing threads, and the thread that
//! brings a failed token back. A signing thread that meets a token-level
//! fault marks the token unavailable and wakes this thread; from then on
//! requests fail fast (UNAVAILABLE) instead of queueing, and this thread
//! rebuilds everything (finalize, initialize, open, login, find the key,
//! check it is still the CA certificate's key) with exponential backoff until
//! it works, then marks the token ready again.
//!
//! Every PKCS#11 call runs under [`Shared::live`]: signing threads hold it
//! for reading, the rebuild for writing, because C_Finalize while another
//! thread is inside the library is undefined behaviour in PKCS#11.

use std::{
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    slot::Slot,
};
use secrecy::SecretString;
use spki::SubjectPublicKeyInfoOwned;
use tokio::sync::watch;

use super::{KeySelector, Token, TokenError, faults::FaultInjector};
use crate::{
    config::KeyType,
    signing::{Readiness, fingerprint},
};

/// The first wait between rebuild attempts; doubled after each failure.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest wait between rebuild attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a rebuild needs to find the same token and key again.
pub struct RebuildPlan {
    pub token_label: String,
    pub selector: KeySelector,
    pub key_type: KeyType,
    /// Kept for re-login for the daemon's lifetime; zeroised on drop and
    /// never formatted (SecretString has no Display, and Debug redacts).
    pub pin: SecretString,
    /// The key checked against the CA certificate at start-up.
    pub spki: SubjectPublicKeyInfoOwned,
    /// The pool's other keys (set by the pool from its options).
    pub extra: Vec<super::pool::ExtraKey>,
}

/// The library and the logged-in token, as of one generation.
pub(crate) struct Live {
    pub ctx: Pkcs11,
    /// The token's slot; `None` between a failed rebuild attempt and the
    /// next one.
    pub slot: Option<Slot>,
    /// Holds the login session (`Session` is not `Sync`, hence the mutex;
    /// it is only reached through the write lock, via `get_mut`).
    token: Mutex<Option<Token>>,
    /// The CKA_IDs of the pool's keys, the CA key first.
    pub key_ids: Vec<Vec<u8>>,
    /// Bumped by every rebuild: sessions and object handles from an older
    /// generation belong to a finalized library and are only forgotten.
    pub generation: u64,
}

pub(crate) struct Shared {
    live: RwLock<Live>,
    generation: AtomicU64,
    state: watch::Sender<Readiness>,
    wake: flume::Sender<Wake>,
    pub faults: Arc<FaultInjector>,
    pub plan: RebuildPlan,
}

pub(crate) enum Wake {
    Fault,
    Stop,
}

impl Shared {
    pub fn new(
        token: Token,
        key_ids: Vec<Vec<u8>>,
        plan: RebuildPlan,
        faults: Arc<FaultInjector>,
    ) -> (Arc<Self>, flume::Receiver<Wake>) {
        let (wake, wake_rx) = flume::unbounded();
        let (state, _) = watch::channel(Readiness::Ready);
        let shared = Arc::new(Self {
            live: RwLock::new(Live {
                ctx: token.context().clone(),
                slot: Some(token.slot()),
                token: Mutex::new(Some(token)),
                key_ids,
                generation: 0,
            }),
            generation: AtomicU64::new(0),
            state,
            wake,
            faults,
            plan,
        });
        (shared, wake_rx)
    }

    pub fn is_ready(&self) -> bool {
        *self.state.borrow() == Readiness::Ready
    }

    pub fn subscribe(&self) -> watch::Receiver<Readiness> {
        self.state.subscribe()
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Live> {
        // A panic while holding the lock leaves nothing half-written that a
        // rebuild would not replace.
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A signing thread saw a token-level fault while using `generation`.
    /// Reports about an older generation are stale: a rebuild already
    /// replaced what failed.
    pub fn token_fault(&self, generation: u64, what: &TokenError) {
        if generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        let changed = self.state.send_if_modified(|s| {
            let was_ready = *s == Readiness::Ready;
            *s = Readiness::Unavailable;
            was_ready
        });
        if changed {
            let m = crate::metrics::metrics();
            m.token_ready.set(0);
            m.token_faults.inc();
            tracing::error!(error = %what, "token unavailable; failing requests fast and reconnecting");
            let _ = self.wake.send(Wake::Fault);
        }
    }

    pub fn stop(&self) {
        let _ = self.wake.send(Wake::Stop);
    }

    /// Logs out and finalizes, for shutdown (signing threads have stopped).
    pub fn close(&self) {
        let mut live = self.write();
        live.slot = None;
        if let Some(token) = take(&mut live.token) {
            token.close();
        }
    }

    /// One rebuild attempt, holding the write lock throughout.
    fn rebuild(&self) -> Result<(), TokenError> {
        let mut live = self.write();
        // Every old session and handle dies here. Sessions are opened
        // without close-on-drop, so dropping them afterwards calls nothing.
        live.slot = None;
        drop(take(&mut live.token));
        let _ = live.ctx.clone().finalize();
        let token = Token::start(
            live.ctx.clone(),
            &self.plan.token_label,
            &self.plan.pin,
            self.faults.clone(),
        )?;
        let key = token.find_ca_key(&self.plan.selector, self.plan.key_type)?;
        if key.spki != self.plan.spki {
            return Err(TokenError::KeyChanged {
                expected: fingerprint(&self.plan.spki),
                found: fingerprint(&key.spki),
            });
        }
        let mut key_ids = vec![key.id];
        for extra in &self.plan.extra {
            // Found by CKA_ID, not by label: a rotation relabels keys, and
            // the running pool signs with the key it started with.
            let sel = KeySelector {
                label: None,
                id: Some(extra.key.id.clone()),
            };
            let found = token.find_ca_key(&sel, extra.key_type)?;
            if found.spki != extra.key.spki {
                return Err(TokenError::KeyChanged {
                    expected: fingerprint(&extra.key.spki),
                    found: fingerprint(&found.spki),
                });
            }
            key_ids.push(found.id);
        }
        live.slot = Some(token.slot());
        *live.token.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(token);
        live.key_ids = key_ids;
        live.generation += 1;
        self.generation.store(live.generation, Ordering::Release);
        Ok(())
    }

    /// The test hook's `reset-sessions`: C_Finalize + C_Initialize behind
    /// the pool's back (the generation stays), so every session handle the
    /// signing threads hold is really dead in the module and the
    /// application is logged out, as after C_CloseAllSessions. See
    /// [`super::faults`] for why this stands in for C_CloseAllSessions.
    fn reset_sessions(&self) {
        let live = self.write();
        let _ = live.ctx.clone().finalize();
        let r = live
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        tracing::warn!(
            ok = r.is_ok(),
            "test hook: every PKCS#11 session was closed underneath the signers"
        );
    }
}

fn take(token: &mut Mutex<Option<Token>>) -> Option<Token> {
    token.get_mut().unwrap_or_else(|p| p.into_inner()).take()
}

/// The recovery thread's loop. Without an armed fault hook it sleeps until
/// woken; with one it also polls the hook for `reset-sessions`.
pub(crate) fn run(shared: Arc<Shared>, wake: flume::Receiver<Wake>) {
    let tick = if shared.faults.is_armed() {
        Duration::from_millis(20)
    } else {
        Duration::from_secs(3600)
    };
    loop {
        match wake.recv_timeout(tick) {
            Ok(Wake::Stop) | Err(flume::RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Fault) | Err(flume::RecvTimeoutError::Timeout) => {}
        }
        if shared.faults.take_reset_sessions() {
            shared.reset_sessions();
        }
        if !shared.is_ready() && !recover(&shared, &wake) {
            return;
        }
    }
}

/// Rebuilds until it works (true) or the pool stops (false). A rejected
/// PIN ends the retries (false once the pool stops): see below.
fn recover(shared: &Shared, wake: &flume::Receiver<Wake>) -> bool {
    let mut backoff = BACKOFF_START;
    let mut attempt = 1u32;
    loop {
        match shared.rebuild() {
            Ok(()) => {
                tracing::info!(attempt, "token reconnected; serving again");
                shared.state.send_replace(Readiness::Ready);
                let m = crate::metrics::metrics();
                m.token_ready.set(1);
                m.token_recoveries.inc();
                // Faults reported while rebuilding are about the old token.
                while let Ok(w) = wake.try_recv() {
                    if matches!(w, Wake::Stop) {
                        return false;
                    }
                }
                return true;
            }
            Err(e @ (TokenError::PinIncorrect | TokenError::PinLocked)) => {
                // The PIN worked at start-up, so it was changed or locked
                // since: every further login would count against the
                // token's retry limit. Stay unavailable instead.
                tracing::error!(
                    attempt,
                    error = %e,
                    "not reconnecting: retrying could lock the token's PIN; restart hsmca with the current PIN"
                );
                while let Ok(Wake::Fault) = wake.recv() {}
                return false;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, retry_in = ?backoff, "token rebuild failed");
            }
        }
        match wake.recv_timeout(backoff) {
            Ok(Wake::Stop) | Err(flume::RecvTimeoutError::Disconnected) => return false,
            Ok(Wake::Fault) | Err(flume::RecvTimeoutError::Timeout) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        attempt += 1;
    }
}
