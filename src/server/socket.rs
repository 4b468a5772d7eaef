//! The Unix socket: bound with the configured mode, never stolen from a
//! running daemon, and removed on shutdown only if it is still ours — or
//! taken from systemd (socket activation), in which case it is neither
//! re-bound nor removed. Either way its directory must be one that no other
//! user can change ([`check_socket_dir`]).

use std::{
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another process is listening on {0}; stop it or choose another server.socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("refusing to serve on {socket}: {reason}")]
    UnsafeDir { socket: PathBuf, reason: String },
    #[error("cannot check the directory of socket {socket}: {dir}: {source}")]
    DirUnreadable {
        socket: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("socket activation: {0}")]
    Activation(String),
}

/// A bound socket and the identity of its file, so shutdown removes the file
/// only if nobody replaced it meanwhile.
pub struct BoundSocket {
    pub listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
}

impl BoundSocket {
    pub fn bind(path: &Path, mode: u32) -> Result<Self, SocketError> {
        let bind_err = |source| SocketError::Bind {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // A socket file with a live listener belongs to someone; a
                // refused connection means it is stale and may be replaced.
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(SocketError::InUse(path.to_owned())),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(socket = %path.display(), "removing stale socket");
                        std::fs::remove_file(path).map_err(bind_err)?;
                    }
                    Err(e) => return Err(bind_err(e)),
                }
            }
            Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        let meta = std::fs::metadata(path).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            inode: (meta.dev(), meta.ino()),
        })
    }

    /// Splits the listener from the guard that removes the file.
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (
            self.listener,
            SocketFile {
                path: self.path,
                inode: self.inode,
            },
        )
    }
}

