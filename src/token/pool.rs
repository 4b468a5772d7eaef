//! The signing pool: N threads, each owning one PKCS#11 session, fed by one
//! bounded queue with a oneshot reply per job. Sessions are `Send` but not
//! `Sync` and every C_Sign blocks, so they live on these threads and never on
//! the async runtime; a full queue fails fast instead of growing.
//!
//! Failures are sorted by [`FaultClass`]: a session-level fault gets a
//! fresh session (login again, key found again by CKA_ID) and one more
//! C_Sign of the same input; a token-level fault, or a session-level one
//! that survives that retry, hands the token to the recovery thread in
//! [`super::supervisor`] and fails requests fast until it is back; a
//! request-level fault fails that request only. Retrying C_Sign on the same
//! input is safe: the caller builds and records one certificate from
//! whichever signature comes back.

use std::{sync::Mutex, thread::JoinHandle, time::Instant};

use cryptoki::{
    error::Error as CkError,
    mechanism::{
        Mechanism, MechanismType,
        rsa::{PkcsMgfType, PkcsPssParams},
    },
    object::ObjectHandle,
    session::Session,
};
use spki::SubjectPublicKeyInfoOwned;
use tokio::sync::{oneshot, watch};

pub use super::supervisor::RebuildPlan;
use super::{
    CaKey, FaultClass, Token, TokenError,
    faults::{FaultInjector, Op},
    supervisor::{self, Live, Shared},
};
use crate::{
    metrics::metrics,
    signing::{DigestSigner, Readiness, SignFuture, SignatureScheme},
};

struct Job {
    /// Exactly what C_Sign receives: a digest, or a DigestInfo around one.
    input: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, TokenError>>,
}

/// How to run the pool, and what it needs to rebuild the token.
pub struct PoolOptions {
    pub scheme: SignatureScheme,
    pub sessions: usize,
    pub queue_depth: usize,
    pub rebuild: RebuildPlan,
    /// A test hook; [`FaultInjector::disabled`] outside tests.
    pub faults: std::sync::Arc<FaultInjector>,
}

pub struct SignerPool {
    tx: Mutex<Option<flume::Sender<Job>>>,
    scheme: SignatureScheme,
    spki: SubjectPublicKeyInfoOwned,
    workers: Mutex<Vec<JoinHandle<()>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    shared: std::sync::Arc<Shared>,
}

/// The plain (never hash-combined) mechanism for a scheme.
pub fn mechanism(scheme: SignatureScheme) -> Mechanism<'static> {
    match scheme {
        SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 => Mechanism::Ecdsa,
        SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPkcs1Sha384 => Mechanism::RsaPkcs,
        SignatureScheme::RsaPssSha256 => Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: 32.into(),
        }),
        SignatureScheme::RsaPssSha384 => Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg: MechanismType::SHA384,
            mgf: PkcsMgfType::MGF1_SHA384,
            s_len: 48.into(),
        }),
    }
}

