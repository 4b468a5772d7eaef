//! The one cache of identities behind every stream on the workload socket.
//!
//! - A **slot** per identity (entry × SPIFFE ID) holds the current SVID; one
//!   task per slot signs it, sleeps until its rotation time (half its
//!   lifetime ± jitter by default) or until woken (revoked), and signs the
//!   next. A failure keeps the current SVID and retries.
//! - A **view** per set of caller attributes lists the slots its callers
//!   get and owns the watch channel their streams read. When a slot
//!   changes, every view holding it gets a new [`X509State`] at once.
//! - A sweep drops views nobody has watched for two rounds, then slots no
//!   view holds (their tasks end, their keys are zeroized), so the cache
//!   follows the workloads that are connected and keeps an SVID for one
//!   that reconnects in between.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, watch};

use super::{
    Svid, X509State, X509Status, X509Watch,
    attest::{self, AttestError, Attributes, Caller, ConnectedPeer},
    entries::{Entries, IdKey, Identity},
    issuing::{SvidError, SvidSigner},
};
use crate::{
    ca::CaChain, config::WorkloadConfig, crl::CrlPublisher, issue::Issuer, metrics::metrics,
    spiffe_id::SpiffeId, store::Store, time::unix_now,
};

/// How often unwatched views are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The workload endpoint's identities; cheap to clone.
#[derive(Clone)]
pub struct Workload {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: SpiffeId,
    entries: RwLock<Arc<Entries>>,
    rotation: RwLock<Rotation>,
    signer: SvidSigner,
    store: Arc<dyn Store>,
    cache: Mutex<Cache>,
    /// Attestations reading `/proc` at once: a thousand workloads
    /// connecting together take turns on a few blocking threads instead
    /// of starting a thread each.
    attesting: tokio::sync::Semaphore,
}

/// Attestations at once, per CPU.
const ATTESTING_PER_CPU: usize = 2;

#[derive(Clone, Copy)]
struct Rotation {
    at: f64,
    jitter: f64,
    retry_after: Duration,
}

#[derive(Default)]
struct Cache {
    version: u64,
    crl: Option<Arc<Vec<u8>>>,
    slots: HashMap<IdKey, Slot>,
    views: HashMap<Attributes, View>,
}

struct Slot {
    identity: Identity,
    /// The caller that first needed it: the owner of its records.
    owner: Caller,
    svid: Option<Arc<Svid>>,
    /// The last attempt failed and there may be no SVID to hand out.
    failed: bool,
    wake: Arc<Notify>,
    wanted: Arc<AtomicBool>,
}

struct View {
    ids: Vec<IdKey>,
    tx: watch::Sender<Arc<X509State>>,
    /// Sweeps in a row that found nobody watching.
    unwatched: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error("workload.trust_domain: {0}")]
    TrustDomain(String),
}

