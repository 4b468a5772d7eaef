//! Work that must happen once across daemons — the issue behind one
//! (caller, request_id), a renewal — is claimed with a PostgreSQL session
//! advisory lock on a connection held for the work's duration. A node that
//! dies mid-work loses its session and with it the lock, so another node
//! takes the work over; nothing has to expire first.
//!
//! Locks use PostgreSQL's two-key form: class 1 is the audit chain (a
//! transaction lock, see the writer), class 2 these node locks, class 3
//! retention's turn. (sqlx's
//! migrator uses the one-key form, a separate space.)

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Row, pool::PoolConnection};

use super::{corrupt, map_err};
use crate::store::{NodeLock, StoreError};

/// The audit chain's lock class (`pg_advisory_xact_lock(1, 0)`).
pub(super) const AUDIT_CHAIN: i32 = 1;
const NODE_LOCK: i32 = 2;
/// Retention's turn (class 3: 0 records, 1 the audit log).
pub(super) const RETENTION: i32 = 3;

/// How often a waiting claim asks again.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

fn key_id(key: &str) -> i32 {
    let d = Sha256::digest(key.as_bytes());
    i32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A connection holding (or asking for) one node lock.
struct Held {
    conn: Option<PoolConnection<Postgres>>,
    id: i32,
    locked: bool,
    /// A lock query was sent and its answer not yet read: if dropped now,
    /// the lock may have been granted, so the connection is closed (which
    /// releases it) instead of going back to the pool.
    asking: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.asking {
            conn.close_on_drop();
            return;
        }
        if !self.locked {
            return;
        }
        let id = self.id;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let r = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                        .bind(NODE_LOCK)
                        .bind(id)
                        .execute(&mut *conn)
                        .await;
                    if r.is_err() {
                        conn.close_on_drop();
                    }
                });
            }
            Err(_) => conn.close_on_drop(),
        }
    }
}

/// Claims `key` across nodes. `wait`: until it is free (the caller's
/// deadline bounds the wait); otherwise `None` when another node holds it.
pub(super) async fn acquire(
    pool: &PgPool,
    key: &str,
    wait: bool,
) -> Result<Option<NodeLock>, StoreError> {
    let conn = pool.acquire().await.map_err(map_err)?;
    let mut held = Held {
        conn: Some(conn),
        id: key_id(key),
        locked: false,
        asking: false,
    };
    loop {
        let Some(conn) = held.conn.as_mut() else {
            return Err(StoreError::Unavailable("lost the lock's connection".into()));
        };
        held.asking = true;
        let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1, $2) AS got")
            .bind(NODE_LOCK)
            .bind(held.id)
            .fetch_one(&mut **conn)
            .await
            .map_err(map_err)?
            .try_get("got")
            .map_err(corrupt)?;
        held.asking = false;
        if got {
            held.locked = true;
            return Ok(Some(NodeLock::held(held)));
        }
        if !wait {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}
