//! The system under test: a fresh token (`softhsm-setup/setup.sh`), `hsmca
//! init`, and `hsmca serve` as a child process whose CPU time and memory are
//! read from `/proc/PID/`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::client::CliResult;

/// Where `softhsm-setup/setup.sh` is: `--setup`, `HSMCA_SETUP`, the current
/// directory, the source tree this binary was built from, or a directory
/// above the binary.
pub fn find_setup(given: Option<&Path>) -> CliResult<PathBuf> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(format!("--setup {}: no such file", p.display()).into())
        };
    }
    let rel = Path::new("softhsm-setup/setup.sh");
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("HSMCA_SETUP") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(rel.to_owned());
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|d| d.join(rel)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| "softhsm-setup/setup.sh not found; give its path with --setup".into())
}

/// Runs a command and fails with its output when it fails.
pub fn run_quiet(cmd: &mut Command, what: &str) -> CliResult<std::process::Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(out)
}

/// A token directory with a CA key of one type.
pub struct Testbed {
    pub dir: tempfile::TempDir,
    pub key_type: String,
    /// Environment for every hsmca process of this testbed.
    pub env: Vec<(String, String)>,
}

impl Testbed {
    pub fn new(setup: &Path, key_type: &str, extra_env: &[(&str, &str)]) -> CliResult<Self> {
        let dir = tempfile::Builder::new().prefix("hsmca-bench-").tempdir()?;
        run_quiet(
            Command::new("bash").arg(setup).arg(dir.path()),
            "softhsm-setup/setup.sh",
        )?;
        let mut env = vec![
            (
                "SOFTHSM2_CONF".to_owned(),
                dir.path().join("softhsm2.conf").display().to_string(),
            ),
            ("HSMCA_CA__KEY_TYPE".to_owned(), key_type.to_owned()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let bed = Self {
            dir,
            key_type: key_type.to_owned(),
            env,
        };
        run_quiet(
            bed.hsmca().args(["init", "--config"]).arg(bed.config()),
            "hsmca init",
        )?;
        Ok(bed)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("hsmca.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("hsmca.sock")
    }

    /// The daemon's configuration as it will see it (with our environment).
    pub fn load_config(&self) -> CliResult<crate::config::Config> {
        let mut env: std::collections::HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("HSMCA_"))
            .collect();
        env.extend(self.env.iter().cloned());
        Ok(crate::config::Config::load_with_env(&self.config(), &env)?)
    }

    /// This binary, with the testbed's environment and no PIN in it.
    pub fn hsmca(&self) -> Command {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hsmca"));
        let mut c = Command::new(exe);
        for (k, _) in std::env::vars() {
            if k.starts_with("HSMCA_") {
                c.env_remove(k);
            }
        }
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }
}

/// A running `hsmca serve`.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    /// From exec until the socket accepted a connection.
    pub ready: Duration,
}

impl Daemon {
    pub fn start(bed: &Testbed) -> CliResult<Self> {
        Self::start_at(bed, &bed.socket(), &bed.path("daemon.log"))
    }

    /// One of several daemons of `bed`: its own socket and log, and its
    /// own workload socket beside the socket (two daemons cannot listen on
    /// one).
    pub fn start_at(bed: &Testbed, socket: &Path, log: &Path) -> CliResult<Self> {
        Self::start_with(bed, &bed.config(), socket, log, &[])
    }

    /// A daemon of `bed` with another configuration file and more
    /// environment.
    pub fn start_with(
        bed: &Testbed,
        config: &Path,
        socket: &Path,
        log: &Path,
        env: &[(&str, String)],
    ) -> CliResult<Self> {
        let log = log.to_owned();
        let file = std::fs::File::create(&log)?;
        let t0 = Instant::now();
        let mut command = bed.hsmca();
        command
            .env("HSMCA_SERVER__SOCKET", socket)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        // Two daemons cannot listen on one workload socket: each has its own
        // beside its API socket (unless the caller's environment says).
        if bed.load_config()?.workload.socket.is_some()
            && !env.iter().any(|(k, _)| *k == "HSMCA_WORKLOAD__SOCKET")
        {
            command.env(
                "HSMCA_WORKLOAD__SOCKET",
                socket.with_file_name("workload.sock"),
            );
        }
        let child = command
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start hsmca serve: {e}"))?;
        let mut d = Self {
            child,
            log,
            ready: Duration::ZERO,
        };
        let deadline = t0 + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                d.ready = t0.elapsed();
                return Ok(d);
            }
            if let Some(status) = d.child.try_wait()? {
                return Err(format!("hsmca serve exited with {status}:\n{}", d.log_text()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("hsmca serve did not start:\n{}", d.log_text()).into());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The token start-up time the daemon logged (`token_ms=`), in ms.
    pub fn logged_token_ms(&self) -> Option<f64> {
        let text = strip_ansi(&self.log_text());
        let at = text.find("token_ms=")? + "token_ms=".len();
        let num: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        num.parse().ok()
    }

    /// utime + stime of the daemon, in microseconds.
    pub fn cpu_us(&self) -> CliResult<f64> {
        proc_cpu_us(&format!("/proc/{}/stat", self.pid()))
    }

    /// A `Vm…:` line of /proc/PID/status, in KiB.
    pub fn vm_kib(&self, field: &str) -> CliResult<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {field} in /proc/{}/status", self.pid()).into())
    }

    /// SIGTERM and wait (killed after 30 s).
    pub fn stop(mut self) -> CliResult {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err("hsmca serve did not stop within 30 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `text` without ANSI colour sequences (ESC [ … letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// utime + stime from a `/proc/…/stat` file, in microseconds.
pub fn proc_cpu_us(path: &str) -> CliResult<f64> {
    let text = std::fs::read_to_string(path)?;
    // The command name may hold spaces and parentheses: count after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> CliResult<f64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("{path}: field {i} missing").into())
    };
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(14)? + ticks(15)?) * 1e6 / hz)
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
