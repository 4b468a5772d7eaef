//! The peer: what an administrator scripts without hsmca. The OpenSSL
//! command line certifies a CSR with the CA key in the same SoftHSM2 token
//! through libengine-pkcs11-openssl, one process per certificate. The PIN
//! reaches it by `pin-source=file:` in the PKCS#11 URI, never on argv.

use std::{path::Path, process::Command, time::Instant};

use serde::Serialize;

use super::daemon::{Testbed, run_quiet};
use crate::client::CliResult;

#[derive(Debug, Clone, Serialize)]
pub struct PeerResult {
    pub runs: usize,
    pub seconds: f64,
    pub per_s: f64,
    pub command: String,
}

/// libengine-pkcs11-openssl's engine, if installed.
fn engine_installed() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
        "/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so",
        "/usr/lib/engines-3/pkcs11.so",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

pub fn run(bed: &Testbed, module: &Path, runs: usize) -> CliResult<PeerResult> {
    if !engine_installed() {
        return Err("the OpenSSL PKCS#11 engine is not installed \
                    (apt-get install libengine-pkcs11-openssl), or use --no-peer"
            .into());
    }
    let csr = bed.path("peer.csr");
    let key = bed.path("peer-key.pem");
    run_quiet(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=peer.bench",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "openssl req",
    )?;
    let uri = format!(
        "pkcs11:token=hsmca;object=hsmca-ca;type=private;pin-source=file:{}",
        bed.path("pin").display()
    );
    let out = bed.path("peer-cert.pem");
    let ca = bed.path("ca.pem");
    let cmd = |serial: usize| {
        let mut c = Command::new("openssl");
        c.env("PKCS11_MODULE_PATH", module)
            .envs(bed.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["x509", "-req", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .args(["-engine", "pkcs11", "-CAkeyform", "engine", "-CAkey"])
            .arg(&uri)
            .args(["-days", "1", "-sha256", "-set_serial"])
            .arg(format!("{}", 1000 + serial))
            .arg("-out")
            .arg(&out);
        c
    };
    // One untimed run: the first may pay for loading the engine from disk.
    run_quiet(&mut cmd(0), "openssl x509 -req -engine pkcs11")?;
    let t0 = Instant::now();
    for i in 1..=runs {
        run_quiet(&mut cmd(i), "openssl x509 -req -engine pkcs11")?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    // The certificate is real: it verifies against the CA.
    run_quiet(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&out),
        "openssl verify (peer certificate)",
    )?;
    Ok(PeerResult {
        runs,
        seconds,
        per_s: runs as f64 / seconds,
        command: format!(
            "PKCS11_MODULE_PATH={} openssl x509 -req -in peer.csr -CA ca.pem -engine pkcs11 \
             -CAkeyform engine -CAkey '{uri}' -days 1 -sha256 -set_serial N -out cert.pem",
            module.display()
        ),
    })
}
