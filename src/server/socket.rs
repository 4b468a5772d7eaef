//! The Unix socket: bound with the configured mode, never stolen from a
//! running daemon, and removed on shutdown only if it is still ours.

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

#[cfg(test)]
mod tests {
    use super::*;

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
