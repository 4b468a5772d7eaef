//! The store's schema version, read without changing anything: what
//! `hsmca config check` reports before a start. `serve` runs the pending
//! migrations itself (`schema.rs`); this only looks.
//!
//! Looking must not write. A read-only SQLite connection to a database in
//! WAL mode still creates `hsmca.db-wal` and `hsmca.db-shm` when they are
//! missing — owned by whoever runs the check, which (as root) would leave
//! files the daemon's user cannot open. So a store without a `-wal` file
//! (no daemon has it open, and the last one checkpointed) is opened
//! `immutable=1`, which reads the main file alone and creates nothing; a
//! store with a `-wal` file (a daemon is running, or crashed) is opened
//! `mode=ro`, which reads the WAL too, through the files that exist. Such a
//! reader still takes its read lock in `hsmca.db-shm`, SQLite's
//! shared-memory index of the WAL, which holds no data; the database and
//! the WAL are not written.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// The SQLite file in `state.dir`.
pub const DB_FILE: &str = "hsmca.db";

/// The newest schema this build knows: the number of the last migration in
/// `schema.rs`.
pub const SCHEMA_VERSION: i64 = super::schema::LATEST;

/// What the store's schema says about starting this build on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// No database file yet: `serve` creates it (and `dir`, if missing).
    Absent { path: PathBuf },
    /// Exactly this build's schema.
    Current { path: PathBuf },
    /// An older schema: `serve` migrates it to [`SCHEMA_VERSION`].
    Older { path: PathBuf, version: i64 },
    /// Written by a newer hsmca: this build refuses to start on it.
    Newer { path: PathBuf, version: i64 },
    /// A migration that failed half-way: `serve` refuses to start on it.
    Dirty { path: PathBuf, version: i64 },
}

/// Reads the schema version of the store in `state_dir`.
pub fn inspect(state_dir: &Path) -> Result<SchemaState, StoreError> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Ok(SchemaState::Absent { path });
    }
    let unavailable =
        |e: rusqlite::Error| StoreError::Unavailable(format!("{}: {e}", path.display()));
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let mode = if Path::new(&wal).exists() {
        "mode=ro"
    } else {
        "immutable=1"
    };
    let uri = format!("file:{}?{mode}", uri_path(&path));
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(unavailable)?;
    let has_table = |name: &str| -> Result<bool, StoreError> {
        conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )
        .map_err(unavailable)
    };
    let version = if has_table("schema_migrations")? {
        conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(unavailable)?
    } else if has_table("_sqlx_migrations")? {
        // A store from before the schema record was hsmca's own.
        let mut stmt = conn
            .prepare("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .map_err(unavailable)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)))
            .map_err(unavailable)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        if let Some((version, _)) = rows.iter().find(|(_, ok)| !ok) {
            return Ok(SchemaState::Dirty {
                path,
                version: *version,
            });
        }
        rows.last().map_or(0, |(v, _)| *v)
    } else {
        // An empty file (or one whose first migration never ran).
        return Ok(SchemaState::Older { path, version: 0 });
    };
    Ok(match version.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => SchemaState::Current { path },
        std::cmp::Ordering::Less => SchemaState::Older { path, version },
        std::cmp::Ordering::Greater => SchemaState::Newer { path, version },
    })
}

/// `path` as the path part of an SQLite `file:` URI: `?`, `#` and `%` would
/// otherwise end or escape it.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.display().to_string().chars() {
        match c {
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn the_migrations_end_at_schema_version_and_looking_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            inspect(dir.path()).unwrap(),
            SchemaState::Absent {
                path: dir.path().join(DB_FILE)
            }
        );
        assert!(files(dir.path()).is_empty());
        // An open store (its -wal exists): read through the WAL.
        let _store = super::super::SqliteStore::open_sqlite(dir.path())
            .await
            .unwrap();
        let before = files(dir.path());
        let bytes = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        assert_eq!(
            inspect(dir.path()).unwrap(),
            SchemaState::Current {
                path: dir.path().join(DB_FILE)
            }
        );
        assert_eq!(files(dir.path()), before);
        assert_eq!(std::fs::read(dir.path().join(DB_FILE)).unwrap(), bytes);
    }

    #[test]
    fn a_closed_wal_store_is_read_without_creating_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (a INTEGER);")
            .unwrap();
        drop(conn);
        assert_eq!(files(dir.path()), [DB_FILE]);
        let bytes = std::fs::read(&path).unwrap();
        assert!(matches!(
            inspect(dir.path()).unwrap(),
            SchemaState::Older { version: 0, .. }
        ));
        assert_eq!(files(dir.path()), [DB_FILE]);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn newer_older_and_dirty_schemas_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        assert!(matches!(
            inspect(dir.path()).unwrap(),
            SchemaState::Older { version: 0, .. }
        ));
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT, \
             installed_on TIMESTAMP, success BOOLEAN NOT NULL, checksum BLOB, execution_time BIGINT);
             INSERT INTO _sqlx_migrations (version, success) VALUES (1, TRUE), (2, TRUE);",
        )
        .unwrap();
        assert!(matches!(
            inspect(dir.path()).unwrap(),
            SchemaState::Older { version: 2, .. }
        ));
        conn.execute_batch(&format!(
            "INSERT INTO _sqlx_migrations (version, success) VALUES ({SCHEMA_VERSION}, TRUE), ({}, TRUE)",
            SCHEMA_VERSION + 1
        ))
        .unwrap();
        assert_eq!(
            inspect(dir.path()).unwrap(),
            SchemaState::Newer {
                path: path.clone(),
                version: SCHEMA_VERSION + 1
            }
        );
        conn.execute_batch("UPDATE _sqlx_migrations SET success = FALSE WHERE version = 2")
            .unwrap();
        assert!(matches!(
            inspect(dir.path()).unwrap(),
            SchemaState::Dirty { version: 2, .. }
        ));
        // Once hsmca keeps its own record, that record is the version.
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, description TEXT, \
             applied_at BIGINT); INSERT INTO schema_migrations VALUES (5, 'x', 0);",
        )
        .unwrap();
        assert!(matches!(
            inspect(dir.path()).unwrap(),
            SchemaState::Older { version: 5, .. }
        ));
    }

    #[test]
    fn uri_paths_escape_query_characters() {
        assert_eq!(uri_path(Path::new("/a/b?c#d%e")), "/a/b%3fc%23d%25e");
    }
}
