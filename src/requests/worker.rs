//! The background worker: finds requests whose `due_at` has come (first
//! issues, re-issues, renewals, retries) and works on at most
//! `requests.workers` of them at once. The bound is what keeps a wave of
//! renewals (10,000 certificates that were all issued in the same minute)
//! from taking the token from interactive requests: those wait behind at
//! most `workers` renewals in the signer's queue. Due times live in the
//! store, so a renewal that fell due while the daemon was down is done at
//! start-up.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, task::JoinSet};

use super::Requests;
use crate::time::unix_now;

/// Due requests fetched per look at the store.
const BATCH: u32 = 256;
/// Longest sleep between looks, in case a wake-up is missed.
const MAX_IDLE: Duration = Duration::from_secs(30);

impl Requests {
    /// Runs until aborted; aborting it also aborts the work in progress
    /// (nothing is lost: a certificate is only handed out once committed).
    pub async fn run_worker(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.cfg.workers));
        let mut jobs: JoinSet<String> = JoinSet::new();
        let mut busy: HashSet<String> = HashSet::new();
        loop {
            while let Some(done) = jobs.try_join_next() {
                if let Ok(id) = done {
                    busy.remove(&id);
                }
            }
            let now = unix_now();
            let due = match self.store.due_requests(now, BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "certificate request worker: store unavailable");
                    tokio::time::sleep(self.cfg.retry_after.min(Duration::from_secs(5))).await;
                    continue;
                }
            };
            let mut started = 0;
            for row in &due {
                if busy.contains(&row.id) || self.backing_off(&row.id, now) {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                busy.insert(row.id.clone());
                started += 1;
                let this = self.clone();
                let id = row.id.clone();
                jobs.spawn(async move {
                    match this.process(&id).await {
                        Err(e) => {
                            tracing::warn!(id = %id, error = %e, "certificate request work failed; will retry");
                            let retry = unix_now() + this.cfg.retry_after.as_secs() as i64;
                            this.backoff_map().insert(id.clone(), retry);
                        }
                        Ok(true) => {
                            this.backoff_map().remove(&id);
                        }
                        // Another daemon has it; look again in a moment
                        // (it may die before it is done).
                        Ok(false) => {
                            this.backoff_map().insert(id.clone(), unix_now() + 1);
                        }
                    }
                    drop(permit);
                    this.wake.notify_one();
                    id
                });
            }
            if started > 0 {
                continue;
            }
            let wait = if !due.is_empty() {
                // Everything due is in progress or backing off.
                Duration::from_secs(1)
            } else {
                match self.store.next_due().await {
                    Ok(Some(t)) => {
                        Duration::from_secs((t - now).clamp(0, MAX_IDLE.as_secs() as i64) as u64)
                    }
                    _ => MAX_IDLE,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                    if let Ok(id) = done {
                        busy.remove(&id);
                    }
                }
            }
        }
    }

    fn backoff_map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, i64>> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn backing_off(&self, id: &str, now: i64) -> bool {
        self.backoff_map().get(id).is_some_and(|t| *t > now)
    }
}
