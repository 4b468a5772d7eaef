//! The gRPC socket's resource bounds on a real daemon: the connection
//! limit, the handshake and idle timeouts against slow-loris clients, and
//! the request deadline, which must cut a unary call that hangs but never a
//! Watch stream. (The rate under 1,000 idle connections and the 64 MiB
//! message are in `idle_load.rs`, alone, so that nothing else runs while
//! rates are measured.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Ca, KeyPair};
use hsmca::proto::{
    CertificateRequestSpec, CreateCertificateRequestRequest, GenerateClientCertificateRequest,
    RotateKeysRequest, WatchCertificateRequestRequest, certificate_request_status::State,
    certificate_requests_client::CertificateRequestsClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};
use tokio_stream::StreamExt;
use tonic::Code;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 connection with a finished handshake and no stream.
struct Idle {
    _send: h2::client::SendRequest<bytes::Bytes>,
    conn: tokio::task::JoinHandle<()>,
}

async fn idle_connection(ca: &Ca) -> Idle {
    let io = UnixStream::connect(ca.socket()).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    let mut send = send.ready().await.unwrap();
    // Nothing more: the handshake's SETTINGS went out; the driver answers
    // the daemon's SETTINGS and PINGs.
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _ = &mut send;
    Idle { _send: send, conn }
}

/// True once the daemon closed `s` (EOF or reset), waiting up to `within`.
async fn closed_within(s: &mut UnixStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the daemon's SETTINGS, PINGs
        }
    }
}

