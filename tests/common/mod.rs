//! Test harness: every test gets its own SoftHSM2 token made by
//! `softhsm-setup/setup.sh`, its own `hsmca init`, and a real `hsmca serve`
//! process on its own socket. Nothing is mocked; certificates are checked
//! with openssl and pkilint.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod nodes;
pub mod postgres;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use hsmca::proto::{
    GenerateClientCertificateRequest, certificate_authority_client::CertificateAuthorityClient,
};
use tonic::transport::Channel;

pub const HSMCA: &str = env!("CARGO_BIN_EXE_hsmca");
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A program installed in the test venv (pkilint, python), or on PATH.
pub fn py_tool(name: &str) -> PathBuf {
    match std::env::var_os("HSMCA_TEST_PYTHON") {
        Some(py) => Path::new(&py).parent().unwrap().join(name),
        None => PathBuf::from(name),
    }
}

pub fn python() -> PathBuf {
    std::env::var_os("HSMCA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The pkcs11-spy module from OpenSC.
pub fn spy_module() -> PathBuf {
    for dir in [
        "/usr/lib/x86_64-linux-gnu/pkcs11",
        "/usr/lib/aarch64-linux-gnu/pkcs11",
        "/usr/lib/pkcs11",
    ] {
        let p = Path::new(dir).join("pkcs11-spy.so");
        if p.exists() {
            return p;
        }
    }
    panic!("pkcs11-spy.so not found; scripts/test.sh installs opensc");
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether the suites run against PostgreSQL (see postgres::SHARED_ENV).
pub fn on_postgres() -> bool {
    std::env::var_os(postgres::SHARED_ENV).is_some()
}

/// One token directory with a config, a CA, and optionally a running daemon.
pub struct Ca {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Ca {
    /// A fresh token and `hsmca init` for a CA key of `key_type`.
    pub fn new(key_type: &str) -> Self {
        Self::with_env(key_type, &[])
    }

    pub fn with_env(key_type: &str, extra: &[(&str, &str)]) -> Self {
        let ca = Self::token_only(key_type, extra);
        run_ok(ca.hsmca().args(["init", "--config"]).arg(ca.config()));
        ca
    }

    /// setup.sh only: token, pin and config, no CA key yet.
    pub fn token_only(key_type: &str, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hsmca-test-")
            .tempdir()
            .unwrap();
        run_ok(
            Command::new("bash")
                .arg(repo().join("softhsm-setup/setup.sh"))
                .arg(dir.path())
                .stdin(Stdio::null()),
        );
        let mut env = vec![
            (
                "SOFTHSM2_CONF".to_string(),
                dir.path().join("softhsm2.conf").display().to_string(),
            ),
            ("HSMCA_CA__KEY_TYPE".to_string(), key_type.to_string()),
        ];
        // The suites run against PostgreSQL too: a database of its own on
        // the shared server (see postgres::SHARED_ENV).
        if let Some(pg) = postgres::PgServer::shared() {
            let db = pg.create_db();
            env.push(("HSMCA_STATE__DATABASE".into(), pg.url(&db)));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self {
            dir,
            env,
            child: None,
        }
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
    pub fn pin(&self) -> String {
        std::fs::read_to_string(self.path("pin"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Appends TOML (policy rules, usually) to the daemon's config; takes
    /// effect at the next start or SIGHUP.
    pub fn append_config(&self, toml: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.config())
            .unwrap();
        writeln!(f, "\n{toml}").unwrap();
    }

    /// Replaces the development policy setup.sh wrote with `toml` (rules).
    pub fn set_policy(&self, toml: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let cut = text
            .find("\n# Who may have which certificates")
            .expect("setup.sh's policy section");
        std::fs::write(
            self.config(),
            format!(
                "{}\n# Who may have which certificates (set by the test)\n{toml}\n",
                &text[..cut]
            ),
        )
        .unwrap();
    }

    /// Replaces ca.pem with a well-formed CA certificate (CN "Not The Token
    /// Key") for a fresh P-256 key that is not in the token.
    pub fn replace_ca_cert_with_another_key(&self) {
        run_ok(Command::new("openssl").current_dir(self.dir.path()).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=Not The Token Key",
            "-keyout",
            "other.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
    }

    /// Makes uid 0 (the tests) an administrator.
    pub fn make_root_admin(&self) {
        self.append_config(
            "[[policy.rules]]\nname = \"test administrator\"\nuids = [0]\nadmin = true\n\
             profiles = [\"client\", \"server\", \"intermediate\"]\ndns = [\"**\"]\n\
             uris = [\"**\"]\nips = [\"**\"]\ncommon_names = [\"**\"]\n",
        );
    }

    /// An `hsmca` command with this CA's environment.
    pub fn hsmca(&self) -> Command {
        self.command(Path::new(HSMCA))
    }

    /// `bin` (a build of `hsmca`) with this CA's environment.
    pub fn command(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.env_remove("HSMCA_PIN");
        c
    }

    /// Starts `hsmca serve` and waits until the socket accepts connections.
    pub fn start(&mut self) {
        self.start_binary(Path::new(HSMCA));
    }

    /// [`Ca::start`] with another build of the daemon.
    pub fn start_binary(&mut self, bin: &Path) {
        let log = std::fs::File::create(self.path("daemon.log")).unwrap();
        let child = self
            .command(bin)
            .args(["serve", "--config"])
            .arg(self.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon exited with {status} before serving:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn started(key_type: &str) -> Self {
        let mut ca = Self::new(key_type);
        ca.start();
        ca
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        run_ok(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(self.pid().to_string()),
        );
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.stop_after_signal()
    }

    /// Routes the daemon's PKCS#11 calls through OpenSC's pkcs11-spy (takes
    /// effect at the next start); returns the spy's log file.
    pub fn use_spy(&mut self) -> PathBuf {
        let log = self.path("spy.log");
        self.env.push((
            "HSMCA_TOKEN__MODULE".into(),
            spy_module().display().to_string(),
        ));
        self.env.push(("PKCS11SPY".into(), SOFTHSM.into()));
        self.env
            .push(("PKCS11SPY_OUTPUT".into(), log.display().to_string()));
        log
    }

    /// Issues a certificate for `key` with common name `cn`.
    pub async fn issue_cn(&self, key: &KeyPair, cn: &str) -> hsmca::proto::ClientCertificate {
        self.client()
            .await
            .generate_client_certificate(GenerateClientCertificateRequest {
                public_key: key.public_pem(),
                common_name: cn.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("issuing {cn}: {e:?}\n{}", self.log()))
            .into_inner()
    }

    /// Waits for the exit after a signal was already sent.
    pub fn stop_after_signal(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub async fn client(&self) -> CertificateAuthorityClient<Channel> {
        CertificateAuthorityClient::new(hsmca::cli::client::connect(&self.socket()).await.unwrap())
    }

    /// Issues a certificate for a fresh P-256 key: proof the daemon serves.
    pub async fn assert_serves(&self) {
        let key = KeyPair::new(self.dir.path(), "p256");
        let resp = self
            .client()
            .await
            .generate_client_certificate(GenerateClientCertificateRequest {
                public_key: key.public_pem(),
                common_name: "still-serving".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("daemon stopped serving: {e:?}\n{}", self.log()))
            .into_inner();
        assert!(
            resp.pem_certificate
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }

    /// `openssl verify` of `cert_pem` against this CA's root, with the
    /// reply's chain as untrusted intermediates; and pkilint with no error.
    pub fn check_with_openssl(&self, cert_pem: &str, chain: &[String], root_pem: &str) {
        let id = rand_suffix();
        let cert = self.path(&format!("check-{id}-cert.pem"));
        let untrusted = self.path(&format!("check-{id}-chain.pem"));
        let root = self.path(&format!("check-{id}-root.pem"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&untrusted, chain.concat()).unwrap();
        std::fs::write(&root, root_pem).unwrap();
        let out = run_ok(
            Command::new("openssl")
                .args(["verify", "-x509_strict", "-CAfile"])
                .arg(&root)
                .arg("-untrusted")
                .arg(&untrusted)
                .arg(&cert),
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
        let lint = run(Command::new(py_tool("lint_pkix_cert"))
            .args(["lint", "-s", "ERROR"])
            .arg(&cert));
        assert!(
            lint.status.success(),
            "pkilint found errors in the leaf:\n{}{}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A subject key pair made by openssl (someone else's code).
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    /// kind: p256, p384, p521, secp256k1, rsa1024, rsa2048, rsa3072, ed25519
    pub fn new(dir: &Path, kind: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let private = dir.join(format!("key-{kind}-{n}.pem"));
        let public = dir.join(format!("key-{kind}-{n}.pub"));
        let mut cmd = Command::new("openssl");
        cmd.arg("genpkey");
        match kind {
            "p256" => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            "p384" => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
            "p521" => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"]),
            "secp256k1" => cmd.args([
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ]),
            "ed25519" => cmd.args(["-algorithm", "ED25519"]),
            rsa if rsa.starts_with("rsa") => {
                let bits = &rsa[3..];
                cmd.args(["-algorithm", "RSA", "-pkeyopt"])
                    .arg(format!("rsa_keygen_bits:{bits}"))
            }
            other => panic!("unknown key kind {other}"),
        };
        run_ok(cmd.arg("-out").arg(&private));
        run_ok(
            Command::new("openssl")
                .arg("pkey")
                .arg("-in")
                .arg(&private)
                .arg("-pubout")
                .arg("-out")
                .arg(&public),
        );
        Self { private, public }
    }

    pub fn public_pem(&self) -> String {
        std::fs::read_to_string(&self.public).unwrap()
    }

    /// A CSR signed by this key, with `subject` (e.g. "/CN=x") and an
    /// optional subjectAltName value (e.g. "DNS:a.example,IP:10.0.0.1").
    pub fn csr(&self, subject: &str, san: Option<&str>) -> String {
        let out = self
            .private
            .with_extension(format!("{}.csr", rand_suffix()));
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-new", "-key"])
            .arg(&self.private)
            .args(["-subj", subject]);
        if let Some(san) = san {
            cmd.arg("-addext").arg(format!("subjectAltName={san}"));
        }
        run_ok(cmd.arg("-out").arg(&out));
        std::fs::read_to_string(out).unwrap()
    }
}

fn rand_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    COUNTER
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .to_string()
}