/// Removes the socket file when dropped, if it is still the one we bound.
pub struct SocketFile {
    path: PathBuf,
    inode: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Owner, group and mode of one directory on the socket's path.
#[derive(Debug, Clone, Copy)]
struct DirInfo {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// Who the daemon runs as (effective ids).
#[derive(Debug, Clone, Copy)]
struct Me {
    uid: u32,
    gid: u32,
}

const STICKY: u32 = 0o1000;

/// The rule for the directory that holds the socket (`parent`) and for each
/// of its ancestors: no user other than the daemon's and root may be able
/// to remove, rename or replace the socket file or a directory above it.
///
/// - every directory is owned by root or by the daemon's user;
/// - the socket's own directory is not writable by others (`o+w`), sticky
///   bit or not: in a shared directory like `/tmp` anyone may take the
///   name while the daemon is stopped, and clients would talk to them;
/// - it is group-writable only if its group is the daemon's group;
/// - an ancestor writable by others or by a foreign group is accepted only
///   with the sticky bit (as `/tmp`), where nobody but the owner of an entry
///   can rename or remove it.
fn dir_problem(dir: &Path, info: DirInfo, me: Me, parent: bool) -> Option<String> {
    let shown = dir.display();
    let mode = info.mode & 0o7777;
    if info.uid != 0 && info.uid != me.uid {
        return Some(format!(
            "{shown} is owned by uid {}, not by the daemon's user (uid {}) or root, so its owner could replace the socket; \
             put the socket in a directory owned by the daemon's user, e.g. /run/hsmca (RuntimeDirectory=hsmca)",
            info.uid, me.uid
        ));
    }
    let world = info.mode & 0o002 != 0;
    let foreign_group = info.mode & 0o020 != 0 && info.gid != me.gid;
    if parent {
        if world {
            return Some(format!(
                "the socket directory {shown} is writable by every user (mode {mode:04o}), so anyone could \
                 remove the socket or take its name; use a directory only the daemon's user can write, \
                 e.g. /run/hsmca (RuntimeDirectory=hsmca), or run: chmod o-w {shown}"
            ));
        }
        if foreign_group {
            return Some(format!(
                "the socket directory {shown} is writable by group gid {} (mode {mode:04o}), which is not the \
                 daemon's group (gid {}); run: chmod g-w {shown}, or give it the daemon's group",
                info.gid, me.gid
            ));
        }
    } else if (world || foreign_group) && info.mode & STICKY == 0 {
        let who = if world {
            "every user".to_string()
        } else {
            format!("group gid {}", info.gid)
        };
        return Some(format!(
            "{shown}, above the socket's directory, is writable by {who} without the sticky bit \
             (mode {mode:04o}), so its contents could be renamed and the socket replaced; \
             run: chmod o-w,g-w {shown} (or chmod +t), or move the socket"
        ));
    }
    None
}

/// Refuses a socket path whose directory, or a directory above it, lets a
/// user other than the daemon's (and root) replace the socket. See
/// [`dir_problem`] for the rule; symbolic links are resolved first.
pub fn check_socket_dir(socket: &Path) -> Result<(), SocketError> {
    check_socket_dir_as(
        socket,
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// [`check_socket_dir`] for a daemon running as `uid`/`gid` rather than as
/// this process (`hsmca config check --user`, run by root).
pub fn check_socket_dir_as(socket: &Path, uid: u32, gid: u32) -> Result<(), SocketError> {
    let me = Me { uid, gid };
    let parent = match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let unreadable = |dir: &Path, source| SocketError::DirUnreadable {
        socket: socket.to_owned(),
        dir: dir.to_owned(),
        source,
    };
    let real = std::fs::canonicalize(parent).map_err(|e| unreadable(parent, e))?;
    for (n, dir) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(dir).map_err(|e| unreadable(dir, e))?;
        let info = DirInfo {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
        };
        if let Some(reason) = dir_problem(dir, info, me, n == 0) {
            return Err(SocketError::UnsafeDir {
                socket: socket.to_owned(),
                reason,
            });
        }
    }
    Ok(())
}

/// A listening socket handed over by systemd (`LISTEN_FDS`, with
/// `LISTEN_PID` naming this process). The daemon serves on it as it is: it
/// does not change its mode and never removes its file, which belongs to
/// the `.socket` unit.
#[derive(Debug)]
pub struct Activated {
    pub listener: std::os::unix::net::UnixListener,
    /// The socket's file, when it has one (not an abstract socket).
    pub path: Option<PathBuf>,
}

impl Activated {
    /// The listener for the async runtime (call inside it).
    pub fn into_tokio(self) -> io::Result<UnixListener> {
        self.listener.set_nonblocking(true)?;
        UnixListener::from_std(self.listener)
    }
}

/// The socket systemd passed, if any. Call it before starting threads that
/// may read the environment from C (the PKCS#11 module): it removes
/// `LISTEN_FDS`/`LISTEN_PID` from the environment, as `sd_listen_fds(1)`
/// does. `LISTEN_FDS` meant for another process (a different `LISTEN_PID`,
/// or none) is ignored, as systemd's own `sd_listen_fds` ignores it.
///
/// Taking fd 3 as a socket is done by the `listenfd` crate, which checks
/// that it is a Unix stream socket before wrapping it: this crate forbids
/// `unsafe`, and adopting an inherited descriptor number needs it.
pub fn take_activated() -> Result<Option<Activated>, SocketError> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    let pid = std::env::var("LISTEN_PID").unwrap_or_default();
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        tracing::warn!(
            listen_pid = %pid,
            "LISTEN_FDS is set but LISTEN_PID does not name this process; ignoring it and binding server.socket"
        );
        return Ok(None);
    }
    let count: usize = count
        .parse()
        .map_err(|_| SocketError::Activation(format!("LISTEN_FDS={count:?} is not a number")))?;
    if count != 1 {
        return Err(SocketError::Activation(format!(
            "systemd passed {count} sockets; hsmca.socket must have exactly one ListenStream= and Accept=no"
        )));
    }
    let mut fds = listenfd::ListenFd::from_env();
    let listener = fds
        .take_unix_listener(0)
        .map_err(|e| {
            SocketError::Activation(format!(
                "the descriptor systemd passed is not usable ({e}); hsmca.socket needs ListenStream=/a/path and Accept=no"
            ))
        })?
        .ok_or_else(|| SocketError::Activation("LISTEN_FDS named no descriptor".into()))?;
    match rustix::net::sockopt::socket_acceptconn(&listener) {
        Ok(true) => {}
        Ok(false) => {
            return Err(SocketError::Activation(
                "the socket systemd passed is not listening; hsmca.socket needs Accept=no".into(),
            ));
        }
        Err(e) => {
            return Err(SocketError::Activation(format!(
                "cannot inspect the socket systemd passed: {e}"
            )));
        }
    }
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    Ok(Some(Activated { listener, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dir_rule() {
        let me = Me {
            uid: 1000,
            gid: 1000,
        };
        let d = Path::new("/run/x");
        let at = |uid, gid, mode| DirInfo { uid, gid, mode };
        // The daemon's own or root's directory, not writable by others.
        for info in [
            at(1000, 1000, 0o700),
            at(1000, 1000, 0o770),
            at(0, 0, 0o755),
            at(0, 1000, 0o775),
            at(1000, 5, 0o750),
        ] {
            assert_eq!(dir_problem(d, info, me, true), None, "{info:?}");
        }
        // World-writable, sticky or not; a foreign group; a foreign owner.
        for (info, needle) in [
            (at(1000, 1000, 0o777), "writable by every user"),
            (at(0, 0, 0o1777), "writable by every user (mode 1777)"),
            (at(0, 4, 0o775), "gid 4"),
            (at(1001, 1000, 0o700), "owned by uid 1001"),
        ] {
            let p = dir_problem(d, info, me, true).unwrap();
            assert!(p.contains(needle) && p.contains("/run/x"), "{info:?}: {p}");
        }
        // Above the socket's directory: sticky shared directories (/tmp)
        // are fine, plain shared ones and foreign owners are not.
        assert_eq!(dir_problem(d, at(0, 0, 0o1777), me, false), None);
        assert_eq!(dir_problem(d, at(0, 1000, 0o775), me, false), None);
        assert!(dir_problem(d, at(0, 0, 0o777), me, false).is_some());
        assert!(dir_problem(d, at(0, 4, 0o775), me, false).is_some());
        assert!(dir_problem(d, at(7, 7, 0o755), me, false).is_some());
    }

    #[test]
    fn check_socket_dir_on_real_directories() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        check_socket_dir(&sock).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_socket_dir(&sock).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().display().to_string()) && err.contains("chmod o-w"),
            "{err}"
        );
        let missing = dir.path().join("no/such/dir/s.sock");
        let err = check_socket_dir(&missing).unwrap_err().to_string();
        assert!(err.contains("no/such/dir"), "{err}");
    }

    #[tokio::test]
    async fn stale_replaced_live_refused_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // Stale: bound then dropped without removal.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = BoundSocket::bind(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(
            BoundSocket::bind(&path, 0o660),
            Err(SocketError::InUse(_))
        ));
        let (_l, guard) = live.into_parts();
        drop(guard);
        assert!(!path.exists());
        let plain = dir.path().join("file");
        std::fs::write(&plain, "x").unwrap();
        assert!(matches!(
            BoundSocket::bind(&plain, 0o660),
            Err(SocketError::NotASocket(_))
        ));
        assert!(plain.exists());
    }
}