fn issue_request(key: &str, cn: &str) -> GenerateClientCertificateRequest {
    GenerateClientCertificateRequest {
        public_key: key.to_owned(),
        common_name: cn.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_and_slots_come_back() {
    let mut ca = Ca::with_env("p256", &[("HSMCA_SERVER__MAX_CONNECTIONS", "20")]);
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(idle_connection(&ca).await);
    }
    // The 21st is accepted and closed at once.
    let mut extra = UnixStream::connect(ca.socket()).await.unwrap();
    let _ = extra.write_all(PREFACE).await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)).await,
        "a connection over server.max_connections stayed open"
    );
    // A client fails fast rather than hanging.
    let started = Instant::now();
    let refused = match hsmca::cli::client::connect(&ca.socket()).await {
        Err(_) => true,
        Ok(ch) => {
            let mut c =
                hsmca::proto::certificate_authority_client::CertificateAuthorityClient::new(ch);
            c.generate_client_certificate(issue_request(&key, "over"))
                .await
                .is_err()
        }
    };
    assert!(refused, "a client over the limit was served");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Slots come back when connections close.
    for c in held.drain(..) {
        c.conn.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = match hsmca::cli::client::connect(&ca.socket()).await {
            Ok(ch) => {
                hsmca::proto::certificate_authority_client::CertificateAuthorityClient::new(ch)
                    .generate_client_certificate(issue_request(&key, "after"))
                    .await
                    .is_ok()
            }
            Err(_) => false,
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots did not come back:\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = hsmca::cli::status::scrape(&ca.path("hsmca-metrics.sock"))
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("hsmca_connections_closed_total{reason=\"limit\"}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_dropped_and_do_not_stop_others() {
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_SERVER__HANDSHAKE_TIMEOUT", "2s"),
            ("HSMCA_SERVER__IDLE_TIMEOUT", "4s"),
        ],
    );
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();

    // 200 clients that stop in the middle of the preface.
    let mut partial_preface = Vec::new();
    for _ in 0..200 {
        let mut s = UnixStream::connect(ca.socket()).await.unwrap();
        s.write_all(&PREFACE[..10]).await.unwrap();
        partial_preface.push(s);
    }
    // 50 that complete the preface and SETTINGS, then stop inside a
    // HEADERS frame (9-byte header announcing 100 bytes; 10 sent).
    let mut partial_headers = Vec::new();
    for _ in 0..50 {
        let mut s = UnixStream::connect(ca.socket()).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
        s.write_all(&[0, 0, 100, 0x1, 0x4, 0, 0, 0, 1])
            .await
            .unwrap();
        s.write_all(&[0x82; 10]).await.unwrap();
        partial_headers.push(s);
    }
    let opened = Instant::now();

    // Meanwhile an ordinary client is served.
    let mut client = ca.client().await;
    for i in 0..20 {
        let t = Instant::now();
        client
            .generate_client_certificate(issue_request(&key, &format!("normal-{i}")))
            .await
            .unwrap_or_else(|e| panic!("normal client refused: {e:?}\n{}", ca.log()));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "an issue took {:?}",
            t.elapsed()
        );
    }

    // The stalled preface is dropped after handshake_timeout (2 s).
    for s in &mut partial_preface {
        let left = (opened + Duration::from_secs(6)).saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left).await,
            "a connection without a complete preface was still open after 6 s"
        );
    }
    // The stalled headers are dropped after idle_timeout (4 s): no request
    // ever started on them.
    for s in &mut partial_headers {
        let left = (opened + Duration::from_secs(10)).saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left).await,
            "a connection stalled inside a HEADERS frame was still open after 10 s"
        );
    }
    let text = hsmca::cli::status::scrape(&ca.path("hsmca-metrics.sock"))
        .await
        .unwrap();
    let closed = |reason: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "hsmca_connections_closed_total{{reason=\"{reason}\"}} "
                ))
            })
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    assert!(closed("handshake") >= 200.0, "{text}");
    assert!(closed("idle") >= 50.0, "{text}");
    // Still serving.
    ca.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_cuts_a_hung_call_but_not_a_watch() {
    let mut ca = Ca::with_env(
        "p256",
        &[
            ("HSMCA_SERVER__REQUEST_TIMEOUT", "1s"),
            ("HSMCA_SERVER__IDLE_TIMEOUT", "2s"),
        ],
    );
    ca.start();
    let pair = KeyPair::new(ca.dir.path(), "p256");
    let channel = hsmca::cli::client::connect(&ca.socket()).await.unwrap();
    let mut requests = CertificateRequestsClient::new(channel);
    let created = requests
        .create_certificate_request(CreateCertificateRequestRequest {
            spec: Some(CertificateRequestSpec {
                pem_csr: pair.csr("/CN=watched", None),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = requests
        .watch_certificate_request(WatchCertificateRequestRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = watch.next().await.unwrap().unwrap();
            if r.status
                .as_ref()
                .is_some_and(|s| s.state() == State::Finished)
            {
                return r;
            }
        }
    })
    .await
    .expect("the request was not issued");
    assert!(!first.spec.unwrap().rotate_keys);

    // Hold the store's write lock for 4 s: an issue now hangs in the store.
    let db = ca.path("state/hsmca.db");
    assert!(db.exists());
    let mut locker = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys,time\n\
             c=sqlite3.connect(sys.argv[1],isolation_level=None,timeout=30)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked',flush=True)\n\
             time.sleep(4)\n\
             c.execute('ROLLBACK')\n",
        )
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let started = Instant::now();
    let err = ca
        .client()
        .await
        .generate_client_certificate(issue_request(&key, "hung"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("server.request_timeout"), "{err:?}");
    assert!(took < Duration::from_secs(3), "the deadline took {took:?}");
    assert!(locker.wait().unwrap().success());

    // The watch stream outlived both the request deadline (1 s) and the
    // idle timeout (2 s): it still delivers the next change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    requests
        .rotate_keys(RotateKeysRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap();
    let rotated = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = watch.next().await.unwrap().unwrap();
            if r.spec.as_ref().is_some_and(|s| s.rotate_keys) {
                return r;
            }
        }
    })
    .await
    .expect("the watch stream stopped delivering after the deadline and idle timeout");
    assert_eq!(rotated.id, created.id);
    ca.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_signer_queue_fails_fast_with_resource_exhausted() {
    // One session, room for one waiting job, and a CA key slow to sign
    // with: most of 100 simultaneous requests find the queue full.
    let mut ca = Ca::with_env(
        "rsa4096",
        &[
            ("HSMCA_TOKEN__SESSIONS", "1"),
            ("HSMCA_TOKEN__QUEUE_DEPTH", "1"),
        ],
    );
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let channel = hsmca::cli::client::connect(&ca.socket()).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..100 {
        let mut c = hsmca::proto::certificate_authority_client::CertificateAuthorityClient::new(
            channel.clone(),
        );
        let req = issue_request(&key, &format!("q{i}"));
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.generate_client_certificate(req).await;
            (r.map(|_| ()), t.elapsed())
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for call in calls {
        let (r, took) = call.await.unwrap();
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("queue is full"), "{e:?}");
                assert!(took < Duration::from_secs(5), "a refusal took {took:?}");
                busy += 1;
            }
        }
    }
    eprintln!("{ok} issued, {busy} refused with RESOURCE_EXHAUSTED");
    assert!(ok >= 1 && busy >= 1, "{ok} issued, {busy} refused");
    ca.assert_serves().await;
}
