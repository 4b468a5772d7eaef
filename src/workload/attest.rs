//! Who is calling, from the kernel: SO_PEERCRED's uid/gid/pid, then from
//! `/proc/PID` the supplementary groups, the executable and the systemd
//! unit. Nothing the caller sends is believed.
//!
//! A PID can be reused between `connect()` and the lookup: the caller
//! exits, another process gets its PID, and `/proc/PID` would describe that
//! one. As SPIRE's peertracker does, the process directory is opened once
//! and every file is read through that descriptor (a descriptor of a
//! process that has exited reads nothing, even if the PID comes back), and
//! the process's start time is read before and after: a different start
//! time, a vanished process or an effective uid other than the socket's is
//! a refusal. A caller that exited gets nothing. A process that started
//! after its connection was accepted cannot be the one that connected, so
//! it is refused too: that closes the gap between the connection and the
//! call. The moment between `connect()` and `accept()` is closed by the
//! pidfd the kernel hands over with the connection (SO_PEERPIDFD, Linux
//! 6.5): it names the process that connected, never another one with its
//! PID, and says whether that process still exists. The PID it carries must
//! be the socket's before `/proc` is read and still be alive after: then
//! `/proc/PID` was that process all along (a PID is not reused while its
//! process lives).

use std::{
    io::Read,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use rustix::fs::{Mode, OFlags, openat, readlinkat};

use crate::{config::normal_form, peer::Peer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("the socket gave no process id for the caller")]
    NoPid,
    #[error("the calling process has exited")]
    Gone,
    #[error("the calling process changed while it was being looked up (PID reused)")]
    Changed,
    #[error("the calling process runs as uid {found}, not the uid {socket} that connected")]
    UidMismatch { socket: u32, found: u32 },
    #[error("cannot read /proc for the caller: {0}")]
    Proc(String),
}

/// The connection's peer as the transport knows it.
#[derive(Debug, Clone)]
pub struct ConnectedPeer {
    pub peer: Peer,
    /// How long ago the connection was accepted, when the transport knows.
    pub connected_for: Option<std::time::Duration>,
    /// The connecting process as a pidfd (SO_PEERPIDFD), when the kernel
    /// gives one.
    pub pidfd: Option<std::sync::Arc<OwnedFd>>,
}

/// The PID a pidfd names now (`Pid:` of its fdinfo), or `None` once that
/// process has exited and been reaped (the kernel shows -1).
fn pidfd_pid(pidfd: &OwnedFd) -> Result<Option<i32>, AttestError> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
    let info =
        std::fs::read_to_string(&path).map_err(|e| AttestError::Proc(format!("{path}: {e}")))?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .ok_or_else(|| AttestError::Proc(format!("{path}: no Pid line")))?;
    Ok((pid > 0).then_some(pid))
}

/// Whether the pidfd still names the live process `pid`.
fn check_pidfd(pidfd: Option<&OwnedFd>, pid: i32) -> Result<(), AttestError> {
    match pidfd.map(pidfd_pid).transpose()? {
        None => Ok(()),
        Some(Some(p)) if p == pid => Ok(()),
        Some(None) => Err(AttestError::Gone),
        Some(Some(_)) => Err(AttestError::Changed),
    }
}

/// What registration entries select on. Callers with equal attributes get
/// the same SVIDs, so this is also the key of their shared view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    pub user: Option<String>,
    /// Every group the process is in (primary and supplementary, from
    /// `/proc/PID/status`), by name where the group database has one; sorted.
    pub groups: Vec<String>,
    pub exe: Option<PathBuf>,
    /// The systemd unit of the process's cgroup, e.g. `nginx.service`.
    pub unit: Option<String>,
}

/// An attested caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub pid: i32,
    pub attrs: Attributes,
}

impl Caller {
    /// `uid 1000 (alice) pid 42` for messages.
    pub fn describe(&self) -> String {
        match &self.attrs.user {
            Some(u) => format!("uid {} ({u}) pid {}", self.attrs.uid, self.pid),
            None => format!("uid {} pid {}", self.attrs.uid, self.pid),
        }
    }

    /// The caller as the store and the audit log record owners.
    pub fn peer(&self) -> Peer {
        Peer {
            uid: self.attrs.uid,
            gid: self.attrs.gid,
            pid: Some(self.pid),
        }
    }

    pub fn identity(&self) -> crate::peer::identity::Identity {
        crate::peer::identity::Identity {
            uid: self.attrs.uid,
            gid: self.attrs.gid,
            pid: Some(self.pid),
            user: self.attrs.user.clone(),
            group: uzers::get_group_by_gid(self.attrs.gid)
                .map(|g| g.name().to_string_lossy().into_owned()),
            groups: Vec::new(),
            exe: self.attrs.exe.clone(),
        }
    }
}

