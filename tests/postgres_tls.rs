//! PostgreSQL over TLS, configured as libpq users do: `sslmode=verify-full`
//! and `sslrootcert` in `state.database`, the password from
//! `state.database_password_file`. A private server with a certificate from
//! a test CA accepts only TLS on its TCP port (`hostssl` with SCRAM,
//! `hostnossl` rejected): the daemon connects, issues and records; a wrong
//! root certificate, TLS turned off and a wrong password are each refused
//! at start-up with a clear message that never holds the password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Ca, KeyPair,
    postgres::{PgServer, USER, bin},
    run, run_ok,
};

const PASSWORD: &str = "tls-test-db-password-7f3a";

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA (`name`.pem) and, with `server`, a certificate for localhost and
/// 127.0.0.1 that it signed (server.crt, server.key).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// psql on the server's Unix socket, which carries the TCP port's number.
fn psql(pg: &PgServer, port: u16, db: &str, sql: &str) -> String {
    let out = run_ok(
        Command::new(bin("psql"))
            .arg("-h")
            .arg(&pg.sockets)
            .args(["-p", &port.to_string(), "-U", USER, "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `hsmca serve` with `env` over the CA's: waits for it to exit by itself
/// (a refused start-up) and returns what it printed.
fn refused_start(ca: &Ca, env: &[(&str, &str)]) -> String {
    let mut child = ca
        .hsmca()
        .envs(env.iter().copied())
        .args(["serve", "--config"])
        .arg(ca.config())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not give up on a refused database");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(PASSWORD),
        "the password was printed:\n{text}"
    );
    text
}

#[test]
fn the_store_over_tls_verifies_the_server_and_refuses_what_it_should() {
    let pg = PgServer::start();
    let db = pg.create_db();
    pg.psql(
        "postgres",
        &format!("ALTER USER {USER} PASSWORD '{PASSWORD}'"),
    );

    // TLS material: the server's certificate from one CA, and another CA.
    let tls = tempfile::tempdir().unwrap();
    make_ca(tls.path(), "db-ca");
    make_ca(tls.path(), "other-ca");
    make_server_cert(tls.path(), "db-ca");
    for f in ["server.crt", "server.key"] {
        let to = pg.data.join(f);
        std::fs::copy(tls.path().join(f), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        run_ok(
            Command::new("chown")
                .arg("--reference")
                .arg(&pg.data)
                .arg(&to),
        );
    }
    std::fs::write(
        pg.data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    pg.stop();
    let port = free_port();
    pg.start_with(&format!(
        "-c listen_addresses=127.0.0.1 -c port={port} -c ssl=on \
         -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
    ));

    let password_file = tls.path().join("db-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = |root: &str, mode: &str| {
        format!(
            "postgres://{USER}@localhost:{port}/{db}?sslmode={mode}&sslrootcert={}",
            tls.path().join(root).display()
        )
    };
    let good = url("db-ca.pem", "verify-full");
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_STATE__DATABASE", &good),
            (
                "HSMCA_STATE__DATABASE_PASSWORD_FILE",
                &password_file.display().to_string(),
            ),
        ],
    );

    // verify-full against the right root: serves, issues, records.
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let pub_pem = ca.path("client.pub.pem");
    std::fs::write(&pub_pem, key.public_pem()).unwrap();
    let out = run(ca
        .hsmca()
        .args(["issue", "--socket"])
        .arg(ca.socket())
        .arg("--public-key")
        .arg(&pub_pem)
        .args(["--cn", "over-tls", "--out"])
        .arg(ca.path("cert.pem")));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ca.log()
    );
    assert_eq!(
        psql(
            &pg,
            port,
            &db,
            "SELECT count(*) FROM certificates WHERE subject LIKE '%over-tls%'"
        ),
        "1"
    );
    // The daemon's connections are encrypted (the server refuses others,
    // and says so in pg_stat_ssl).
    assert_ne!(
        psql(
            &pg,
            port,
            &db,
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = current_database() AND s.ssl AND a.client_addr IS NOT NULL"
        ),
        "0"
    );
    assert!(ca.stop().success(), "{}", ca.log());
    assert!(!ca.log().contains(PASSWORD));

    // A root that did not sign the server's certificate.
    let text = refused_start(
        &ca,
        &[("HSMCA_STATE__DATABASE", &url("other-ca.pem", "verify-full"))],
    );
    assert!(
        text.contains("state.database") && text.to_lowercase().contains("certificate"),
        "{text}"
    );
    // TLS off: the server's hostnossl rule refuses the connection.
    let text = refused_start(
        &ca,
        &[("HSMCA_STATE__DATABASE", &url("db-ca.pem", "disable"))],
    );
    assert!(
        text.contains("state.database") && text.contains("no encryption"),
        "{text}"
    );
    // The wrong password: the message names where it came from.
    let wrong = tls.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = refused_start(
        &ca,
        &[(
            "HSMCA_STATE__DATABASE_PASSWORD_FILE",
            &wrong.display().to_string(),
        )],
    );
    assert!(
        text.contains("password authentication failed")
            && text.contains("state.database_password_file"),
        "{text}"
    );
}
