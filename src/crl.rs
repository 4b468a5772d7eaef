//! The certificate revocation list: a v2 CRL built in Rust and signed
//! digest-only by the token, numbered monotonically across restarts, made
//! anew after every revocation and again before its nextUpdate.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use der::{
    EncodePem,
    asn1::{BitString, ObjectIdentifier, OctetString},
    pem::LineEnding,
};
use signature::Keypair;
use spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey};
use tokio::sync::{Mutex, RwLock};
use x509_cert::{
    builder::Builder,
    crl::{CertificateList, RevokedCert, TbsCertList},
    ext::{
        ToExtension,
        pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason},
    },
    name::Name,
    serial_number::SerialNumber,
    time::Time,
};

use crate::{
    ca::CaChain,
    issue::certificate::{BuildError, sign_with},
    signing::DigestSigner,
    store::{CrlRecord, RevokedEntry, Store, StoreError},
    time::unix_now,
};

#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot encode the CRL: {0}")]
    Encoding(String),
}

impl From<der::Error> for CrlError {
    fn from(e: der::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}

fn reason(code: i32) -> Option<CrlReason> {
    Some(match code {
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        9 => CrlReason::PrivilegeWithdrawn,
        // unspecified: RFC 5280 says the reasonCode SHOULD then be absent.
        _ => return None,
    })
}

pub struct CrlPublisher {
    signer: Arc<dyn DigestSigner>,
    store: Arc<dyn Store>,
    ca: Arc<CaChain>,
    validity: Duration,
    current: RwLock<Option<Arc<CrlRecord>>>,
    /// One CRL is made at a time, so numbers never repeat or go backwards.
    making: Mutex<()>,
    /// Every CRL made or loaded, for those who hand it out as it changes
    /// (the workload endpoint).
    updates: tokio::sync::watch::Sender<Option<Arc<CrlRecord>>>,
}

impl CrlPublisher {
    pub fn new(
        signer: Arc<dyn DigestSigner>,
        store: Arc<dyn Store>,
        ca: Arc<CaChain>,
        validity: Duration,
    ) -> Self {
        Self {
            signer,
            store,
            ca,
            validity,
            current: RwLock::new(None),
            making: Mutex::new(()),
            updates: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The latest CRL made or loaded, as it changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<CrlRecord>>> {
        self.updates.subscribe()
    }

    /// The CRL to hand out: the last one made, unless it has passed the
    /// middle of its validity (then a new one is made first).
    pub async fn current(&self) -> Result<Arc<CrlRecord>, CrlError> {
        if let Some(c) = self.current.read().await.clone()
            && !self.stale(&c)
        {
            return Ok(c);
        }
        if let Some(stored) = self.store.last_crl().await? {
            let stored = Arc::new(stored);
            if !self.stale(&stored) {
                *self.current.write().await = Some(stored.clone());
                self.updates.send_replace(Some(stored.clone()));
                return Ok(stored);
            }
        }
        self.publish().await
    }

    fn stale(&self, c: &CrlRecord) -> bool {
        let half = (c.next_update - c.this_update) / 2;
        unix_now() >= c.this_update + half
    }

    /// Makes, signs and stores a new CRL from the store's revocations.
    pub async fn publish(&self) -> Result<Arc<CrlRecord>, CrlError> {
        let _one_at_a_time = self.making.lock().await;
        let number = self.store.last_crl().await?.map_or(1, |c| c.number + 1);
        let now = unix_now();
        let this_update = UNIX_EPOCH + Duration::from_secs(now as u64);
        let next_update = this_update + self.validity;
        let revoked = self.store.revoked(now).await?;
        let issuer_name = self.ca.issuing.tbs_certificate().subject().clone();
        let entries = revoked
            .iter()
            .map(|e| entry(e, &issuer_name))
            .collect::<Result<Vec<_>, CrlError>>()?;
        let tbs = CrlTbs::new(
            issuer_name,
            &self.ca.issuer.key_id,
            number,
            this_update,
            next_update,
            entries,
        )?;
        let crl = sign_with(tbs, self.signer.as_ref()).await?;
        let record = CrlRecord {
            number,
            this_update: now,
            next_update: now + self.validity.as_secs() as i64,
            pem: crl.to_pem(LineEnding::LF)?,
        };
        let mut entry = crate::audit::AuditEntry::by(None, "crl");
        entry.serial = format!("crl number {number}");
        entry.tbs_sha256 = der::Encode::to_der(&crl.tbs_cert_list)
            .map(|tbs| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(tbs)))
            .unwrap_or_default();
        entry.outcome = "signed".into();
        self.store.audit(entry).await?;
        self.store.save_crl(record.clone()).await?;
        let record = Arc::new(record);
        *self.current.write().await = Some(record.clone());
        self.updates.send_replace(Some(record.clone()));
        tracing::info!(number, revoked = revoked.len(), "published CRL");
        Ok(record)
    }

    /// Keeps the CRL fresh: a new one at the middle of each one's validity.
    pub async fn refresh_forever(self: Arc<Self>) {
        loop {
            let wait = match self.current().await {
                Ok(c) => {
                    let half = (c.next_update - c.this_update) / 2;
                    (c.this_update + half - unix_now()).max(1) as u64
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not publish the CRL; retrying in 30 s");
                    30
                }
            };
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }
}

/// A TBSCertList made here rather than by x509-cert's `CrlBuilder`, which
/// gets two things wrong for hsmca: it copies the authorityKeyIdentifier of
/// the issuing certificate itself — the key of the CA *above* it when hsmca
/// is an intermediate, so OpenSSL cannot match the CRL to its issuer — and
/// it writes an empty revokedCertificates SEQUENCE when nothing is revoked.
/// RFC 5280 §5.2.1: the CRL's AKI identifies the key that signed the CRL;
/// §5.1.2.6: with no entries, revokedCertificates MUST be absent.
struct CrlTbs(TbsCertList);

impl CrlTbs {
    fn new(
        issuer: Name,
        key_id: &[u8],
        number: i64,
        this_update: SystemTime,
        next_update: SystemTime,
        entries: Vec<RevokedCert>,
    ) -> Result<Self, CrlError> {
        let number = CrlNumber::try_from(u64::try_from(number).unwrap_or(0))?;
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(key_id)?),
            ..Default::default()
        };
        let extensions = vec![
            number.to_extension(&issuer, &[])?,
            aki.to_extension(&issuer, &[])?,
        ];
        Ok(Self(TbsCertList {
            version: x509_cert::Version::V2,
            // Replaced by the signer's in `finalize`.
            signature: AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap("0.0.0"),
                parameters: None,
            },
            issuer,
            this_update: Time::try_from(this_update)?,
            next_update: Some(Time::try_from(next_update)?),
            revoked_certificates: (!entries.is_empty()).then_some(entries),
            crl_extensions: Some(extensions),
        }))
    }
}