/// Attests `peer` (blocking: reads /proc and the user database).
pub fn attest(peer: &ConnectedPeer) -> Result<Caller, AttestError> {
    attest_in("/proc", peer)
}

fn attest_in(proc_root: &str, peer: &ConnectedPeer) -> Result<Caller, AttestError> {
    let p = peer.peer;
    let pid = p.pid.filter(|pid| *pid > 0).ok_or(AttestError::NoPid)?;
    let dir = match rustix::fs::open(
        format!("{proc_root}/{pid}"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::SRCH) => {
            return Err(AttestError::Gone);
        }
        Err(e) => return Err(AttestError::Proc(e.to_string())),
    };
    let pidfd = peer.pidfd.as_deref();
    check_pidfd(pidfd, pid)?;
    let started = start_time(&dir)?;
    if let Some(ago) = peer.connected_for
        && started_after(started, ago, &read_uptime()?)
    {
        return Err(AttestError::Changed);
    }
    let status = read(&dir, "status")?;
    let (euid, gids) = parse_status(&status)?;
    if euid != p.uid {
        return Err(AttestError::UidMismatch {
            socket: p.uid,
            found: euid,
        });
    }
    // The executable of a process that exited, or of a kernel thread, has
    // no link: that is no executable, not an error.
    let exe = readlinkat(dir.as_fd(), "exe", Vec::new())
        .ok()
        .map(|s| normal_form(std::path::Path::new(&*s.to_string_lossy())));
    let unit = unit_of_cgroup(&read(&dir, "cgroup")?);
    // Everything was read from the process that started at `started`,
    // and that is the process that connected.
    if start_time(&dir)? != started {
        return Err(AttestError::Changed);
    }
    check_pidfd(pidfd, pid)?;
    let user = uzers::get_user_by_uid(p.uid).map(|u| u.name().to_string_lossy().into_owned());
    let mut all = gids;
    all.push(p.gid);
    all.sort_unstable();
    all.dedup();
    let mut groups: Vec<String> = all
        .iter()
        .filter_map(|g| {
            uzers::get_group_by_gid(*g).map(|g| g.name().to_string_lossy().into_owned())
        })
        .collect();
    groups.sort();
    groups.dedup();
    Ok(Caller {
        pid,
        attrs: Attributes {
            uid: p.uid,
            gid: p.gid,
            user,
            groups,
            exe,
            unit,
        },
    })
}

/// A file of the process directory, read through its descriptor.
fn read(dir: &OwnedFd, name: &str) -> Result<String, AttestError> {
    let fd = openat(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(gone_or)?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) {
                AttestError::Gone
            } else {
                AttestError::Proc(format!("{name}: {e}"))
            }
        })?;
    if text.is_empty() {
        return Err(AttestError::Gone);
    }
    Ok(text)
}

fn gone_or(e: rustix::io::Errno) -> AttestError {
    match e {
        rustix::io::Errno::SRCH | rustix::io::Errno::NOENT => AttestError::Gone,
        e => AttestError::Proc(e.to_string()),
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// after boot. The command name (field 2) may hold spaces and parentheses,
/// so the fields are counted after its last `)`.
fn start_time(dir: &OwnedFd) -> Result<u64, AttestError> {
    parse_start_time(&read(dir, "stat")?)
}

/// `/proc/uptime`: seconds since boot, the clock process start times count in.
fn read_uptime() -> Result<String, AttestError> {
    std::fs::read_to_string("/proc/uptime").map_err(|e| AttestError::Proc(format!("uptime: {e}")))
}

/// Whether a process that started `start_ticks` after boot started after a
/// connection accepted `ago` before `uptime` (with two ticks of slack for
/// the clocks' resolution).
fn started_after(start_ticks: u64, ago: std::time::Duration, uptime: &str) -> bool {
    let Some(now) = uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return false;
    };
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    let started = start_ticks as f64 / hz;
    started > now - ago.as_secs_f64() + 2.0 / hz
}

fn parse_start_time(stat: &str) -> Result<u64, AttestError> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| AttestError::Proc("stat: no command name".into()))?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| AttestError::Proc("stat: no start time".into()))
}

/// (effective uid, supplementary gids) from `/proc/PID/status`.
fn parse_status(status: &str) -> Result<(u32, Vec<u32>), AttestError> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let euid = field("Uid:")
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| AttestError::Proc("status: no Uid line".into()))?;
    let groups = field("Groups:")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    Ok((euid, groups))
}