impl SignerPool {
    /// Opens `sessions` sessions, one per signing thread, and starts the
    /// recovery thread. The token (and its login session) is kept until
    /// [`SignerPool::shutdown`].
    pub fn start(token: Token, key: &CaKey, opts: PoolOptions) -> Result<Self, TokenError> {
        let (tx, rx) = flume::bounded::<Job>(opts.queue_depth);
        let mut sessions = Vec::with_capacity(opts.sessions);
        for _ in 0..opts.sessions {
            let s = super::open_session(token.context(), token.slot(), false, &opts.faults)
                .map_err(TokenError::from_ck)?;
            sessions.push(s);
        }
        let (shared, wake) = Shared::new(token, key.id.clone(), opts.rebuild, opts.faults);
        let mut workers = Vec::with_capacity(sessions.len());
        for (n, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                shared: shared.clone(),
                session: Some(WorkerSession {
                    session,
                    key: key.private,
                    generation: 0,
                }),
                scheme: opts.scheme,
            };
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hsmca-signer-{n}"))
                .spawn(move || worker.run(rx))
                .map_err(|e| TokenError::Other(format!("cannot start signing thread: {e}")))?;
            workers.push(handle);
        }
        let m = metrics();
        m.signer_sessions.set(workers.len() as i64);
        m.signer_queue_capacity.set(opts.queue_depth as i64);
        m.token_ready.set(1);
        let sup = shared.clone();
        let supervisor = std::thread::Builder::new()
            .name("hsmca-token-recovery".into())
            .spawn(move || supervisor::run(sup, wake))
            .map_err(|e| TokenError::Other(format!("cannot start recovery thread: {e}")))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            scheme: opts.scheme,
            spki: key.spki.clone(),
            workers: Mutex::new(workers),
            supervisor: Mutex::new(Some(supervisor)),
            shared,
        })
    }

    /// The token's state, for health reporting: `Unavailable` from the
    /// first token-level fault until the rebuild succeeds.
    pub fn state(&self) -> watch::Receiver<Readiness> {
        self.shared.subscribe()
    }

    /// Stops accepting work, lets the threads finish what is queued, closes
    /// their sessions, stops the recovery thread, logs out and unloads the
    /// module.
    pub fn shutdown(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let workers = self
            .workers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        for w in workers {
            let _ = w.join();
        }
        self.shared.stop();
        if let Some(s) = self.supervisor.lock().ok().and_then(|mut s| s.take()) {
            let _ = s.join();
        }
        self.shared.close();
    }

    /// Queues exactly `input` for C_Sign and waits for the raw output.
    /// While the token is unavailable nothing is queued: the request fails
    /// at once.
    async fn sign_raw(&self, input: Vec<u8>) -> Result<Vec<u8>, TokenError> {
        if !self.shared.is_ready() {
            return Err(TokenError::Unavailable);
        }
        let tx = self
            .tx
            .lock()
            .map_err(|_| TokenError::Stopped)?
            .clone()
            .ok_or(TokenError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        // Counted before the send, so a worker's decrement never comes first.
        let queued = &metrics().signer_queue;
        queued.inc();
        tx.try_send(Job { input, reply }).map_err(|e| {
            queued.dec();
            match e {
                flume::TrySendError::Full(_) => TokenError::Busy,
                flume::TrySendError::Disconnected(_) => TokenError::Stopped,
            }
        })?;
        rx.await.map_err(|_| TokenError::Stopped)?
    }
}

impl DigestSigner for SignerPool {
    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    fn sign_digest(&self, digest: Vec<u8>) -> SignFuture<'_> {
        Box::pin(async move {
            let raw = self.sign_raw(self.scheme.token_input(&digest)).await?;
            Ok(self.scheme.signature_value(&raw)?)
        })
    }
}

/// A signing thread's session, the CA key's handle as seen through it, and
/// the generation of the library it came from.
struct WorkerSession {
    session: Session,
    key: ObjectHandle,
    generation: u64,
}

/// Why one attempt failed.
enum Fault {
    Ck(CkError),
    /// The key is no longer found (exactly once) by its CKA_ID.
    KeyLost,
    /// The token is being rebuilt (no slot in this generation).
    NotReady,
}

impl Fault {
    fn class(&self) -> FaultClass {
        match self {
            Self::Ck(e) => FaultClass::of(e),
            Self::KeyLost | Self::NotReady => FaultClass::Token,
        }
    }

    fn into_error(self) -> TokenError {
        match self {
            Self::Ck(e) => TokenError::from_ck(e),
            Self::KeyLost => {
                TokenError::Other("the CA key is no longer found by its CKA_ID".into())
            }
            Self::NotReady => TokenError::Unavailable,
        }
    }
}

impl From<CkError> for Fault {
    fn from(e: CkError) -> Self {
        Self::Ck(e)
    }
}

struct Worker {
    shared: std::sync::Arc<Shared>,
    session: Option<WorkerSession>,
    scheme: SignatureScheme,
}

impl Worker {
    fn run(mut self, rx: flume::Receiver<Job>) {
        let m = metrics();
        while let Ok(job) = rx.recv() {
            m.signer_queue.dec();
            if job.reply.is_closed() {
                // The caller is gone (deadline, disconnect): spend no signature.
                continue;
            }
            m.signer_busy.inc();
            let result = self.sign(&job.input);
            m.signer_busy.dec();
            let _ = job.reply.send(result);
        }
        // Shutting down: close the session if it is still this library's.
        let live = self.shared.read();
        if let Some(ws) = self.session.take()
            && ws.generation == live.generation
        {
            let _ = ws.session.close();
        }
    }

