//! The daemon under systemd: the unit files pass `systemd-analyze verify`
//! and stay at a low `systemd-analyze security` exposure; socket activation
//! (a listening fd passed as LISTEN_FDS by `systemd-socket-activate`, as
//! systemd does); the `sd_notify` protocol on a datagram socket the test
//! binds (STATUS, READY only once serving, STOPPING, watchdog pings earned
//! by signatures and stopped by a wedged token); and the start-up refusals
//! for a socket directory others could write and a PIN file others can read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::UnixDatagram,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Ca, HSMCA, KeyPair, run, run_ok};

/// The exposure `systemd-analyze security` may report for hsmca.service
/// (0 = fully locked down, 10 = unprotected). systemd 252 measured 0.4; the
/// margin leaves room for newer systemd versions scoring new settings.
const MAX_EXPOSURE: f64 = 1.0;

/// The unit files, copied next to each other with /usr/bin/hsmca
/// (ExecCondition=, ExecStart=) replaced by the binary under test (verify
/// insists that the program exists). Nothing else is changed.
fn units_for_test(dir: &Path) -> PathBuf {
    let units = dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    let service = std::fs::read_to_string(common::repo().join("systemd/hsmca.service")).unwrap();
    let exec = "ExecStart=/usr/bin/hsmca serve --config /etc/hsmca/hsmca.toml";
    assert_eq!(
        service.lines().filter(|l| *l == exec).count(),
        1,
        "hsmca.service must start /usr/bin/hsmca"
    );
    std::fs::write(
        units.join("hsmca.service"),
        service.replace("=/usr/bin/hsmca ", &format!("={HSMCA} ")),
    )
    .unwrap();
    std::fs::copy(
        common::repo().join("systemd/hsmca.socket"),
        units.join("hsmca.socket"),
    )
    .unwrap();
    units
}

#[test]
fn units_verify_clean_and_exposure_is_low() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_test(dir.path());
    // --man=no: Documentation=man:hsmca(1) exists once the package is
    // installed (scripts/package-test.sh verifies the installed units with
    // it), not in the source tree.
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(units.join("hsmca.service"))
        .arg(units.join("hsmca.socket")));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );

    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(units.join("hsmca.service")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for hsmca.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        level <= MAX_EXPOSURE,
        "exposure {level} > {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn sysusers_and_tmpfiles_entries_apply() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    run_ok(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.path().display()))
            .arg(common::repo().join("systemd/hsmca.sysusers")),
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("hsmca:"))
        .unwrap_or_else(|| panic!("no hsmca user:\n{passwd}"));
    assert!(
        user.ends_with(":/var/lib/hsmca:/usr/sbin/nologin"),
        "{user}"
    );
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("hsmca:")), "{group}");
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    run_ok(
        Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", root.path().display()))
            .arg("--create")
            .arg(common::repo().join("systemd/hsmca.tmpfiles")),
    );
    for (dir, mode, owner) in [("etc/hsmca", 0o750, 0), ("run/hsmca", 0o750, uid)] {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{dir}");
        assert_eq!(meta.uid(), owner, "{dir}");
    }
}

/// Datagrams received on a NOTIFY_SOCKET the test binds, with their time.
struct Notifications {
    path: PathBuf,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Notifications {
    fn bind(path: PathBuf) -> Self {
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => s
                        .lock()
                        .unwrap()
                        .push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into())),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
                if Arc::strong_count(&s) == 1 {
                    return;
                }
            }
        });
        Self { path, seen }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for a datagram with `line` as one of its lines; returns its index.
    fn wait_for(&self, line: &str, child: &mut Child, log: &Path) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(i) = self
                .all()
                .iter()
                .position(|(_, m)| m.lines().any(|l| l == line))
            {
                return i;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "daemon exited with {status} before {line:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?}; got {:#?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pings_after(&self, t: Instant) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(at, m)| *at > t && m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| at)
            .collect()
    }
}

fn kill(sig: &str, pid: u32) {
    run_ok(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string()),
    );
}

