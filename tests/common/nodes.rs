//! Several daemons on one token directory and one PostgreSQL database: each
//! node has a directory of its own for its sockets and log, and shares the
//! [`super::Ca`]'s config, token and CA.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hsmca::proto::{
    certificate_authority_client::CertificateAuthorityClient,
    certificate_requests_client::CertificateRequestsClient,
};
use tonic::transport::Channel;

use super::Ca;

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// A node of `ca` named `name` (not started).
    pub fn new(ca: &Ca, name: &str) -> Self {
        let dir = ca.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = ca.env.clone();
        env.push((
            "HSMCA_SERVER__SOCKET".into(),
            dir.join("hsmca.sock").display().to_string(),
        ));
        Self {
            name: name.into(),
            dir,
            env,
            child: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("hsmca.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `hsmca ARGS` with this node's environment.
    pub fn hsmca(&self, ca: &Ca) -> Command {
        let mut c = ca.hsmca();
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // The development config turns the workload endpoint on; each node
        // needs its own socket for it too (unless a test's config has none).
        let config = std::fs::read_to_string(ca.config()).unwrap_or_default();
        if config.contains("\n[workload]") {
            c.env("HSMCA_WORKLOAD__SOCKET", self.dir.join("workload.sock"));
        }
        c
    }

    /// Starts the daemon without waiting for its socket.
    pub fn spawn(&mut self, ca: &Ca) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = self
            .hsmca(ca)
            .args(["serve", "--config"])
            .arg(ca.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the socket accepts connections.
    pub fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before serving:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn start(&mut self, ca: &Ca) {
        self.spawn(ca);
        self.wait_serving();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node not running");
        super::run_ok(Command::new("kill").arg("-TERM").arg(c.id().to_string()));
        c.wait().unwrap()
    }

    /// Waits for the daemon to exit by itself (start-up refused).
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node not running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> CertificateAuthorityClient<Channel> {
        CertificateAuthorityClient::new(hsmca::cli::client::connect(&self.socket()).await.unwrap())
    }

    pub async fn requests(&self) -> CertificateRequestsClient<Channel> {
        CertificateRequestsClient::new(hsmca::cli::client::connect(&self.socket()).await.unwrap())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
