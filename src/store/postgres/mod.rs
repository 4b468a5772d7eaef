//! The PostgreSQL store, for several daemons sharing one set of records.
//! It speaks to the server through sqlx's native Postgres driver (typed
//! BYTEA, one pool per daemon). What makes it safe to share:
//!
//! - every uniqueness the daemon relies on is a constraint (serials,
//!   request ids, certificate-request duplicates), never a read-then-write;
//! - certificate records and audit entries go through a group-commit writer
//!   ([`writer`]): one transaction and one durable commit per batch, with
//!   the audit chain's head read and extended under a transaction-scoped
//!   advisory lock, so the nodes append to one chain in turn;
//! - work that must happen once across nodes (a request_id's issue, a
//!   renewal) is claimed with a session advisory lock ([`locks`]), which
//!   the server drops by itself when a node dies;
//! - CRL numbers come from one sequence;
//! - changes to certificate requests are announced with NOTIFY, so
//!   watchers on every node hear of them ([`notify`]).

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::{broadcast, oneshot};

use super::{Record, StoreError};
use crate::{audit::AuditEntry, config::StateConfig, signing::Readiness};

mod audit;
mod certificates;
mod crl;
pub mod import;
mod locks;
pub mod notify;
mod password;
mod requests;
mod retention;
mod schema;
mod writer;

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    /// Connections held by cross-node claims ([`locks`]).
    locks: PgPool,
    writer: tokio::sync::mpsc::Sender<writer::Pending>,
    /// Certificate records announced and not yet committed.
    announced: Arc<std::sync::atomic::AtomicUsize>,
    /// Ids of certificate requests changed on any node.
    changes: broadcast::Sender<String>,
    /// Whether the server answers (see [`probe`]).
    ready: tokio::sync::watch::Receiver<Readiness>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        return StoreError::Duplicate;
    }
    match e {
        sqlx::Error::PoolTimedOut => unavailable(
            "no PostgreSQL connection within state.database_timeout (is the server up?)",
        ),
        e => unavailable(format!("PostgreSQL (state.database): {e}")),
    }
}

impl PgStore {
    /// Connects to the server `url` names (with the password from
    /// `state.database_password_file` or its credential), runs the
    /// migrations this build knows under sqlx's advisory lock, and starts
    /// the writer and the change listener.
    pub async fn open(url: &str, state: &StateConfig) -> Result<Self, StoreError> {
        let mut opts = PgConnectOptions::from_str(url)
            .map_err(|e| unavailable(format!("state.database: {e}")))?
            .application_name("hsmca");
        if let Some(pw) = password::load(state)? {
            opts = opts.password(secrecy::ExposeSecret::expose_secret(&pw));
        }
        let target = describe(&opts);
        let hint = password::hint(state);
        let connect = |max: u32| {
            PgPoolOptions::new()
                .max_connections(max)
                .min_connections(1)
                .acquire_timeout(state.database_timeout)
                .connect_with(opts.clone())
        };
        let failed = |e: sqlx::Error| {
            // A refused password says where the password came from.
            let refused = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "28P01" || c == "28000");
            let hint = if refused { hint.as_str() } else { "" };
            unavailable(format!(
                "state.database: cannot connect to PostgreSQL at {target}: {e}{hint}"
            ))
        };
        let pool = connect(state.database_connections).await.map_err(failed)?;
        schema::migrate(&pool).await?;
        // The writer and the cross-node claims have connections of their
        // own: a claim holds its connection while its certificate is signed
        // and committed, so claims sharing the pool with the commits (or
        // the reads they wait for) could starve them.
        let writer_pool = connect(2).await.map_err(failed)?;
        let locks = connect(state.database_connections).await.map_err(failed)?;
        let announced = Arc::default();
        let writer = writer::start(writer_pool, Arc::clone(&announced));
        let (changes, _) = broadcast::channel(1024);
        notify::listen(pool.clone(), changes.clone());
        let (ready_tx, ready) = tokio::sync::watch::channel(Readiness::Ready);
        tokio::spawn(probe(pool.clone(), ready_tx, state.database_timeout));
        Ok(Self {
            pool,
            locks,
            writer,
            announced,
            changes,
            ready,
        })
    }

    /// Hands a record, an audit entry or both to the group-commit writer and
    /// waits until they are durable.
    async fn write(
        &self,
        record: Option<Record>,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.writer
            .send(writer::Pending {
                record,
                audit,
                done,
            })
            .await
            .map_err(|_| unavailable("the store writer has stopped"))?;
        rx.await
            .map_err(|_| unavailable("the store writer has stopped"))?
    }
}

/// Asks the server twice a second whether it answers, for health checks:
/// NOT_SERVING while it does not, so a load balancer sends requests to a
/// node that can record them. Ends when the store is dropped.
async fn probe(pool: PgPool, ready: tokio::sync::watch::Sender<Readiness>, timeout: Duration) {
    let mut was_up = true;
    while !ready.is_closed() {
        let up = matches!(
            tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&pool)).await,
            Ok(Ok(_))
        );
        if up != was_up {
            if up {
                tracing::info!("PostgreSQL (state.database) answers again");
            } else {
                tracing::error!(
                    "PostgreSQL (state.database) does not answer; requests fail UNAVAILABLE until it does"
                );
            }
            was_up = up;
        }
        ready.send_if_modified(|r| {
            let new = if up {
                Readiness::Ready
            } else {
                Readiness::Unavailable
            };
            std::mem::replace(r, new) != new
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where the options point, for errors: never the password.
fn describe(o: &PgConnectOptions) -> String {
    let at = match o.get_socket() {
        Some(dir) => format!("socket directory {}", dir.display()),
        None => format!("{}:{}", o.get_host(), o.get_port()),
    };
    format!(
        "{at}, database {:?}, user {:?}",
        o.get_database().unwrap_or(o.get_username()),
        o.get_username()
    )
}

/// How long the writer waits before it tries a dead connection again.
const RECONNECT: Duration = Duration::from_millis(200);

/// The end of a listing query: newest first, strictly older than the
/// keyset cursor (create_time, id) when there is one, then the limit.
fn newest_first_page(after: bool, next: &mut impl FnMut() -> String) -> String {
    let mut sql = String::new();
    if after {
        let (t, i) = (next(), next());
        sql += &format!(" AND (create_time, id) < ({t}, {i})");
    }
    sql += &format!(" ORDER BY create_time DESC, id DESC LIMIT {}", next());
    sql
}
