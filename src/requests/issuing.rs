//! The background worker's step on one request: decide whether anything is
//! due, respect the renewal limit, issue under the policy in force now, and
//! commit the new certificate, the revocations it causes and the request's
//! new state in one transaction before any watcher hears of it.

use std::{collections::BTreeMap, time::SystemTime};

use prost::Message;

use super::{
    REQUEST_TAG, RequestError, Requests, SUPERSEDED, auto_renew, decode, labels_of, names_text,
    passes, spec, state_of,
};
use crate::{
    audit::AuditEntry,
    issue::{Decided, Issued, SERIAL_ATTEMPTS},
    peer::{Peer, identity::Identity},
    proto::{CertificateRequest, IssuedCertificate, certificate_request_status::State},
    store::{Record, RequestChange, RequestRow, Revocation, StoreError},
    time::{rfc3339_secs, timestamp, timestamp_secs, unix_now, unix_secs},
};

/// The audit operation of an issue for a request.
fn operation(renewal: bool) -> &'static str {
    if renewal {
        "renewal"
    } else {
        "certificate request"
    }
}

impl Requests {
    /// Does whatever is due on request `id`: the first issue, a re-issue
    /// after a new CSR, or a renewal.
    /// `Ok(false)`: another daemon sharing the store is working on it.
    pub(super) async fn process(&self, id: &str) -> Result<bool, RequestError> {
        let _locked = self.ids.lock(id.to_owned()).await;
        let Some(_claimed) = self.claim(id, false).await? else {
            return Ok(false);
        };
        self.process_claimed(id).await.map(|()| true)
    }

