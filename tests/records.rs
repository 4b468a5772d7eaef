//! Durable records end to end: request_id replay across restarts without a
//! new signature, ownership, pagination, metadata, revocation seen by
//! openssl through the CRL, and no lost certificate after kill -9.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::HashSet, process::Command, time::Duration};

use common::{Ca, KeyPair, run, run_ok};
use hsmca::proto::{
    ClientCertificate, DeleteClientCertificateRequest, GenerateClientCertificateRequest as Req,
    GetClientCertificateRequest, GetCrlRequest, ListClientCertificatesRequest,
    UpdateClientCertificateRequest, client_certificate::State,
};
use prost::Message;
use tonic::Code;

fn req(key: &KeyPair, cn: &str) -> Req {
    Req {
        public_key: key.public_pem(),
        common_name: cn.into(),
        ..Default::default()
    }
}

async fn list_all(ca: &Ca, filter: &str, page_size: i32) -> Vec<ClientCertificate> {
    let mut client = ca.client().await;
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_client_certificates(ListClientCertificatesRequest {
                page_size,
                page_token: token.clone(),
                filter: filter.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.client_certificates.len() <= page_size as usize);
        out.extend(page.client_certificates);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn request_id_replays_the_same_bytes_after_a_restart_without_signing() {
    let mut ca = Ca::new("p256");
    let spy_log = ca.use_spy();
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let id = "6f1c1b54-8e7a-4f7b-9a55-2f1f0c3a9d11";
    let mut r = req(&key, "retry");
    r.request_id = id.into();
    let first = ca
        .client()
        .await
        .generate_client_certificate(r.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.request_id, id);

    // Same caller, same id, same body, after a restart: the same bytes.
    ca.stop();
    ca.start();
    let mut client = ca.client().await;
    client.get_crl(GetCrlRequest {}).await.unwrap();
    let signs_before = std::fs::read_to_string(&spy_log)
        .unwrap()
        .matches(": C_Sign\n")
        .count();
    let again = client
        .generate_client_certificate(r.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.encode_to_vec(),
        first.encode_to_vec(),
        "replay is not byte-identical"
    );
    let signs_after = std::fs::read_to_string(&spy_log)
        .unwrap()
        .matches(": C_Sign\n")
        .count();
    assert_eq!(signs_before, signs_after, "the replay signed again");

    // Same id, different body.
    let mut other = r.clone();
    other.common_name = "other".into();
    let err = client.generate_client_certificate(other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(id));

    // Concurrent requests with one new id: one certificate.
    let key2 = KeyPair::new(ca.dir.path(), "p256");
    let mut r2 = req(&key2, "concurrent");
    r2.request_id = "0e2b6a43-6c5e-4ad4-8f5b-6a1d1b7e3c20".into();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = client.clone();
        let r2 = r2.clone();
        tasks.push(tokio::spawn(async move {
            c.generate_client_certificate(r2)
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().certificate_id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(list_all(&ca, "", 100).await.len(), 2);
}

#[tokio::test]
async fn records_get_update_list_and_ownership() {
    let ca = Ca::with_env("p256", &[("HSMCA_SERVER__SOCKET_MODE", "0666")]);
    let mut ca = ca;
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let mut client = ca.client().await;
    let mut r = req(&key, "tagged");
    r.description = "first".into();
    r.tags.insert("team".into(), "payments".into());
    let issued = client
        .generate_client_certificate(r)
        .await
        .unwrap()
        .into_inner();

    let got = client
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: issued.certificate_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.pem_certificate, issued.pem_certificate);
    assert_eq!(got.serial_number, issued.serial_number);
    assert_eq!(got.state, State::Active as i32);

    let mut tags = std::collections::BTreeMap::new();
    tags.insert("env".to_string(), "prod".to_string());
    tags.insert("team".to_string(), String::new());
    let updated = client
        .update_client_certificate(UpdateClientCertificateRequest {
            certificate_id: issued.certificate_id.clone(),
            description: Some("second".into()),
            tags,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.description, "second");
    assert_eq!(updated.tags.len(), 1);
    assert_eq!(updated.tags["env"], "prod");
    assert_eq!(
        updated.pem_certificate, issued.pem_certificate,
        "the certificate never changes"
    );

    // Bad input on the record RPCs.
    let bad_tags = [("k<".to_string(), "v".to_string())].into_iter().collect();
    let e = client
        .update_client_certificate(UpdateClientCertificateRequest {
            certificate_id: issued.certificate_id.clone(),
            description: None,
            tags: bad_tags,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("k<"));
    let e = client
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: "no-such-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .list_client_certificates(ListClientCertificatesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client
        .list_client_certificates(ListClientCertificatesRequest {
            filter: "owner=me".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: issued.certificate_id.clone(),
            reason: "because".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Another user's certificate is invisible to this caller.
    let out = run_ok(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::HSMCA)
            .args(["issue", "--socket"])
            .arg(ca.socket())
            .arg("--public-key")
            .arg(&key.public)
            .args(["--cn", "nobody"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let theirs = stderr.split_whitespace().nth(1).unwrap().to_string();
    let e = client
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: theirs.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(!e.message().contains("nobody"));
    let e = client
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: theirs.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mine = list_all(&ca, "", 50).await;
    assert!(mine.iter().all(|c| c.certificate_id != theirs));
    assert_eq!(list_all(&ca, "tag:env=prod", 50).await.len(), 1);
    assert_eq!(list_all(&ca, "tag:team=payments", 50).await.len(), 0);
    ca.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_returns_every_record_once_while_issuing() {
    let ca = Ca::started("p256");
    let key = KeyPair::new(ca.dir.path(), "p256");
    let client = ca.client().await;
    let mut before = HashSet::new();
    for i in 0..45 {
        let r = client
            .clone()
            .generate_client_certificate(req(&key, &format!("p{i}")))
            .await
            .unwrap()
            .into_inner();
        before.insert(r.certificate_id);
    }
    let writer = {
        let client = client.clone();
        let r = req(&key, "concurrent");
        tokio::spawn(async move {
            for _ in 0..40 {
                client
                    .clone()
                    .generate_client_certificate(r.clone())
                    .await
                    .unwrap();
            }
        })
    };
    let listed = list_all(&ca, "state=ACTIVE", 7).await;
    writer.await.unwrap();
    let ids: Vec<_> = listed.iter().map(|c| c.certificate_id.clone()).collect();
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "a record appeared twice");
    assert!(
        before.is_subset(&unique),
        "a record present before listing was skipped"
    );
    // Newest first.
    let times: Vec<_> = listed
        .iter()
        .map(|c| c.create_time.unwrap())
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]));
}

#[tokio::test]
async fn revoked_certificate_is_on_the_crl_and_openssl_rejects_it() {
    let ca = Ca::started("rsa2048");
    let key = KeyPair::new(ca.dir.path(), "p256");
    let mut client = ca.client().await;
    let bad = client
        .generate_client_certificate(req(&key, "revoked"))
        .await
        .unwrap()
        .into_inner();
    let good = client
        .generate_client_certificate(req(&key, "kept"))
        .await
        .unwrap()
        .into_inner();
    let crl_before = client.get_crl(GetCrlRequest {}).await.unwrap().into_inner();
    client
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: bad.certificate_id.clone(),
            reason: "keyCompromise".into(),
        })
        .await
        .unwrap();
    // Deleting again is harmless.
    client
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: bad.certificate_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let state = client
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: bad.certificate_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, State::Revoked as i32);
    let crl = client.get_crl(GetCrlRequest {}).await.unwrap().into_inner();
    assert!(crl.this_update.unwrap().seconds >= crl_before.this_update.unwrap().seconds);

    let d = ca.dir.path();
    std::fs::write(d.join("crl.pem"), &crl.pem_crl).unwrap();
    std::fs::write(d.join("root.pem"), &bad.ca_cert).unwrap();
    std::fs::write(d.join("bad.pem"), &bad.pem_certificate).unwrap();
    std::fs::write(d.join("good.pem"), &good.pem_certificate).unwrap();
    let out = run_ok(Command::new("openssl").current_dir(d).args([
        "crl", "-in", "crl.pem", "-CAfile", "root.pem", "-verify", "-noout", "-text",
    ]));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.to_uppercase()
            .contains(&bad.serial_number.to_uppercase()),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    let revoked = run(Command::new("openssl").current_dir(d).args([
        "verify",
        "-crl_check",
        "-CAfile",
        "root.pem",
        "-CRLfile",
        "crl.pem",
        "bad.pem",
    ]));
    assert!(!revoked.status.success());
    assert!(
        String::from_utf8_lossy(&revoked.stdout).contains("revoked")
            || String::from_utf8_lossy(&revoked.stderr).contains("revoked")
    );
    run_ok(Command::new("openssl").current_dir(d).args([
        "verify",
        "-crl_check",
        "-CAfile",
        "root.pem",
        "-CRLfile",
        "crl.pem",
        "good.pem",
    ]));
    // Both lint clean: the one with an entry, and the one before it with
    // none, which must leave revokedCertificates out (RFC 5280 §5.1.2.6).
    std::fs::write(d.join("empty-crl.pem"), &crl_before.pem_crl).unwrap();
    for file in ["crl.pem", "empty-crl.pem"] {
        let lint = run(Command::new(common::py_tool("lint_crl"))
            .args(["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING"])
            .arg(d.join(file)));
        assert!(
            lint.status.success(),
            "pkilint {file}: {}{}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_certificate_that_was_handed_out() {
    let mut ca = Ca::started("p256");
    let key = KeyPair::new(ca.dir.path(), "p256");
    let client = ca.client().await;
    // Issue continuously until 10,000 certificates were received, then kill.
    let total = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let r = req(&key, &format!("w{w}"));
        let client = client.clone();
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match client.clone().generate_client_certificate(r.clone()).await {
                    Ok(c) => got.push(c.into_inner()),
                    Err(_) => return got,
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while total.load(std::sync::atomic::Ordering::Relaxed) < 10_000 {
        assert!(std::time::Instant::now() < deadline, "issuance too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ca.signal("KILL");
    let mut received = Vec::new();
    for t in tasks {
        received.extend(t.await.unwrap());
    }
    ca.stop_after_signal();
    assert!(received.len() >= 9_990, "only {} issued", received.len());
    ca.start();
    let mut client = ca.client().await;
    let mut serials = HashSet::new();
    for c in &received {
        let got = client
            .get_client_certificate(GetClientCertificateRequest {
                certificate_id: c.certificate_id.clone(),
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "certificate {} was handed out but not recorded: {e:?}",
                    c.certificate_id
                )
            })
            .into_inner();
        assert_eq!(got.pem_certificate, c.pem_certificate);
        assert!(serials.insert(got.serial_number), "serial repeated");
    }
}

/// Unmounts the test's small filesystem even when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_with_unavailable_and_the_daemon_recovers() {
    let mut ca = Ca::new("p256");
    // The store on a filesystem of its own, small enough to fill.
    let state = ca.path("state");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(&state),
    );
    let _mounted = Mounted(state.clone());
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    let mut client = ca.client().await;
    let mut handed_out = vec![
        client
            .generate_client_certificate(req(&key, "before"))
            .await
            .unwrap()
            .into_inner(),
    ];

    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let mut refused = None;
    for i in 0..200 {
        match client
            .generate_client_certificate(req(&key, &format!("full-{i}")))
            .await
        {
            Ok(r) => handed_out.push(r.into_inner()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("issuance kept succeeding on a full disk");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("nothing was issued"),
        "{}",
        e.message()
    );

    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..20 {
        if let Ok(r) = client.generate_client_certificate(req(&key, "after")).await {
            handed_out.push(r.into_inner());
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the daemon did not recover:\n{}", ca.log());
    for c in &handed_out {
        client
            .get_client_certificate(GetClientCertificateRequest {
                certificate_id: c.certificate_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{} handed out but not recorded: {e:?}", c.certificate_id));
    }
    ca.stop();
}

#[tokio::test]
async fn cli_record_commands() {
    let ca = Ca::started("p256");
    let key = KeyPair::new(ca.dir.path(), "p256");
    let cli = |args: &[&str]| {
        let mut c = ca.hsmca();
        c.args(args).arg("--socket").arg(ca.socket());
        c
    };
    let public = key.public.display().to_string();
    let out = run_ok(&mut cli(&[
        "issue",
        "--json",
        "--cn",
        "cli-rec",
        "--tag",
        "team=a",
        "--public-key",
        &public,
    ]));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = issued["certificate_id"].as_str().unwrap().to_string();
    let got: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut cli(&["get", &id, "--json"])).stdout).unwrap();
    assert_eq!(got["state"], "ACTIVE");
    assert_eq!(got["tags"]["team"], "a");
    run_ok(&mut cli(&["tag", &id, "env=prod", "--remove", "team"]));
    let listed: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut cli(&["list", "--tag", "env=prod", "--json"])).stdout)
            .unwrap();
    assert_eq!(listed["client_certificates"].as_array().unwrap().len(), 1);
    let table = String::from_utf8(run_ok(&mut cli(&["list"])).stdout).unwrap();
    assert!(table.contains(&id) && table.contains("ACTIVE"), "{table}");
    run_ok(&mut cli(&["revoke", &id, "--reason", "superseded"]));
    let text = String::from_utf8(run_ok(&mut cli(&["get", &id])).stdout).unwrap();
    assert!(text.contains("REVOKED"), "{text}");
    let crl = ca.path("cli.crl");
    let crl_arg = crl.display().to_string();
    run_ok(&mut cli(&["crl", "--out", &crl_arg]));
    assert!(
        std::fs::read_to_string(&crl)
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----")
    );
    let missing = run(&mut cli(&["get", "no-such-id"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));
}