impl Workload {
    /// The cache for `cfg` (validated), signing through `issuer`. Call
    /// [`Workload::run`] to keep it current.
    pub fn new(
        cfg: &WorkloadConfig,
        issuer: Arc<Issuer>,
        store: Arc<dyn Store>,
        ca: &CaChain,
    ) -> Result<Self, WorkloadError> {
        let trust_domain = SpiffeId::parse(&format!("spiffe://{}", cfg.trust_domain))
            .map_err(|e| WorkloadError::TrustDomain(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                trust_domain,
                entries: RwLock::new(Arc::new(Entries::compile(cfg))),
                rotation: RwLock::new(rotation_of(cfg)),
                signer: SvidSigner::new(issuer, store.clone(), ca, cfg.signing_concurrency)?,
                store,
                cache: Mutex::new(Cache::default()),
                attesting: tokio::sync::Semaphore::new(
                    ATTESTING_PER_CPU * std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
            }),
        })
    }

    /// `spiffe://<trust domain>`.
    pub fn trust_domain(&self) -> &SpiffeId {
        &self.inner.trust_domain
    }

    /// The trust domain's CA certificates (DER).
    pub fn bundle(&self) -> Arc<Vec<Vec<u8>>> {
        self.inner.signer.bundle.clone()
    }

    /// Identifies the caller behind a connection (see [`attest`]); runs
    /// off the async runtime. Refusals are counted and logged.
    pub async fn attest(&self, peer: ConnectedPeer) -> Result<Caller, AttestError> {
        let who = peer.peer;
        let _turn = self.inner.attesting.acquire().await;
        let r = tokio::task::spawn_blocking(move || attest::attest(&peer))
            .await
            .unwrap_or_else(|e| Err(AttestError::Proc(format!("the lookup stopped: {e}"))));
        if let Err(e) = &r {
            metrics().workload.attestation_refusals.inc();
            tracing::info!(uid = who.uid, pid = ?who.pid, error = %e, "workload caller refused by attestation");
        }
        r
    }

    /// The SPIFFE IDs `caller` may have now, the default first; empty when
    /// no entry matches. Signs nothing.
    pub fn identities(&self, caller: &Caller) -> Vec<Identity> {
        self.entries().identities(&caller.attrs)
    }

    fn entries(&self) -> Arc<Entries> {
        match self.inner.entries.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The caller's X.509 state, now and as it changes. Callers with the
    /// same attributes share one view and its SVIDs.
    pub fn subscribe(&self, caller: &Caller) -> X509Watch {
        let mut cache = self.cache();
        if let Some(view) = cache.views.get_mut(&caller.attrs) {
            view.unwatched = 0;
            return view.tx.subscribe();
        }
        let ids = self.entries().identities(&caller.attrs);
        let keys = self.ensure_slots(&mut cache, &ids, caller);
        cache.version += 1;
        let state = compose(&cache, &keys, &self.inner.signer.bundle);
        let (tx, rx) = watch::channel(Arc::new(state));
        cache.views.insert(
            caller.attrs.clone(),
            View {
                ids: keys,
                tx,
                unwatched: 0,
            },
        );
        rx
    }

    /// Slots for `ids`, made (and their tasks started) where missing.
    fn ensure_slots(&self, cache: &mut Cache, ids: &[Identity], owner: &Caller) -> Vec<IdKey> {
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let key = id.key();
            if !cache.slots.contains_key(&key) {
                let wake = Arc::new(Notify::new());
                let wanted = Arc::new(AtomicBool::new(true));
                cache.slots.insert(
                    key.clone(),
                    Slot {
                        identity: id.clone(),
                        owner: owner.clone(),
                        svid: None,
                        failed: false,
                        wake: wake.clone(),
                        wanted: wanted.clone(),
                    },
                );
                tokio::spawn(self.clone().keep(key.clone(), wake, wanted));
            }
            keys.push(key);
        }
        keys
    }

    /// Sends the new state to every view holding `key` (all views if `None`).
    fn publish(&self, cache: &mut Cache, key: Option<&IdKey>) {
        cache.version += 1;
        let bundle = &self.inner.signer.bundle;
        for view in cache.views.values() {
            if key.is_none_or(|k| view.ids.contains(k)) {
                let state = compose(cache, &view.ids, bundle);
                view.tx.send_replace(Arc::new(state));
            }
        }
    }

    /// One slot's life: sign, publish, sleep until rotation or a wake-up,
    /// sign again; ends when the slot is no longer wanted.
    async fn keep(self, key: IdKey, wake: Arc<Notify>, wanted: Arc<AtomicBool>) {
        let mut signed_before = false;
        loop {
            if !wanted.load(Ordering::Acquire) {
                return;
            }
            let Some((identity, owner)) = self
                .cache()
                .slots
                .get(&key)
                .map(|s| (s.identity.clone(), s.owner.clone()))
            else {
                return;
            };
            let rotation = *self
                .inner
                .rotation
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let next = match self.inner.signer.issue(&identity, &owner).await {
                Ok(svid) => {
                    let m = &metrics().workload;
                    m.svids_issued.inc();
                    if signed_before {
                        m.svids_rotated.inc();
                    }
                    signed_before = true;
                    tracing::info!(
                        spiffe_id = %svid.spiffe_id,
                        serial = %svid.serial,
                        "signed an X509-SVID"
                    );
                    let wait = rotation_delay(SystemTime::now(), svid.not_after, rotation);
                    let mut cache = self.cache();
                    if let Some(slot) = cache.slots.get_mut(&key) {
                        slot.svid = Some(Arc::new(svid));
                        slot.failed = false;
                    }
                    self.publish(&mut cache, Some(&key));
                    wait
                }
                Err(e) => {
                    metrics().workload.svid_failures.inc();
                    tracing::warn!(
                        spiffe_id = %identity.spiffe_id,
                        error = %e,
                        retry_in = ?rotation.retry_after,
                        "could not sign an X509-SVID; the current one (if any) stays"
                    );
                    let mut cache = self.cache();
                    let had_none = match cache.slots.get_mut(&key) {
                        Some(slot) => {
                            let first = !slot.failed;
                            slot.failed = true;
                            slot.svid.is_none() && first
                        }
                        None => false,
                    };
                    if had_none {
                        self.publish(&mut cache, Some(&key));
                    }
                    rotation.retry_after
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = wake.notified() => {}
            }
        }
    }

    /// Applies a reloaded configuration: callers are matched again; one
    /// that lost its entries gets `Denied`, one whose entry changed gets a
    /// new SVID. The trust domain and the socket need a restart.
    pub fn reload(&self, cfg: &WorkloadConfig) -> Result<(), String> {
        if cfg.trust_domain != self.inner.trust_domain.trust_domain() {
            return Err("workload.trust_domain changed; that needs a restart".into());
        }
        let entries = Arc::new(Entries::compile(cfg));
        *self
            .inner
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = entries.clone();
        *self
            .inner
            .rotation
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rotation_of(cfg);
        let mut cache = self.cache();
        let attrs: Vec<Attributes> = cache.views.keys().cloned().collect();
        let mut changed = false;
        for a in attrs {
            let ids = entries.identities(&a);
            let keys: Vec<IdKey> = ids.iter().map(Identity::key).collect();
            let Some(old) = cache.views.get(&a).map(|v| v.ids.clone()) else {
                continue;
            };
            if keys != old {
                changed = true;
                // The owner of new slots: any caller of these attributes.
                let owner = Caller {
                    pid: 0,
                    attrs: a.clone(),
                };
                let keys = self.ensure_slots(&mut cache, &ids, &owner);
                if let Some(v) = cache.views.get_mut(&a) {
                    v.ids = keys;
                }
            }
        }
        if changed {
            self.drop_unused_slots(&mut cache);
            self.publish(&mut cache, None);
        }
        Ok(())
    }

    /// Ends the slots that no view holds.
    fn drop_unused_slots(&self, cache: &mut Cache) {
        let used: HashSet<&IdKey> = cache.views.values().flat_map(|v| v.ids.iter()).collect();
        let unused: Vec<IdKey> = cache
            .slots
            .keys()
            .filter(|k| !used.contains(k))
            .cloned()
            .collect();
        for k in unused {
            if let Some(slot) = cache.slots.remove(&k) {
                slot.wanted.store(false, Ordering::Release);
                slot.wake.notify_one();
            }
        }
    }

    /// Drops views nobody watched for two sweeps, then unused slots.
    fn sweep(&self) {
        let mut cache = self.cache();
        cache.views.retain(|_, v| {
            if v.tx.receiver_count() > 0 {
                v.unwatched = 0;
                true
            } else {
                v.unwatched += 1;
                v.unwatched < 2
            }
        });
        self.drop_unused_slots(&mut cache);
    }

    /// Keeps the cache current until dropped: follows the CRL (a revoked
    /// SVID is replaced at once, and every stream gets the new CRL) and
    /// sweeps unwatched views.
    pub async fn run(self, crl: Arc<CrlPublisher>) {
        let mut crls = crl.subscribe();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut crl_open = true;
        let first = crls.borrow_and_update().clone();
        if let Some(record) = first {
            self.crl_changed(&record.pem).await;
        }
        loop {
            tokio::select! {
                _ = sweep.tick() => self.sweep(),
                r = crls.changed(), if crl_open => {
                    if r.is_err() {
                        crl_open = false;
                        continue;
                    }
                    let record = crls.borrow_and_update().clone();
                    if let Some(record) = record {
                        self.crl_changed(&record.pem).await;
                    }
                }
            }
        }
    }

    async fn crl_changed(&self, pem: &str) {
        let der = match der::pem::decode_vec(pem.as_bytes()) {
            Ok((_, der)) => der,
            Err(e) => {
                tracing::warn!(error = %e, "the CRL is not PEM; not handed to workloads");
                return;
            }
        };
        let revoked: HashSet<String> = match self.inner.store.revoked(unix_now()).await {
            Ok(list) => list.into_iter().map(|r| r.serial).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read revocations; SVIDs not checked");
                HashSet::new()
            }
        };
        let mut cache = self.cache();
        cache.crl = Some(Arc::new(der));
        for slot in cache.slots.values() {
            if let Some(svid) = &slot.svid
                && revoked.contains(&svid.serial)
            {
                tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "an X509-SVID was revoked; replacing it");
                slot.wake.notify_one();
            }
        }
        self.publish(&mut cache, None);
    }
}