    fn sign(&mut self, input: &[u8]) -> Result<Vec<u8>, TokenError> {
        if !self.shared.is_ready() {
            // Queued before the token failed: fail as fast as new requests.
            return Err(TokenError::Unavailable);
        }
        let shared = self.shared.clone();
        let live = shared.read();
        let generation = live.generation;
        let first = self.attempt(&live, input);
        let outcome = match first {
            Err(f) if f.class() == FaultClass::Session => {
                tracing::warn!(error = %describe(&f), "signing session lost; reopening and retrying once");
                self.discard(&f);
                match self.attempt(&live, input) {
                    Err(f) if f.class() == FaultClass::Session => {
                        // Persisting after a fresh session: treat the token
                        // as broken.
                        self.discard(&f);
                        Err(Escalate(f))
                    }
                    other => other.map_err(Plain),
                }
            }
            other => other.map_err(Plain),
        };
        drop(live);
        match outcome {
            Ok(sig) => Ok(sig),
            Err(Plain(f)) if f.class() == FaultClass::Request => {
                let e = f.into_error();
                tracing::warn!(error = %e, "the token refused a signing request");
                Err(match e {
                    TokenError::Pkcs11 { function, rv } => TokenError::Rejected { function, rv },
                    other => other,
                })
            }
            Err(Plain(f) | Escalate(f)) => {
                // After a token-level fault the handle's fate is unknown:
                // forget it (never close it); the rebuild's C_Finalize
                // closes every session.
                self.session = None;
                let e = f.into_error();
                self.shared.token_fault(generation, &e);
                Err(TokenError::Unavailable)
            }
        }
    }

    /// One C_Sign, opening (and logging in, and finding the key through) a
    /// new session first when there is none for this generation.
    fn attempt(&mut self, live: &Live, input: &[u8]) -> Result<Vec<u8>, Fault> {
        if self
            .session
            .as_ref()
            .is_some_and(|ws| ws.generation != live.generation)
        {
            // From a finalized library: forget it, never close it.
            self.session = None;
        }
        let faults = &self.shared.faults;
        let ws = match &mut self.session {
            Some(ws) => ws,
            None => {
                let slot = live.slot.ok_or(Fault::NotReady)?;
                let session = super::open_session(&live.ctx, slot, false, faults)?;
                let found = super::login(&session, &self.shared.plan.pin, faults)
                    .and_then(|()| super::find_private_by_id(&session, &live.key_id, faults));
                let key = match found {
                    Ok(Some(key)) => key,
                    Ok(None) => {
                        let _ = session.close();
                        return Err(Fault::KeyLost);
                    }
                    Err(e) => {
                        let _ = session.close();
                        return Err(e.into());
                    }
                };
                self.session.insert(WorkerSession {
                    session,
                    key,
                    generation: live.generation,
                })
            }
        };
        faults.check(Op::Sign)?;
        // Built per call: a Mechanism holds raw pointers and is not Send.
        let started = Instant::now();
        let signature = ws.session.sign(&mechanism(self.scheme), ws.key, input)?;
        metrics()
            .sign_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(signature)
    }

    /// Gives up this thread's session after a session-level fault. A handle
    /// the token called invalid is forgotten, not closed (its number may
    /// already be another thread's new session); any other is closed.
    fn discard(&mut self, f: &Fault) {
        if let Some(ws) = self.session.take() {
            let dead = matches!(f, Fault::Ck(e) if FaultClass::handle_is_dead(e));
            if !dead {
                let _ = ws.session.close();
            }
        }
    }
}

use Outcome::{Escalate, Plain};

/// A failed signing attempt: as it came, or escalated to token-level
/// because a session-level fault survived the retry.
enum Outcome {
    Plain(Fault),
    Escalate(Fault),
}

fn describe(f: &Fault) -> String {
    match f {
        Fault::Ck(e) => e.to_string(),
        Fault::KeyLost => "the CA key is no longer found by its CKA_ID".into(),
        Fault::NotReady => "the token is being rebuilt".into(),
    }
}
