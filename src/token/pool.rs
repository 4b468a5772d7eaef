//! The signing pool: N threads, each owning one PKCS#11 session, fed by one
//! bounded queue with a oneshot reply per job. Sessions are `Send` but not
//! `Sync` and every C_Sign blocks, so they live on these threads and never on
//! the async runtime; a full queue fails fast instead of growing.

use std::{sync::Mutex, thread::JoinHandle};

use cryptoki::{
    context::Pkcs11,
    mechanism::{
        Mechanism, MechanismType,
        rsa::{PkcsMgfType, PkcsPssParams},
    },
    object::ObjectHandle,
    session::Session,
    slot::Slot,
};
use spki::SubjectPublicKeyInfoOwned;
use tokio::sync::oneshot;

use super::{CaKey, Token, TokenError};
use crate::signing::{DigestSigner, SignError, SignatureScheme};

struct Job {
    /// Exactly what C_Sign receives: a digest, or a DigestInfo around one.
    input: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, TokenError>>,
}

pub struct SignerPool {
    tx: Mutex<Option<flume::Sender<Job>>>,
    scheme: SignatureScheme,
    spki: SubjectPublicKeyInfoOwned,
    workers: Mutex<Vec<JoinHandle<()>>>,
    token: Mutex<Option<Token>>,
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
    /// Opens `sessions` sessions, one per signing thread. The token (and its
    /// login session) is kept until [`SignerPool::shutdown`].
    pub fn start(
        token: Token,
        key: &CaKey,
        scheme: SignatureScheme,
        sessions: usize,
        queue_depth: usize,
    ) -> Result<Self, TokenError> {
        let (tx, rx) = flume::bounded::<Job>(queue_depth);
        let mut workers = Vec::with_capacity(sessions);
        for n in 0..sessions {
            let ctx = token.context().clone();
            let slot = token.slot();
            let session = ctx.open_ro_session(slot).map_err(TokenError::from_ck)?;
            let worker = Worker {
                ctx,
                slot,
                session: Some(session),
                key: key.private,
                scheme,
            };
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hsmca-signer-{n}"))
                .spawn(move || worker.run(rx))
                .map_err(|e| TokenError::Other(format!("cannot start signing thread: {e}")))?;
            workers.push(handle);
        }
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            scheme,
            spki: key.spki.clone(),
            workers: Mutex::new(workers),
            token: Mutex::new(Some(token)),
        })
    }

    /// Stops accepting work, lets the threads finish what is queued, closes
    /// their sessions, logs out and unloads the module.
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
        if let Some(token) = self.token.lock().ok().and_then(|mut t| t.take()) {
            token.close();
        }
    }

    /// Queues exactly `input` for C_Sign and waits for the raw output.
    async fn sign_raw(&self, input: Vec<u8>) -> Result<Vec<u8>, TokenError> {
        let tx = self
            .tx
            .lock()
            .map_err(|_| TokenError::Stopped)?
            .clone()
            .ok_or(TokenError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        tx.try_send(Job { input, reply }).map_err(|e| match e {
            flume::TrySendError::Full(_) => TokenError::Busy,
            flume::TrySendError::Disconnected(_) => TokenError::Stopped,
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

    async fn sign_digest(&self, digest: Vec<u8>) -> Result<Vec<u8>, SignError> {
        let raw = self.sign_raw(self.scheme.token_input(&digest)).await?;
        Ok(self.scheme.signature_value(&raw)?)
    }
}

struct Worker {
    ctx: Pkcs11,
    slot: Slot,
    session: Option<Session>,
    key: ObjectHandle,
    scheme: SignatureScheme,
}

impl Worker {
    fn run(mut self, rx: flume::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            if job.reply.is_closed() {
                // The caller is gone (deadline, disconnect): spend no signature.
                continue;
            }
            let result = self.sign(&job.input);
            let _ = job.reply.send(result);
        }
    }

    fn sign(&mut self, input: &[u8]) -> Result<Vec<u8>, TokenError> {
        match self.try_sign(input) {
            Err(e) if TokenError::is_session_level(&e) => {
                // The session died under us (token restart, idle timeout):
                // a fresh session and one more attempt. Signing the same
                // digest twice cannot yield two different certificates.
                tracing::warn!(error = %e, "signing session lost; reopening");
                self.session = None;
                self.session = Some(
                    self.ctx
                        .open_ro_session(self.slot)
                        .map_err(TokenError::from_ck)?,
                );
                self.try_sign(input).map_err(TokenError::from_ck)
            }
            other => other.map_err(TokenError::from_ck),
        }
    }

    fn try_sign(&mut self, input: &[u8]) -> Result<Vec<u8>, cryptoki::error::Error> {
        let session = match &self.session {
            Some(s) => s,
            None => {
                self.session = Some(self.ctx.open_ro_session(self.slot)?);
                self.session
                    .as_ref()
                    .ok_or(cryptoki::error::Error::NotSupported)?
            }
        };
        // Built per call: a Mechanism holds raw pointers and is not Send.
        session.sign(&mechanism(self.scheme), self.key, input)
    }
}
