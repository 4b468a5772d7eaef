//! The shipped build has no fault-injection code. The daemon the other
//! tests run is built with the `test-faults` feature; the one `cargo build`
//! makes is not. Under the same fault plan (every C_Sign fails with
//! CKR_DEVICE_ERROR), the test build refuses to issue and the shipped build
//! issues as if the variable were not set, says that it ignores it, and
//! carries none of the hook's code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{Ca, KeyPair, repo, run_ok};
use hsmca::proto::GenerateClientCertificateRequest;
use tonic::Code;

/// A message only the real hook logs when it injects a fault.
const HOOK_MARK: &[u8] = b"test hook: injecting a PKCS#11 error";
/// What only the serial hook logs when it forces a serial.
const SERIAL_HOOK_MARK: &[u8] = b"test hook: forcing the serial";

/// The daemon as `cargo build` makes it: `HSMCA_SHIPPED_BIN` (the test
/// command builds it before the tests), or built here into a target
/// directory of its own.
fn shipped_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HSMCA_SHIPPED_BIN") {
        return PathBuf::from(p);
    }
    let target = repo().join("target/shipped-build");
    run_ok(
        Command::new(env!("CARGO"))
            .current_dir(repo())
            .args(["build", "--bin", "hsmca", "--target-dir"])
            .arg(&target),
    );
    target.join("debug/hsmca")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A CA whose daemon will read its fault plan from `faults`.
fn ca_with_fault_hook() -> Ca {
    let mut ca = Ca::new("p256");
    let control = ca.path("faults");
    ca.env
        .push(("HSMCA_TEST_FAULTS".into(), control.display().to_string()));
    ca
}

/// From now on every C_Sign fails (once the daemon, if it has the hook,
/// has re-read the plan: it does every 20 ms). Written after start-up,
/// whose self-test signs.
async fn fail_every_signature(ca: &Ca) {
    std::fs::write(ca.path("faults"), "fault sign DEVICE_ERROR for=3600s\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

async fn issue(ca: &Ca) -> Result<(), tonic::Status> {
    let key = KeyPair::new(&ca.path(""), "p256");
    ca.client()
        .await
        .generate_client_certificate(GenerateClientCertificateRequest {
            public_key: key.public_pem(),
            common_name: "shipped".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_build_ignores_the_fault_hook_and_does_not_contain_it() {
    let shipped = shipped_binary();
    let test_build = Path::new(common::HSMCA);
    let shipped_bytes = std::fs::read(&shipped).unwrap();
    let test_bytes = std::fs::read(test_build).unwrap();
    assert!(
        contains(&test_bytes, HOOK_MARK),
        "the test build should carry the hook"
    );
    assert!(
        !contains(&shipped_bytes, HOOK_MARK),
        "{} carries the fault hook",
        shipped.display()
    );
    // Nor the hook that forces serials (issue/serial_hook.rs).
    assert!(contains(&test_bytes, SERIAL_HOOK_MARK));
    assert!(
        !contains(&shipped_bytes, SERIAL_HOOK_MARK),
        "{} carries the serial hook",
        shipped.display()
    );

    // The plan bites in the test build: the token "fails" every signature.
    let mut armed = ca_with_fault_hook();
    armed.start();
    fail_every_signature(&armed).await;
    let e = issue(&armed).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    armed.stop();

    // The shipped build issues under the same plan, and says why.
    let mut shipped_ca = ca_with_fault_hook();
    shipped_ca.start_binary(&shipped);
    fail_every_signature(&shipped_ca).await;
    issue(&shipped_ca).await.unwrap();
    let log = shipped_ca.log();
    println!(
        "shipped build's log line: {}",
        log.lines()
            .find(|l| l.contains("HSMCA_TEST_FAULTS"))
            .unwrap_or("-")
    );
    assert!(
        log.contains("HSMCA_TEST_FAULTS is set but this build has no fault injection"),
        "{log}"
    );
    shipped_ca.stop();
}
