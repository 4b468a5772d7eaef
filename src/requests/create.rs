//! Filing a certificate request: one per caller and request_id, one live
//! request per key and set of names, within the caller's rate and quota.

use std::time::SystemTime;

use prost::Message;
use sha2::{Digest, Sha256};

use super::{
    CertificateRequest, RequestError, Requests, decode, invalid, labels_of, names_text, spec,
};
use crate::{
    issue::check_request_id,
    peer::{Peer, identity::Identity},
    policy::{Grant, over_quota},
    proto::{
        CertificateRequestStatus, CreateCertificateRequestRequest,
        certificate_request_status::State,
    },
    store::{RequestQuery, RequestRow, StoreError},
    time::{timestamp, unix_now, unix_us},
};

impl Requests {
    pub async fn create(
        &self,
        peer: Peer,
        req: CreateCertificateRequestRequest,
    ) -> Result<CertificateRequest, RequestError> {
        let request_id = check_request_id(&req.request_id)?;
        let given = req
            .spec
            .as_ref()
            .ok_or_else(|| invalid("spec is required"))?;
        if given.rotate_keys {
            return Err(invalid(
                "spec.rotate_keys is set by RotateKeys on an existing request, not at creation",
            ));
        }
        let who = self.auth.identify(&peer).await;
        let policy = self.auth.current();
        policy.require_known(&who)?;
        let fingerprint = hex::encode(Sha256::digest(req.encode_to_vec()));
        let _one_at_a_time = if request_id.is_empty() {
            None
        } else {
            let local = self.creates.lock((peer.uid, request_id.clone())).await;
            let key = format!("create request_id {} {request_id}", peer.uid);
            Some((local, self.store.lock_across_nodes(&key, true).await?))
        };
        if let Some(earlier) = self.replay(peer, &request_id, &fingerprint).await? {
            return Ok(earlier);
        }
        let (checked, grant) = spec::check(&self.issuer, given, &policy, &who).await?;
        policy.check_rate(&grant, &who)?;
        self.check_quota(peer, &who, &grant).await?;
        if let Some(existing) = self.store.request_by_dup_key(&checked.dup_key).await? {
            return Err(self.duplicate(peer, &existing));
        }
        let now = SystemTime::now();
        let resource = CertificateRequest {
            // Time-ordered (UUIDv7): new rows append to the id index
            // instead of landing on a random page of it.
            id: uuid::Uuid::now_v7().to_string(),
            generation: 1,
            spec: Some(checked.spec),
            status: Some(CertificateRequestStatus {
                observed_generation: 0,
                state: State::Pending as i32,
                ..Default::default()
            }),
            create_time: Some(timestamp(now)),
            update_time: Some(timestamp(now)),
        };
        let row = RequestRow {
            id: resource.id.clone(),
            owner_uid: peer.uid,
            owner_gid: peer.gid,
            request_id,
            fingerprint,
            dup_key: checked.dup_key,
            names_key: checked.names_key,
            state: State::Pending as i32,
            due_at: Some(unix_now()),
            create_time_us: unix_us(now),
            labels: labels_of(&resource),
            resource: resource.encode_to_vec(),
        };
        match self.store.create_request(row.clone()).await {
            Ok(()) => {}
            Err(StoreError::Duplicate) => {
                // Another Create with the same key and names won the race
                // (on this node or another): the unique index caught it.
                tracing::info!(
                    uid = peer.uid,
                    names = %names_text(&row.names_key),
                    "refused a certificate request created at the same time as one with the same key and names"
                );
                return Err(match self.store.request_by_dup_key(&row.dup_key).await? {
                    Some(existing) => self.duplicate(peer, &existing),
                    None => RequestError::AlreadyExists(
                        "a certificate request with this key and names was created at the same time"
                            .into(),
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            uid = peer.uid, gid = peer.gid, pid = peer.pid,
            id = %resource.id,
            names = %names_text(&row.names_key),
            "created certificate request"
        );
        self.wake.notify_one();
        Ok(resource)
    }

    /// A Create retried with the same `request_id`: the request as it is
    /// now, whatever the rate; the same id with another body is refused.
    async fn replay(
        &self,
        peer: Peer,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<Option<CertificateRequest>, RequestError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let since_us = unix_us(SystemTime::now() - self.retention);
        let Some(row) = self
            .store
            .request_by_request_id(peer.uid, request_id, since_us)
            .await?
        else {
            return Ok(None);
        };
        if row.fingerprint != fingerprint {
            return Err(RequestError::AlreadyExists(format!(
                "request_id {request_id} was already used for a different request; use a new request_id"
            )));
        }
        decode(&row).map(Some)
    }

    /// The granting rule's live-certificate quota, counting the requests
    /// not yet issued for: each will hold a certificate.
    async fn check_quota(
        &self,
        peer: Peer,
        who: &Identity,
        grant: &Grant,
    ) -> Result<(), RequestError> {
        let Some(max_live) = grant.max_live else {
            return Ok(());
        };
        let pending = self
            .store
            .list_requests(RequestQuery {
                owner_uid: Some(peer.uid),
                state: Some(State::Pending as i32),
                labels: Vec::new(),
                after: None,
                limit: u32::try_from(max_live).unwrap_or(u32::MAX),
            })
            .await?
            .len() as u64;
        let live = self.store.count_live(peer.uid, unix_now()).await? + pending;
        match over_quota(who, grant, live) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    pub(super) fn duplicate(&self, peer: Peer, existing: &RequestRow) -> RequestError {
        let whose = if existing.owner_uid == peer.uid {
            format!(" (request {})", existing.id)
        } else {
            String::new()
        };
        RequestError::AlreadyExists(format!(
            "a live certificate request{whose} already has this key and these names: {}; \
             update or delete it, or use a new key",
            names_text(&existing.names_key)
        ))
    }
}