    async fn process_claimed(&self, id: &str) -> Result<(), RequestError> {
        let Some(mut row) = self.store.get_request(id).await? else {
            return Ok(());
        };
        let now = unix_now();
        if row.due_at.is_none_or(|d| d > now) {
            return Ok(());
        }
        let mut r = decode(&row)?;
        let renewal = match state_of(&r) {
            State::Pending => false,
            State::Finished if auto_renew(&r) => true,
            _ => {
                // Nothing to issue: only the schedule changes.
                row.state = state_of(&r) as i32;
                row.due_at = self.due_at(&r, now);
                row.labels = labels_of(&r);
                self.store
                    .commit_request(RequestChange::row_only(row))
                    .await?;
                return Ok(());
            }
        };
        if renewal && let Some(retry) = self.renewal_deferred(&row, now).await? {
            return self.defer(row, r, retry).await;
        }
        // The policy in force now decides, for the owner as the user
        // database knows it now.
        let who = self
            .auth
            .identify(&Peer {
                uid: row.owner_uid,
                gid: row.owner_gid,
                pid: None,
            })
            .await;
        let spec = r.spec.clone().unwrap_or_default();
        let policy = self.auth.current();
        let outcome = match spec::decide(&self.issuer, &spec, &policy, &who).await {
            Ok((decided, _)) => match self.issuer.sign(decided.clone()).await {
                Ok(issued) => Ok((decided, issued)),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok((decided, issued)) => {
                self.commit_signed(row, r, decided, issued, &who, renewal, now)
                    .await
            }
            Err(e) if passes(&e) => {
                let retry = now + self.cfg.retry_after.as_secs() as i64;
                tracing::warn!(id, error = %e, "issuing for a certificate request failed; will retry");
                let status = r.status.get_or_insert_default();
                status.error = format!(
                    "the HSM could not sign just now; retrying at {}",
                    rfc3339_secs(retry)
                );
                r.update_time = Some(timestamp(SystemTime::now()));
                self.save(row, &r, Some(retry)).await
            }
            Err(e) => self.fail(row, r, &who, &spec.profile, renewal, &e).await,
        }
    }

    /// Commits `issued` (signed as `decided`) with the request's new
    /// state. A serial the store already holds is signed again under a new
    /// one, the discarded certificate audited as such.
    #[allow(clippy::too_many_arguments)]
    async fn commit_signed(
        &self,
        row: RequestRow,
        r: CertificateRequest,
        mut decided: Decided,
        mut issued: Issued,
        who: &Identity,
        renewal: bool,
        now: i64,
    ) -> Result<(), RequestError> {
        let mut attempt = 1;
        loop {
            issued.tags = BTreeMap::from([(REQUEST_TAG.to_owned(), row.id.clone())]);
            // The token has signed: that is on the record before anything else.
            self.store
                .audit(AuditEntry::issued(&issued, Some(who), operation(renewal)))
                .await?;
            match self
                .commit_issued(row.clone(), r.clone(), &issued, renewal, now)
                .await
            {
                Err(RequestError::Store(StoreError::SerialTaken)) if attempt < SERIAL_ATTEMPTS => {
                    self.store
                        .audit(AuditEntry::discarded(
                            &issued,
                            Some(who),
                            operation(renewal),
                        ))
                        .await?;
                    decided.renew_serial()?;
                    issued = self.issuer.sign(decided.clone()).await?;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The renewal waits for the names' limit: says so in the status and
    /// comes back at `retry`.
    async fn defer(
        &self,
        row: RequestRow,
        mut r: CertificateRequest,
        retry: i64,
    ) -> Result<(), RequestError> {
        let limit = self.cfg.renewal_limit;
        let window = humantime::format_duration(self.cfg.renewal_window);
        let error = format!(
            "renewal deferred: {} already had {limit} renewals in the last {window} \
             (requests.renewal_limit); next attempt at {}",
            names_text(&row.names_key),
            rfc3339_secs(retry)
        );
        tracing::warn!(id = %row.id, names = %names_text(&row.names_key), retry = %rfc3339_secs(retry), "renewal deferred by the rate limit");
        let status = r.status.get_or_insert_default();
        if status.error != error {
            status.error = error;
            r.update_time = Some(timestamp(SystemTime::now()));
        }
        self.save(row, &r, Some(retry)).await
    }

    /// A refusal the owner must fix: audited, and the request is FAILED
    /// until an update.
    async fn fail(
        &self,
        row: RequestRow,
        mut r: CertificateRequest,
        who: &Identity,
        profile: &str,
        renewal: bool,
        e: &RequestError,
    ) -> Result<(), RequestError> {
        tracing::warn!(id = %row.id, error = %e, "certificate request failed");
        let mut entry = AuditEntry::by(Some(who), operation(renewal));
        entry.profile = profile.to_owned();
        entry.names = row.names_key.split('\n').map(str::to_owned).collect();
        entry.outcome = format!("refused: {e}");
        self.store.audit(entry).await?;
        let status = r.status.get_or_insert_default();
        status.state = State::Failed as i32;
        status.error = format!("{e}; update the request to fix this");
        status.observed_generation = r.generation;
        r.update_time = Some(timestamp(SystemTime::now()));
        self.save(row, &r, None).await
    }

    /// Commits `issued` with the request's new state and the certificates
    /// it supersedes, then tells the watchers.
    async fn commit_issued(
        &self,
        mut row: RequestRow,
        mut r: CertificateRequest,
        issued: &Issued,
        renewal: bool,
        now: i64,
    ) -> Result<(), RequestError> {
        let owner = Peer {
            uid: row.owner_uid,
            gid: row.owner_gid,
            pid: None,
        };
        let record = Record::issued(issued, &owner, String::new());
        let status = r.status.get_or_insert_default();
        let reissue = status.state() == State::Pending;
        // A new CSR replaces every earlier certificate; expired ones leave.
        let revoke: Vec<String> = if reissue {
            status
                .certificates
                .drain(..)
                .map(|c| c.serial_number)
                .collect()
        } else {
            Vec::new()
        };
        status
            .certificates
            .retain(|c| c.expire_time.as_ref().is_none_or(|t| t.seconds > now));
        status.certificates.push(IssuedCertificate {
            pem_certificate: record.pem.clone(),
            serial_number: record.serial.clone(),
            not_before: Some(timestamp_secs(record.not_before)),
            expire_time: Some(timestamp_secs(record.expire_time)),
        });
        status.signed_certificate = record.pem.clone();
        status.signing_root_ca = self.issuer.ca().root_pem.clone();
        status.state = State::Finished as i32;
        status.error.clear();
        status.observed_generation = r.generation;
        r.update_time = Some(timestamp(SystemTime::now()));
        let issued_at = unix_secs(issued.create_time);
        row.state = State::Finished as i32;
        row.due_at = auto_renew(&r).then(|| self.renew_point(issued_at, record.expire_time));
        row.labels = labels_of(&r);
        row.resource = r.encode_to_vec();
        let id = row.id.clone();
        let serial = record.serial.clone();
        let revoked = revoke.len();
        let found = self
            .store
            .commit_request(RequestChange {
                row,
                issued: Some(record),
                revoke,
                revocation: (revoked > 0).then_some(Revocation {
                    time: now,
                    reason: SUPERSEDED,
                }),
                // Re-issues count towards the names' limit too, so that
                // alternating CSRs cannot sign without bound.
                renewal_at: (renewal || revoked > 0).then_some(now),
            })
            .await?;
        if !found {
            return Ok(());
        }
        tracing::info!(
            id,
            serial = %serial,
            generation = r.generation,
            renewal,
            revoked,
            "issued for certificate request"
        );
        self.hub.publish(&r);
        if revoked > 0 {
            self.publish_crl().await;
        }
        Ok(())
    }

    /// `Some(when to try again)` if the names of `row` are at their renewal
    /// limit.
    async fn renewal_deferred(
        &self,
        row: &RequestRow,
        now: i64,
    ) -> Result<Option<i64>, RequestError> {
        let window = self.cfg.renewal_window.as_secs().max(1) as i64;
        let limit = self.cfg.renewal_limit as usize;
        let times = self
            .store
            .renewals_since(&row.names_key, now - window + 1)
            .await?;
        if times.len() < limit {
            return Ok(None);
        }
        // The renewal that has to leave the window before another fits.
        let oldest = times[times.len() - limit];
        Ok(Some((oldest + window).max(now + 1)))
    }
}
