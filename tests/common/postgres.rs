//! A private PostgreSQL server for the tests: `initdb` into a temporary
//! directory and `pg_ctl` as the `postgres` user when the tests run as
//! root (initdb refuses root), listening only on a Unix socket directory
//! of its own (no TCP port, no system service). Stopped when dropped.
//!
//! The store-touching suites run a second time against PostgreSQL when
//! `HSMCA_TEST_POSTGRES` names the socket directory of such a server
//! (scripts/test.sh starts one): every [`super::Ca`] then gets a database
//! of its own on it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The socket directory of the server the suites share, when set.
pub const SHARED_ENV: &str = "HSMCA_TEST_POSTGRES";

/// Debian's PostgreSQL programs (`/usr/lib/postgresql/N/bin`, the newest N).
pub fn bin(name: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed; scripts/test.sh installs Debian's postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .last()
        .expect("no /usr/lib/postgresql/N")
        .1
        .join(name)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program args…`, as the postgres user when we are root.
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The superuser the tests connect as.
pub const USER: &str = "postgres";

pub struct PgServer {
    dir: Option<tempfile::TempDir>,
    pub data: PathBuf,
    pub sockets: PathBuf,
    pub log: PathBuf,
}

impl PgServer {
    /// initdb and start a new server.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hsmca-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
            );
        }
        run_ok(pg_command(&bin("initdb")).args(["-D"]).arg(&data).args([
            "-A",
            "trust",
            "-U",
            USER,
            "--no-sync",
            "-E",
            "UTF8",
        ]));
        let server = Self {
            log: dir.path().join("server.log"),
            dir: Some(dir),
            data,
            sockets,
        };
        server.start_again();
        server
    }

    /// The server the suites share (see [`SHARED_ENV`]), if any: not
    /// started or stopped here.
    pub fn shared() -> Option<Self> {
        let sockets = PathBuf::from(std::env::var_os(SHARED_ENV)?);
        Some(Self {
            dir: None,
            data: PathBuf::new(),
            log: PathBuf::new(),
            sockets,
        })
    }

    /// `pg_ctl start` (after [`PgServer::stop`]).
    pub fn start_again(&self) {
        self.start_with("-c listen_addresses=''");
    }

    /// `pg_ctl start` with `extra` server options (e.g. a TCP port and TLS).
    pub fn start_with(&self, extra: &str) {
        let opts = format!(
            "-k {} -c max_connections=400 -c shared_buffers=16MB \
             -c fsync=off -c full_page_writes=off {extra}",
            self.sockets.display()
        );
        run_ok(
            pg_command(&bin("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-o", &opts, "-w", "start"]),
        );
    }

    /// `pg_ctl stop -m fast`: connections are cut, as when an operator
    /// restarts the server.
    pub fn stop(&self) {
        run_ok(
            pg_command(&bin("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]),
        );
    }

    /// Runs `sql` in database `db` with psql; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run_ok(
            Command::new(bin("psql"))
                .arg("-h")
                .arg(&self.sockets)
                .args([
                    "-U",
                    USER,
                    "-d",
                    db,
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-At",
                    "-c",
                    sql,
                ]),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A new empty database; returns its name.
    pub fn create_db(&self) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "hsmca_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// The `state.database` URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}@localhost/{db}?host={}",
            self.sockets.display()
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.dir.is_some() {
            let _ = pg_command(&bin("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}
