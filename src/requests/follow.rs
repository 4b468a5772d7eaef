//! Changes made by the other daemons sharing the store: their commits are
//! announced by the store ([`crate::store::RequestStore::changes`]), and
//! each one that concerns a watched request is read back and handed to
//! its watchers here, so a watcher hears of a change wherever it was made
//! (a delete ends its watch). A new or changed request also wakes the
//! worker: the daemon that made it may die before it is issued.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::{Requests, decode};

impl Requests {
    /// Runs until aborted; does nothing when this daemon makes every change.
    pub async fn follow_changes(self: Arc<Self>) {
        let Some(mut changes) = self.store.changes() else {
            return;
        };
        loop {
            match changes.recv().await {
                Ok(id) if !id.is_empty() => {
                    self.wake.notify_one();
                    self.refresh(&id).await;
                }
                // Notices may have been missed: look at everything watched.
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    self.wake.notify_one();
                    for id in self.hub.watched_ids() {
                        self.refresh(&id).await;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Hands request `id`'s stored state to its watchers, if it has any.
    async fn refresh(&self, id: &str) {
        if !self.hub.is_watched(id) {
            return;
        }
        let _locked = self.ids.lock(id.to_owned()).await;
        match self.store.get_request(id).await {
            Ok(Some(row)) => match decode(&row) {
                Ok(r) => self.hub.publish_if_changed(&r),
                Err(e) => {
                    tracing::warn!(id, error = %e, "a changed certificate request is unreadable")
                }
            },
            Ok(None) => self.hub.close(id),
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot read a certificate request another daemon changed")
            }
        }
    }
}
