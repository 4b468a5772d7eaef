//! The signing pool: N threads, each owning one PKCS#11 session, fed by one
//! bounded queue with a oneshot reply per job. Sessions are `Send` but not
//! `Sync` and every C_Sign blocks, so they live on these threads and never on
//! the async runtime; a full queue fails fast instead of growing. The
//! queue has two classes ([`super::queue`]): a client's request is signed
//! before background work (workload SVIDs, the certificate-request worker)
//! queued ahead of it; [`SignerPool::background`] is the signer for the latter.
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

use super::{
    CaKey, FaultClass, Token, TokenError,
    faults::{FaultInjector, Op},
    queue::{JobQueue, PushError},
    supervisor::{self, Live, Shared},
};
pub use super::{queue::Priority, supervisor::RebuildPlan};
use crate::{
    metrics::metrics,
    signing::{DigestSigner, Readiness, SignFuture, SignatureScheme},
};

struct Job {
    /// Which of the pool's keys signs: 0 is the CA key, then the
    /// [`PoolOptions::extra_keys`] in order.
    key: usize,
    scheme: SignatureScheme,
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
    /// Keys besides the CA key that the same sessions sign with (the JWT
    /// signing key): one login, one queue, one recovery for all of them.
    pub extra_keys: Vec<ExtraKey>,
}

/// A second key in the token, signed with through the pool's sessions.
/// After a rebuild it is found again by its CKA_ID and must have the same
/// public key.
#[derive(Debug, Clone)]
pub struct ExtraKey {
    pub scheme: SignatureScheme,
    pub key_type: crate::config::KeyType,
    pub key: CaKey,
}

pub struct SignerPool {
    queue: std::sync::Arc<JobQueue<Job>>,
    scheme: SignatureScheme,
    spki: SubjectPublicKeyInfoOwned,
    /// The extra keys' schemes and public keys, by index - 1.
    extra: Vec<(SignatureScheme, SubjectPublicKeyInfoOwned)>,
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
        let queue = std::sync::Arc::new(JobQueue::<Job>::new(opts.queue_depth));
        let mut sessions = Vec::with_capacity(opts.sessions);
        for _ in 0..opts.sessions {
            let s = super::open_session(token.context(), token.slot(), false, &opts.faults)
                .map_err(TokenError::from_ck)?;
            sessions.push(s);
        }
        let mut key_ids = vec![key.id.clone()];
        let mut handles = vec![key.private];
        key_ids.extend(opts.extra_keys.iter().map(|k| k.key.id.clone()));
        handles.extend(opts.extra_keys.iter().map(|k| k.key.private));
        let extra = opts
            .extra_keys
            .iter()
            .map(|k| (k.scheme, k.key.spki.clone()))
            .collect();
        let mut plan = opts.rebuild;
        plan.extra = opts.extra_keys;
        let (shared, wake) = Shared::new(token, key_ids, plan, opts.faults);
        let mut workers = Vec::with_capacity(sessions.len());
        for (n, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                shared: shared.clone(),
                session: Some(WorkerSession {
                    session,
                    keys: handles.clone(),
                    generation: 0,
                }),
            };
            let queue = queue.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hsmca-signer-{n}"))
                .spawn(move || worker.run(&queue))
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
            queue,
            scheme: opts.scheme,
            spki: key.spki.clone(),
            extra,
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
        self.queue.close();
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

    /// A signer for the `n`th of [`PoolOptions::extra_keys`] (from 0),
    /// sharing this pool's sessions, queue and recovery.
    pub fn extra_signer(self: &std::sync::Arc<Self>, n: usize) -> Option<ExtraSigner> {
        let (scheme, spki) = self.extra.get(n)?.clone();
        Some(ExtraSigner {
            pool: self.clone(),
            key: n + 1,
            scheme,
            spki,
        })
    }

    /// The CA key as a [`DigestSigner`] whose signatures wait behind
    /// interactive ones ([`Priority::Background`]).
    pub fn background(self: &std::sync::Arc<Self>) -> BackgroundSigner {
        BackgroundSigner { pool: self.clone() }
    }