fn wait_exit(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `hsmca serve` exec'd by `sh` so that WATCHDOG_PID can name the daemon's
/// own pid, as systemd sets it.
fn spawn_notified(ca: &Ca, notify: &Path, watchdog_pid: Option<&str>, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = ca.hsmca();
    cmd.env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "1000000")
        .env("HSMCA_TEST_FAULTS", ca.path("faults"))
        .env("HSMCA_LOG__LEVEL", "hsmca=debug,info");
    let script = match watchdog_pid {
        Some(pid) => format!("WATCHDOG_PID={pid} exec \"$0\" \"$@\""),
        None => "WATCHDOG_PID=$$ exec \"$0\" \"$@\"".to_string(),
    };
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(script)
        .arg(HSMCA)
        .args(["serve", "--config"])
        .arg(ca.config());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_after_serving_watchdog_from_signatures_and_stopping() {
    let ca = Ca::new("p256");
    std::fs::write(ca.path("faults"), "").unwrap();
    let notes = Notifications::bind(ca.path("notify.sock"));
    let log = ca.path("daemon.log");
    let mut child = spawn_notified(&ca, &notes.path, None, &log);

    let ready = notes.wait_for("READY=1", &mut child, &log);
    // At READY=1 the daemon already serves: the first connection works and
    // a certificate is issued, without waiting or retrying.
    assert!(
        std::os::unix::net::UnixStream::connect(ca.socket()).is_ok(),
        "READY=1 before the socket accepts connections"
    );
    ca.assert_serves().await;
    let all = notes.all();
    let before: Vec<&str> = all[..ready].iter().map(|(_, m)| m.as_str()).collect();
    let statuses = [
        "STATUS=logging in to the token",
        "STATUS=start-up self-test: signing with the token",
        "STATUS=opening the store",
    ];
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(before.get(i).map(|m| m.trim_end()), Some(*s), "{all:#?}");
    }
    assert!(
        all[ready]
            .1
            .contains(&format!("STATUS=serving on {}", ca.socket().display())),
        "{all:#?}"
    );

    // Watchdog: WATCHDOG_USEC=1s, so a signed-and-verified probe every
    // 500 ms earns a ping.
    let ready_at = all[ready].0;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let pings = notes.pings_after(ready_at);
    assert!(pings.len() >= 3, "{:#?}", notes.all());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("systemd watchdog"), "{log_text}");

    // A wedged token: every C_Sign hangs for 3 s. The probes time out, the
    // pings stop for longer than WatchdogSec (systemd would restart the
    // daemon), STATUS says why, and once C_Sign returns the pings resume.
    let wedged = Instant::now();
    std::fs::write(ca.path("faults"), "stall sign 3s count=2\n").unwrap();
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let after: Vec<Instant> = notes.pings_after(wedged);
    let mut gaps = after.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>();
    if let Some(first) = after.first() {
        gaps.push(*first - wedged);
    }
    assert!(
        gaps.iter().any(|g| *g >= Duration::from_millis(2000)),
        "pings went on while C_Sign hung: {gaps:?}\n{:#?}",
        notes.all()
    );
    assert!(
        notes
            .all()
            .iter()
            .any(|(at, m)| *at > wedged && m.contains("STATUS=watchdog probe failed")),
        "{:#?}",
        notes.all()
    );
    let last = *after.last().expect("pings never resumed");
    assert!(
        last > wedged + Duration::from_secs(4),
        "pings did not resume once C_Sign returned: {:#?}",
        notes.all()
    );
    assert!(
        notes.all().iter().any(|(at, m)| *at > wedged
            && m.contains("WATCHDOG=1")
            && m.contains("STATUS=serving")),
        "{:#?}",
        notes.all()
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    kill("TERM", child.id());
    let status = wait_exit(&mut child, &log);
    assert!(status.success(), "exit {status}");
    let all = notes.all();
    let stopping = all
        .iter()
        .position(|(_, m)| m.lines().any(|l| l == "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1: {all:#?}"));
    assert!(stopping > ready);
}

