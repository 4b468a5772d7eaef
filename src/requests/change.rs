//! Changing a certificate request: a new spec (and with a new CSR, a
//! re-issue), key rotation, and deletion with its revocations.

use std::time::SystemTime;

use super::{
    CESSATION_OF_OPERATION, CertificateRequest, RequestError, Requests, invalid, spec, state_of,
};
use crate::{
    peer::Peer,
    policy::PolicyError,
    proto::{CertificateRequestSpec, certificate_request_status::State},
    store::{Revocation, StoreError},
    time::{timestamp, unix_now},
};

impl Requests {
    pub async fn update(
        &self,
        peer: Peer,
        id: &str,
        given: Option<CertificateRequestSpec>,
    ) -> Result<CertificateRequest, RequestError> {
        let given = given.ok_or_else(|| invalid("spec is required: set the fields to change"))?;
        if given.rotate_keys {
            return Err(invalid(
                "spec.rotate_keys is set by RotateKeys; an update with a new CSR clears it",
            ));
        }
        let _locked = self.ids.lock(id.to_owned()).await;
        let _claimed = self.claim(id, true).await?;
        let (mut row, mut r) = self.owned(peer, id).await?;
        let old = r.spec.clone().unwrap_or_default();
        let (new, csr_changed) = merged(&old, given);
        if new == old {
            return Ok(r);
        }
        let who = self.auth.identify(&peer).await;
        let policy = self.auth.current();
        let (checked, grant) = spec::check(&self.issuer, &new, &policy, &who).await?;
        if csr_changed || state_of(&r) == State::Failed {
            // This update signs again: it takes from the caller's rate.
            policy.check_rate(&grant, &who)?;
        }
        let mut new = checked.spec;
        if csr_changed {
            if old.rotate_keys {
                // Parsing verifies the CSR's signature: off the runtime.
                let old_pem = old.pem_csr.clone();
                let old_key = tokio::task::spawn_blocking(move || {
                    crate::issue::csr::parse_and_verify(&old_pem)
                        .ok()
                        .and_then(|v| der::Encode::to_der(&v.csr.info.public_key).ok())
                })
                .await
                .ok()
                .flatten();
                if old_key.as_deref() == Some(checked.spki.as_slice()) {
                    return Err(invalid(
                        "rotate_keys is set: the new CSR must carry a new key, not the one being rotated",
                    ));
                }
            }
            if checked.dup_key != row.dup_key
                && let Some(existing) = self.store.request_by_dup_key(&checked.dup_key).await?
            {
                return Err(self.duplicate(peer, &existing));
            }
            new.rotate_keys = false;
            row.dup_key = checked.dup_key;
            row.names_key = checked.names_key;
        }
        let now = unix_now();
        let was_failed = state_of(&r) == State::Failed;
        let status = r.status.get_or_insert_default();
        let up_to_date = status.observed_generation == r.generation;
        r.generation += 1;
        r.spec = Some(new);
        r.update_time = Some(timestamp(SystemTime::now()));
        if csr_changed || was_failed {
            // A new key, or another try at what failed: issue again.
            status.state = State::Pending as i32;
            status.error.clear();
        } else if up_to_date {
            status.observed_generation = r.generation;
        }
        let due = self.due_at(&r, now);
        let renamed = csr_changed;
        match self.save(row, &r, due).await {
            Err(RequestError::Store(StoreError::Duplicate)) if renamed => {
                Err(RequestError::AlreadyExists(
                    "a live certificate request already has this key and these names".into(),
                ))
            }
            Err(e) => Err(e),
            Ok(()) => {
                tracing::info!(uid = peer.uid, id = %r.id, generation = r.generation, new_csr = csr_changed, "updated certificate request");
                Ok(r)
            }
        }
    }

    pub async fn rotate_keys(
        &self,
        peer: Peer,
        id: &str,
    ) -> Result<CertificateRequest, RequestError> {
        let _locked = self.ids.lock(id.to_owned()).await;
        let _claimed = self.claim(id, true).await?;
        let (row, mut r) = self.visible(peer, id, true).await?;
        if state_of(&r) == State::Failed {
            return Err(RequestError::Precondition(format!(
                "certificate request {id} has FAILED, so it has no certificate whose key could rotate; \
                 update it with a new CSR instead"
            )));
        }
        let spec = r.spec.get_or_insert_default();
        if spec.rotate_keys {
            return Ok(r);
        }
        spec.rotate_keys = true;
        let status = r.status.get_or_insert_default();
        let up_to_date = status.observed_generation == r.generation;
        r.generation += 1;
        if up_to_date {
            status.observed_generation = r.generation;
        }
        r.update_time = Some(timestamp(SystemTime::now()));
        let due = row.due_at;
        self.save(row, &r, due).await?;
        tracing::info!(uid = peer.uid, id = %r.id, "asked for key rotation");
        Ok(r)
    }

    pub async fn delete(&self, peer: Peer, id: &str) -> Result<(), RequestError> {
        let who = self.auth.identify(&peer).await;
        if !self.auth.current().is_admin(&who) {
            return Err(PolicyError::Denied(format!(
                "deleting a certificate request is for administrators, and {} is not one",
                who.describe()
            ))
            .into());
        }
        let _locked = self.ids.lock(id.to_owned()).await;
        let _claimed = self.claim(id, true).await?;
        let (_, r) = self.visible(peer, id, true).await?;
        let serials: Vec<String> = r
            .status
            .as_ref()
            .map(|s| {
                s.certificates
                    .iter()
                    .map(|c| c.serial_number.clone())
                    .collect()
            })
            .unwrap_or_default();
        let rev = Revocation {
            time: unix_now(),
            reason: CESSATION_OF_OPERATION,
        };
        if !self.store.delete_request(id, serials.clone(), rev).await? {
            return Err(RequestError::NotFound(id.to_owned()));
        }
        self.hub.close(id);
        tracing::info!(
            uid = peer.uid,
            id,
            revoked = serials.len(),
            "deleted certificate request"
        );
        if !serials.is_empty() {
            self.publish_crl().await;
        }
        Ok(())
    }
}

/// `old` with the fields `given` sets, and whether the CSR changed.
fn merged(
    old: &CertificateRequestSpec,
    given: CertificateRequestSpec,
) -> (CertificateRequestSpec, bool) {
    let mut new = old.clone();
    let csr_changed = !given.pem_csr.trim().is_empty() && given.pem_csr != old.pem_csr;
    if csr_changed {
        new.pem_csr = given.pem_csr;
    }
    if !given.profile.is_empty() {
        new.profile = given.profile;
    }
    if given.cert_duration.is_some() {
        new.cert_duration = given.cert_duration;
    }
    if given.auto_renew.is_some() {
        new.auto_renew = given.auto_renew;
    }
    if !given.description.is_empty() {
        new.description = given.description;
    }
    if !given.labels.is_empty() {
        new.labels = given.labels;
    }
    (new, csr_changed)
}
