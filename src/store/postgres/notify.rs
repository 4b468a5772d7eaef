//! Changes to certificate requests, from every node: each commit that
//! changes a request sends `NOTIFY hsmca_requests, '<id>'` (delivered when
//! the transaction commits), and every daemon LISTENs and passes the ids
//! on to its watchers. When the listening connection is lost (the server
//! restarted), notices may have been missed: an empty id then says
//! "look at everything you watch again".

use std::time::Duration;

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::broadcast;

/// The channel request changes are announced on.
pub const CHANNEL: &str = "hsmca_requests";

/// Sent on [`broadcast`] when notices may have been lost.
pub const RESYNC: &str = "";

/// Listens for the daemon's lifetime, reconnecting as needed.
pub(super) fn listen(pool: PgPool, out: broadcast::Sender<String>) {
    tokio::spawn(async move {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => {
                    if l.listen(CHANNEL).await.is_ok() {
                        let _ = out.send(RESYNC.to_owned());
                        // `try_recv` says `None` when the connection was
                        // lost (and reconnects at the next call).
                        while let Ok(n) = l.try_recv().await {
                            match n {
                                Some(n) => {
                                    let _ = out.send(n.payload().to_owned());
                                }
                                None => {
                                    let _ = out.send(RESYNC.to_owned());
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "request change listener: cannot connect");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}
