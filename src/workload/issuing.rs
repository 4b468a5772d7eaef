//! Signing one SVID: a fresh key, the certificate decided by
//! [`Issuer::decide_svid`] and signed by [`Issuer::sign`] through the
//! token's signer pool in its background class (after the interactive
//! requests queued beside it), then the record and its audit entry committed
//! together — only then is the SVID handed to anyone.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use super::{SPIFFE_ID_TAG, Svid, attest::Caller, entries::Identity, keys};
use crate::{
    audit::AuditEntry,
    ca::CaChain,
    issue::{IssueError, Issued, Issuer, SERIAL_ATTEMPTS, certificate::BuildError, svid::SvidSpec},
    signing::SignError,
    store::{Announced, Record, Store, StoreError},
};

/// The audit log's operation for an SVID.
pub const OPERATION: &str = "workload svid";

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error(transparent)]
    Key(#[from] keys::KeyGenError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode the SVID: {0}")]
    Encoding(String),
}

pub(crate) struct SvidSigner {
    issuer: Arc<Issuer>,
    store: Arc<dyn Store>,
    /// Workload signatures in flight (workload.signing_concurrency).
    permits: Semaphore,
    /// DER of the CA certificates between an SVID and the root.
    intermediates: Vec<Vec<u8>>,
    /// DER of the root: the trust bundle.
    pub bundle: Arc<Vec<Vec<u8>>>,
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, SvidError> {
    der::pem::decode_vec(pem.as_bytes())
        .map(|(_, der)| der)
        .map_err(|e| SvidError::Encoding(e.to_string()))
}

impl SvidSigner {
    pub fn new(
        issuer: Arc<Issuer>,
        store: Arc<dyn Store>,
        ca: &CaChain,
        concurrency: usize,
    ) -> Result<Self, SvidError> {
        let mut chain = ca
            .chain_pem
            .iter()
            .map(|p| pem_to_der(p))
            .collect::<Result<Vec<_>, _>>()?;
        // The chain ends with the root, which is the bundle, not the chain.
        let root = chain.pop().into_iter().collect();
        Ok(Self {
            issuer,
            store,
            permits: Semaphore::new(concurrency),
            intermediates: chain,
            bundle: Arc::new(root),
        })
    }

    /// Decides and signs an SVID for `id` with `key`. A full signer queue
    /// is waited out; anything else is the caller's to retry later. The
    /// permit covers the signature only: recording it joins the store's
    /// group commit beside the next ones.
    async fn sign(
        &self,
        id: &Identity,
        key: &keys::WorkloadKey,
    ) -> Result<(Issued, Announced), SvidError> {
        let _permit = self.permits.acquire().await;
        // Announced from its signature until its commit: the store's group
        // commit waits a moment for it, so that a wave of SVIDs shares
        // commits (and fsyncs) as concurrent requests do.
        let announced = self.store.announce_insert();
        loop {
            let decided = self.issuer.decide_svid(SvidSpec {
                spki: key.spki.clone(),
                spiffe_id: id.spiffe_id.clone(),
                dns_names: id.entry.config.dns_names.clone(),
                lifetime: id.entry.config.ttl(),
                description: format!("X509-SVID for {}", id.spiffe_id),
            })?;
            match self.issuer.sign(decided).await {
                Err(IssueError::Build(BuildError::Sign(SignError::Busy))) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return Ok((other?, announced)),
            }
        }
    }

    /// Makes, signs and records an SVID for `id`, owned by `owner` (the
    /// caller that first asked for it).
    pub async fn issue(&self, id: &Identity, owner: &Caller) -> Result<Svid, SvidError> {
        let kt = id.entry.config.key_type;
        // On the low-priority threads: a rotation wave's keys yield the
        // CPU to interactive requests.
        let key = crate::issue::low_priority(move || keys::generate(kt)).await??;
        let mut attempt = 1;
        let issued = loop {
            let (mut issued, _announced) = self.sign(id, &key).await?;
            issued
                .tags
                .insert(SPIFFE_ID_TAG.to_owned(), id.spiffe_id.to_string());
            let record = Record::issued(&issued, &owner.peer(), String::new());
            let audit = AuditEntry::issued(&issued, Some(&owner.identity()), OPERATION);
            match self.store.insert_audited(record, Some(audit)).await {
                // The serial was taken: signed again under a new one.
                Err(StoreError::SerialTaken) if attempt < SERIAL_ATTEMPTS => {
                    let who = owner.identity();
                    let gone = AuditEntry::discarded(&issued, Some(&who), OPERATION);
                    self.store.audit(gone).await?;
                    attempt += 1;
                }
                r => break r.map(|()| issued)?,
            }
        };
        let mut chain = vec![pem_to_der(&issued.pem_certificate)?];
        chain.extend(self.intermediates.iter().cloned());
        Ok(Svid {
            spiffe_id: id.spiffe_id.clone(),
            chain,
            key: key.pkcs8,
            hint: id.hint.clone(),
            not_after: issued.not_after,
            record_id: issued.certificate_id,
            serial: issued.serial_hex,
        })
    }
}