impl Builder for CrlTbs {
    type Output = CertificateList;

    fn finalize<S>(&mut self, signer: &S) -> x509_cert::builder::Result<Vec<u8>>
    where
        S: Keypair + DynSignatureAlgorithmIdentifier,
        S::VerifyingKey: EncodePublicKey,
    {
        self.0.signature = signer.signature_algorithm_identifier()?;
        Ok(der::Encode::to_der(&self.0)?)
    }

    fn assemble<S>(
        self,
        signature: BitString,
        _signer: &S,
    ) -> x509_cert::builder::Result<CertificateList>
    where
        S: Keypair + DynSignatureAlgorithmIdentifier,
        S::VerifyingKey: EncodePublicKey,
    {
        Ok(CertificateList {
            signature_algorithm: self.0.signature.clone(),
            tbs_cert_list: self.0,
            signature,
        })
    }
}

fn entry(e: &RevokedEntry, issuer: &x509_cert::name::Name) -> Result<RevokedCert, CrlError> {
    let serial =
        hex::decode(&e.serial).map_err(|_| CrlError::Encoding(format!("serial {}", e.serial)))?;
    let extensions = match reason(e.reason) {
        Some(r) => Some(vec![r.to_extension(issuer, &[])?]),
        None => None,
    };
    Ok(RevokedCert {
        serial_number: SerialNumber::new(&serial)?,
        revocation_date: Time::try_from(UNIX_EPOCH + Duration::from_secs(e.time.max(0) as u64))?,
        crl_entry_extensions: extensions,
    })
}