#[tokio::test]
async fn no_watchdog_pings_for_another_pid() {
    let ca = Ca::new("p256");
    std::fs::write(ca.path("faults"), "").unwrap();
    let notes = Notifications::bind(ca.path("notify.sock"));
    let log = ca.path("daemon.log");
    // WATCHDOG_PID names another process (pid 1): not ours to ping for.
    let mut child = spawn_notified(&ca, &notes.path, Some("1"), &log);
    let ready = notes.wait_for("READY=1", &mut child, &log);
    ca.assert_serves().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at = notes.all()[ready].0;
    assert!(notes.pings_after(at).is_empty(), "{:#?}", notes.all());
    kill("TERM", child.id());
    assert!(wait_exit(&mut child, &log).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_passed_socket_and_leaves_it() {
    let ca = Ca::new("p256");
    let sock = ca.path("activated.sock");
    let log_path = ca.path("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // systemd-socket-activate binds and listens, then on the first
    // connection execs the daemon with the socket as fd 3 and
    // LISTEN_FDS=1, LISTEN_PID=<its pid> — what systemd does for
    // hsmca.socket. It passes only the -E variables on.
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(&sock);
    for (k, v) in &ca.env {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    let mut child = cmd
        .arg(HSMCA)
        .args(["serve", "--config"])
        .arg(ca.config())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not listen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let meta = std::fs::metadata(&sock).unwrap();
    let inode = (meta.dev(), meta.ino());
    let mode = meta.permissions().mode() & 0o777;

    // The first request starts the daemon and is answered by it.
    let key = KeyPair::new(ca.dir.path(), "p256");
    let mut client = hsmca::proto::certificate_authority_client::CertificateAuthorityClient::new(
        hsmca::cli::client::connect(&sock).await.unwrap(),
    );
    let cert = tokio::time::timeout(
        Duration::from_secs(60),
        client.generate_client_certificate(hsmca::proto::GenerateClientCertificateRequest {
            public_key: key.public_pem(),
            common_name: "activated".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("no answer on the activated socket")
    .unwrap_or_else(|e| {
        panic!(
            "{e:?}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    })
    .into_inner();
    assert!(
        cert.pem_certificate
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let daemon_log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        daemon_log.contains("using the socket passed by systemd"),
        "{daemon_log}"
    );
    // Served on the passed socket as it was: not re-bound, not chmod-ed,
    // and server.socket was never bound.
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.dev(), meta.ino()), inode, "the socket was re-bound");
    assert_eq!(meta.permissions().mode() & 0o777, mode);
    assert!(!ca.socket().exists(), "server.socket was bound too");

    // SIGTERM: a clean exit that leaves the socket file to its owner.
    kill("TERM", child.id());
    let status = wait_exit(&mut child, &log_path);
    assert!(
        status.success(),
        "exit {status}\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let meta = std::fs::metadata(&sock).expect("the daemon removed a socket it did not create");
    assert_eq!((meta.dev(), meta.ino()), inode);
}

#[test]
fn activation_with_a_wrong_descriptor_is_refused() {
    let ca = Ca::new("p256");
    // LISTEN_FDS for this pid, but fd 3 is not a listening Unix socket.
    let out = run(Command::new("sh")
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\" 3</dev/null")
        .arg(HSMCA)
        .args(["serve", "--config"])
        .arg(ca.config())
        .envs(ca.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("socket activation") && err.contains("not usable"),
        "{err}"
    );
    // LISTEN_FDS meant for another process is ignored: server.socket is used.
    let mut child = Command::new(HSMCA)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .envs(ca.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["serve", "--config"])
        .arg(ca.config())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(ca.socket()).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(
            Instant::now() < deadline,
            "daemon did not bind server.socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill("TERM", child.id());
    assert!(child.wait().unwrap().success());
}

#[test]
fn unsafe_socket_directory_and_readable_pin_file_are_refused() {
    let ca = Ca::new("p256");
    let serve = |extra: &[(&str, &Path)]| {
        let mut cmd = ca.hsmca();
        for (k, v) in extra {
            cmd.env(k, v);
        }
        run(cmd.args(["serve", "--config"]).arg(ca.config()))
    };
    // A world-writable directory, with or without the sticky bit.
    for mode in [0o777, 0o1777] {
        let dir = ca.path(&format!("shared-{mode:o}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let sock = dir.join("hsmca.sock");
        let out = serve(&[("HSMCA_SERVER__SOCKET", &sock)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started in a {mode:o} directory");
        assert!(
            err.contains(&format!("socket directory {}", dir.display()))
                && err.contains("writable by every user")
                && err.contains("chmod o-w"),
            "{err}"
        );
        assert!(!sock.exists());
    }
    // A PIN file its group can read.
    let pin = ca.path("pin-0640");
    std::fs::write(&pin, ca.pin()).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = serve(&[("HSMCA_TOKEN__PIN_FILE", &pin)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a 0640 PIN file");
    assert!(
        err.contains(&format!("PIN file {} has mode 0640", pin.display()))
            && err.contains(&format!("chmod 600 {}", pin.display())),
        "{err}"
    );
    assert!(!err.contains(&ca.pin()), "the PIN in an error");
    assert!(!ca.socket().exists());
}