    /// Queues exactly `input` for C_Sign with key `key` and waits for the
    /// raw output. While the token is unavailable nothing is queued: the
    /// request fails at once.
    async fn sign_raw(
        &self,
        priority: Priority,
        key: usize,
        scheme: SignatureScheme,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, TokenError> {
        if !self.shared.is_ready() {
            return Err(TokenError::Unavailable);
        }
        let (reply, rx) = oneshot::channel();
        // Counted before the push, so a worker's decrement never comes first.
        let queued = &metrics().signer_queue;
        queued.inc();
        let job = Job {
            key,
            scheme,
            input,
            reply,
        };
        self.queue.try_push(priority, job).map_err(|e| {
            queued.dec();
            match e {
                PushError::Full(_) => TokenError::Busy,
                PushError::Closed(_) => TokenError::Stopped,
            }
        })?;
        rx.await.map_err(|_| TokenError::Stopped)?
    }

    async fn sign_digest_as(
        &self,
        priority: Priority,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, crate::signing::SignError> {
        let raw = self
            .sign_raw(priority, 0, self.scheme, self.scheme.token_input(&digest))
            .await?;
        Ok(self.scheme.signature_value(&raw)?)
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
        Box::pin(self.sign_digest_as(Priority::Interactive, digest))
    }
}

/// The CA key through the pool at [`Priority::Background`]: the same key,
/// sessions, queue and recovery, taken after interactive work.
pub struct BackgroundSigner {
    pool: std::sync::Arc<SignerPool>,
}

impl DigestSigner for BackgroundSigner {
    fn scheme(&self) -> SignatureScheme {
        self.pool.scheme
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.pool.spki
    }

    fn sign_digest(&self, digest: Vec<u8>) -> SignFuture<'_> {
        Box::pin(self.pool.sign_digest_as(Priority::Background, digest))
    }
}

/// One of the pool's extra keys as a [`DigestSigner`]: the same digest-only
/// contract as the CA key, through the same sessions and queue.
pub struct ExtraSigner {
    pool: std::sync::Arc<SignerPool>,
    key: usize,
    scheme: SignatureScheme,
    spki: SubjectPublicKeyInfoOwned,
}

impl DigestSigner for ExtraSigner {
    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    fn sign_digest(&self, digest: Vec<u8>) -> SignFuture<'_> {
        Box::pin(async move {
            let raw = self
                .pool
                .sign_raw(
                    Priority::Interactive,
                    self.key,
                    self.scheme,
                    self.scheme.token_input(&digest),
                )
                .await?;
            Ok(self.scheme.signature_value(&raw)?)
        })
    }
}

/// A signing thread's session, the keys' handles as seen through it (the
/// CA key first), and the generation of the library it came from.
struct WorkerSession {
    session: Session,
    keys: Vec<ObjectHandle>,
    generation: u64,
}

/// Why one attempt failed.
enum Fault {
    Ck(CkError),
    /// A key is no longer found (exactly once) by its CKA_ID.
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
            Self::KeyLost => TokenError::Other(KEY_LOST.into()),
            Self::NotReady => TokenError::Unavailable,
        }
    }
}

impl From<CkError> for Fault {
    fn from(e: CkError) -> Self {
        Self::Ck(e)
    }
}

const KEY_LOST: &str = "a signing key is no longer found by its CKA_ID";

struct Worker {
    shared: std::sync::Arc<Shared>,
    session: Option<WorkerSession>,
}

impl Worker {
    fn run(mut self, queue: &JobQueue<Job>) {
        let m = metrics();
        while let Some(job) = queue.pop() {
            m.signer_queue.dec();
            if job.reply.is_closed() {
                // The caller is gone (deadline, disconnect): spend no signature.
                continue;
            }
            m.signer_busy.inc();
            let result = self.sign(job.key, job.scheme, &job.input);
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

    fn sign(
        &mut self,
        key: usize,
        scheme: SignatureScheme,
        input: &[u8],
    ) -> Result<Vec<u8>, TokenError> {
        if !self.shared.is_ready() {
            // Queued before the token failed: fail as fast as new requests.
            return Err(TokenError::Unavailable);
        }
        let shared = self.shared.clone();
        let live = shared.read();
        let generation = live.generation;
        let first = self.attempt(&live, key, scheme, input);
        let outcome = match first {
            Err(f) if f.class() == FaultClass::Session => {
                tracing::warn!(error = %describe(&f), "signing session lost; reopening and retrying once");
                self.discard(&f);
                match self.attempt(&live, key, scheme, input) {
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
    fn attempt(
        &mut self,
        live: &Live,
        key: usize,
        scheme: SignatureScheme,
        input: &[u8],
    ) -> Result<Vec<u8>, Fault> {
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
                let found = super::login(&session, &self.shared.plan.pin, faults).and_then(|()| {
                    live.key_ids
                        .iter()
                        .map(|id| super::find_private_by_id(&session, id, faults))
                        .collect::<Result<Option<Vec<_>>, _>>()
                });
                let keys = match found {
                    Ok(Some(keys)) => keys,
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
                    keys,
                    generation: live.generation,
                })
            }
        };
        faults.check(Op::Sign)?;
        // Built per call: a Mechanism holds raw pointers and is not Send.
        let started = Instant::now();
        let handle = *ws.keys.get(key).ok_or(Fault::KeyLost)?;
        let signature = ws.session.sign(&mechanism(scheme), handle, input)?;
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
        Fault::KeyLost => KEY_LOST.into(),
        Fault::NotReady => "the token is being rebuilt".into(),
    }
}