/// The systemd unit a process runs in, from its cgroup (v2 `0::/path`, or
/// the `name=systemd` hierarchy of v1): the first path component that is
/// a unit and not a slice, e.g. `nginx.service` in
/// `/system.slice/nginx.service`, `session-3.scope` in
/// `/user.slice/user-1000.slice/session-3.scope`.
pub fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| {
        l.strip_prefix("0::")
            .or_else(|| l.split_once(":name=systemd:").map(|(_, p)| p))
    })?;
    const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];
    path.split('/')
        .filter(|c| !c.is_empty() && !c.ends_with(".slice"))
        .find(|c| UNIT_SUFFIXES.iter().any(|s| c.ends_with(s)))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn units_from_cgroups() {
        assert_eq!(
            unit_of_cgroup("0::/system.slice/nginx.service\n").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit_of_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(
            unit_of_cgroup("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service")
                .as_deref(),
            Some("user@1000.service")
        );
        assert_eq!(
            unit_of_cgroup("12:cpu:/x\n1:name=systemd:/system.slice/cron.service\n").as_deref(),
            Some("cron.service")
        );
        assert_eq!(unit_of_cgroup("0::/\n"), None);
        assert_eq!(unit_of_cgroup(""), None);
    }

    #[test]
    fn start_time_is_counted_after_the_command_name() {
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat).unwrap(), 987654);
        assert!(parse_start_time("42 no paren").is_err());
    }

    #[test]
    fn a_process_younger_than_its_connection_is_not_its_caller() {
        let hz = rustix::param::clock_ticks_per_second() as u64;
        let ago = std::time::Duration::from_secs(5);
        // Up 1000 s, connection accepted at 995 s.
        assert!(!started_after(990 * hz, ago, "1000.00 1.00"));
        assert!(!started_after(995 * hz, ago, "1000.00 1.00"));
        assert!(started_after(997 * hz, ago, "1000.00 1.00"));
        assert!(!started_after(997 * hz, ago, "garbage"));
        // This process started before a connection accepted now.
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let peer = ConnectedPeer {
            peer: Peer {
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
                pid: Some(me),
            },
            connected_for: Some(std::time::Duration::ZERO),
            pidfd: None,
        };
        assert!(attest(&peer).is_ok());
        // …but not before one accepted a day ago.
        let old = ConnectedPeer {
            connected_for: Some(std::time::Duration::from_secs(86_400 * 365)),
            ..peer.clone()
        };
        assert_eq!(attest(&old), Err(AttestError::Changed));
    }

    #[test]
    fn status_gives_the_effective_uid_and_groups() {
        let s = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\nGroups:\t4 24 27 \n";
        assert_eq!(parse_status(s).unwrap(), (0, vec![4, 24, 27]));
        assert!(parse_status("Name: x\n").is_err());
    }

    #[test]
    fn this_process_attests_and_a_stranger_does_not() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let peer = |uid, pid| ConnectedPeer {
            peer: Peer {
                uid,
                gid,
                pid: Some(pid),
            },
            connected_for: None,
            pidfd: None,
        };
        let c = attest(&peer(uid, me)).unwrap();
        assert_eq!(c.pid, me);
        assert_eq!(c.attrs.uid, uid);
        assert!(c.attrs.exe.is_some());
        assert_eq!(
            attest(&peer(uid + 1, me)),
            Err(AttestError::UidMismatch {
                socket: uid + 1,
                found: uid
            })
        );
        // A process that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(attest(&peer(uid, pid)), Err(AttestError::Gone));
        assert_eq!(
            attest(&ConnectedPeer {
                peer: Peer {
                    uid,
                    gid,
                    pid: None
                },
                connected_for: None,
                pidfd: None,
            }),
            Err(AttestError::NoPid)
        );
    }

    /// The pidfd of the socket's peer decides who called: a live process
    /// attests; a pidfd whose process has exited refuses the caller even
    /// though its PID now belongs to a live process (this one stands in for
    /// the process that got the PID).
    #[test]
    fn a_pidfd_names_the_caller_even_when_its_pid_is_reused() {
        use std::os::unix::net::UnixStream;
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let (a, _b) = UnixStream::pair().unwrap();
        let mine = nix::sys::socket::getsockopt(&a, nix::sys::socket::sockopt::PeerPidfd).unwrap();
        let peer = |pidfd: OwnedFd| ConnectedPeer {
            peer: Peer {
                uid,
                gid,
                pid: Some(me),
            },
            connected_for: None,
            pidfd: Some(std::sync::Arc::new(pidfd)),
        };
        assert_eq!(attest(&peer(mine)).unwrap().pid, me);

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let theirs =
            rustix::process::pidfd_open(child_pid, rustix::process::PidfdFlags::empty()).unwrap();
        child.wait().unwrap();
        assert_eq!(attest(&peer(theirs)), Err(AttestError::Gone));
    }
}
