//! Many distinct workloads from one bench process. The daemon tells
//! workloads apart by what the kernel says of the process at the other end
//! of the socket (uid, groups, executable, systemd unit), never by what it
//! sends, and the bench runs as one user. So each workload is a real
//! process: `hsmca bench-workload-peer`, started from its own hard link
//! of this binary (`DIR/w<i>`), which a registration entry selects by
//! `exe`. The peer connects to the workload socket, hands the connected
//! socket to the bench over its standard input (SCM_RIGHTS) and waits
//! there until the bench closes it; the bench then speaks gRPC on every
//! connection from one runtime, and the daemon attests each call to the
//! peer that connected.

use std::{
    io::{IoSlice, IoSliceMut, Read},
    mem::MaybeUninit,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};

use crate::client::CliResult;

/// The running peers; dropping them ends every peer process.
pub struct Peers {
    /// The bench's end of each peer's standard input.
    links: Vec<OwnedFd>,
    children: Vec<Child>,
}

/// The executable of peer `i` under `dir`.
pub fn exe_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("w{i}"))
}

/// Makes `n` hard links to this binary in `dir` (a copy first, when the
/// binary is on another file system).
pub fn link_executables(dir: &Path, n: usize) -> CliResult<()> {
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let base = dir.join("hsmca");
    if std::fs::hard_link(&exe, &base).is_err() {
        std::fs::copy(&exe, &base)
            .map_err(|e| format!("cannot copy {} to {}: {e}", exe.display(), base.display()))?;
    }
    for i in 0..n {
        std::fs::hard_link(&base, exe_path(dir, i))
            .map_err(|e| format!("cannot link {}: {e}", exe_path(dir, i).display()))?;
    }
    Ok(())
}

impl Peers {
    /// Starts the `n` peers of `dir` against `socket` and collects their
    /// connections (blocking).
    pub fn start(dir: &Path, n: usize, socket: &Path) -> CliResult<(Self, Vec<OwnedFd>)> {
        let mut peers = Self {
            links: Vec::with_capacity(n),
            children: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (ours, theirs) = socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )?;
            let child = Command::new(exe_path(dir, i))
                .arg("bench-workload-peer")
                .arg("--socket")
                .arg(socket)
                .env_clear()
                .stdin(Stdio::from(theirs))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start workload peer {i}: {e}"))?;
            peers.links.push(ours);
            peers.children.push(child);
        }
        let mut conns = Vec::with_capacity(n);
        for (i, link) in peers.links.iter().enumerate() {
            conns.push(receive_fd(link).map_err(|e| format!("workload peer {i}: {e}"))?);
        }
        Ok((peers, conns))
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        // End of file on their standard input: every peer exits.
        self.links.clear();
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn receive_fd(link: &OwnedFd) -> CliResult<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        link,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err("it exited before connecting".into());
    }
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err("it sent no connection".into())
}

/// `hsmca bench-workload-peer`: connects to `socket`, passes the
/// connection to the bench over standard input, and waits until the bench
/// closes it.
pub fn peer_main(socket: &Path) -> CliResult {
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let stdin = std::io::stdin();
    let fds = [conn.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("no room for the connection in the message".into());
    }
    sendmsg(
        stdin.as_fd(),
        &[IoSlice::new(b"c")],
        &mut control,
        SendFlags::empty(),
    )?;
    drop(conn);
    // Stay alive (the daemon looks the caller up in /proc) until the
    // bench is done.
    let mut rest = Vec::new();
    let _ = stdin.lock().read_to_end(&mut rest);
    Ok(())
}
