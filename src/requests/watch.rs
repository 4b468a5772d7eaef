//! Watchers of certificate requests. Each watched request has one
//! `tokio::sync::watch` channel holding its latest state: publishing never
//! waits for a watcher, a watcher that falls behind skips to the latest
//! state, and a thousand watchers cost a thousand small receivers.
//!
//! Publishing and subscribing both happen under the request's lock, after
//! the state was committed, so a new watcher's first state is never older
//! than what was last published.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::sync::watch;
use tokio_stream::{Stream, wrappers::WatchStream};
use tonic::Status;

use crate::proto::CertificateRequest;

type Shared = Arc<CertificateRequest>;

#[derive(Default)]
pub struct WatchHub {
    channels: Mutex<HashMap<String, watch::Sender<Shared>>>,
}

impl WatchHub {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Shared>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `state` to the request's watchers, if it has any.
    pub fn publish(&self, state: &CertificateRequest) {
        let mut channels = self.channels();
        if let Some(tx) = channels.get(&state.id) {
            if tx.receiver_count() == 0 {
                channels.remove(&state.id);
            } else {
                tx.send_replace(Arc::new(state.clone()));
            }
        }
    }

    /// Hands `state` to the request's watchers unless they have it already
    /// (a change this daemon made and published comes back from the store).
    pub fn publish_if_changed(&self, state: &CertificateRequest) {
        let mut channels = self.channels();
        if let Some(tx) = channels.get(&state.id) {
            if tx.receiver_count() == 0 {
                channels.remove(&state.id);
            } else if tx.borrow().as_ref() != state {
                tx.send_replace(Arc::new(state.clone()));
            }
        }
    }

    pub fn is_watched(&self, id: &str) -> bool {
        self.channels().contains_key(id)
    }

    pub fn watched_ids(&self) -> Vec<String> {
        self.channels().keys().cloned().collect()
    }

    /// A stream of `current`, then every state published for it, ending
    /// with NOT_FOUND when the request is deleted.
    pub fn subscribe(self: &Arc<Self>, current: CertificateRequest) -> WatchRequest {
        let id = current.id.clone();
        let rx = {
            let mut channels = self.channels();
            match channels.get(&id) {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(Arc::new(current));
                    channels.insert(id.clone(), tx);
                    rx
                }
            }
        };
        WatchRequest {
            hub: self.clone(),
            id,
            inner: Some(WatchStream::new(rx)),
        }
    }

    /// Ends every watch of `id` (the request was deleted).
    pub fn close(&self, id: &str) {
        self.channels().remove(id);
    }

    /// Requests with at least one channel (tests: nothing leaks).
    pub fn watched(&self) -> usize {
        self.channels().len()
    }

    fn release(&self, id: &str) {
        let mut channels = self.channels();
        // The dropping stream's own receiver is still counted.
        if channels.get(id).is_some_and(|tx| tx.receiver_count() <= 1) {
            channels.remove(id);
        }
    }
}

/// One watcher's stream of states.
pub struct WatchRequest {
    hub: Arc<WatchHub>,
    id: String,
    inner: Option<WatchStream<Shared>>,
}

impl Stream for WatchRequest {
    type Item = Result<CertificateRequest, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(state)) => Poll::Ready(Some(Ok(state.as_ref().clone()))),
            Poll::Ready(None) => {
                // The channel's sender is only dropped by a delete.
                self.inner = None;
                let msg = format!("certificate request {} was deleted", self.id);
                Poll::Ready(Some(Err(Status::not_found(msg))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for WatchRequest {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.hub.release(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    fn state(id: &str, generation: i64) -> CertificateRequest {
        CertificateRequest {
            id: id.into(),
            generation,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn current_first_then_latest_and_end_on_close() {
        let hub = Arc::new(WatchHub::default());
        let mut w = hub.subscribe(state("a", 1));
        assert_eq!(w.next().await.unwrap().unwrap().generation, 1);
        // A watcher that did not read sees only the latest of several.
        for g in 2..=5 {
            hub.publish(&state("a", g));
        }
        assert_eq!(w.next().await.unwrap().unwrap().generation, 5);
        // A second watcher starts at the current state, not the first one.
        let mut w2 = hub.subscribe(state("a", 1));
        assert_eq!(w2.next().await.unwrap().unwrap().generation, 5);
        hub.close("a");
        let end = w.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::NotFound);
        assert!(w.next().await.is_none());
    }

    #[tokio::test]
    async fn dropped_watchers_leave_nothing_behind() {
        let hub = Arc::new(WatchHub::default());
        let watchers: Vec<_> = (0..1000).map(|_| hub.subscribe(state("a", 1))).collect();
        let others: Vec<_> = (0..10)
            .map(|i| hub.subscribe(state(&format!("b{i}"), 1)))
            .collect();
        assert_eq!(hub.watched(), 11);
        drop(watchers);
        assert_eq!(hub.watched(), 10);
        drop(others);
        assert_eq!(hub.watched(), 0);
        // Publishing to an unwatched request creates nothing.
        hub.publish(&state("c", 1));
        assert_eq!(hub.watched(), 0);
    }
}