fn rotation_of(cfg: &WorkloadConfig) -> Rotation {
    Rotation {
        at: cfg.rotate_at,
        jitter: cfg.rotation_jitter,
        retry_after: cfg.retry_after,
    }
}

/// How long until an SVID valid from `now` to `not_after` is replaced:
/// `at` of its lifetime, ± `jitter` of it at random.
fn rotation_delay(now: SystemTime, not_after: SystemTime, r: Rotation) -> Duration {
    let life = not_after.duration_since(now).unwrap_or_default();
    let mut b = [0u8; 8];
    let unit = match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    };
    let share = r.at + r.jitter * (2.0 * unit - 1.0);
    life.mul_f64(share.clamp(0.01, 0.99))
}

/// The state of a view holding `keys`.
fn compose(cache: &Cache, keys: &[IdKey], bundle: &Arc<Vec<Vec<u8>>>) -> X509State {
    let mut svids = Vec::with_capacity(keys.len());
    let mut status = if keys.is_empty() {
        X509Status::Denied
    } else {
        X509Status::Ready
    };
    for k in keys {
        match cache.slots.get(k) {
            Some(Slot {
                svid: Some(svid), ..
            }) => svids.push(svid.clone()),
            Some(Slot { failed: true, .. }) => status = X509Status::Unavailable,
            _ => {
                if status == X509Status::Ready {
                    status = X509Status::Pending;
                }
            }
        }
    }
    if status != X509Status::Ready {
        svids.clear();
    }
    X509State {
        version: cache.version,
        status,
        svids,
        bundle: bundle.clone(),
        crl: cache.crl.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn rotation_is_at_half_life_within_the_jitter() {
        let now = SystemTime::now();
        let r = Rotation {
            at: 0.5,
            jitter: 0.1,
            retry_after: Duration::from_secs(1),
        };
        let mut seen = Vec::new();
        for _ in 0..200 {
            let d = rotation_delay(now, now + Duration::from_secs(3600), r);
            assert!(
                d >= Duration::from_secs(1440) && d <= Duration::from_secs(2160),
                "{d:?}"
            );
            seen.push(d);
        }
        seen.sort();
        assert!(seen[199] - seen[0] > Duration::from_secs(300), "no jitter");
    }
}
