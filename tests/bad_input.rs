//! Malformed and hostile input: each gets the exact gRPC code and a message a
//! user can act on, and the daemon keeps serving afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{io::Write, time::Duration};

use common::{Ca, KeyPair};
use hsmca::proto::GenerateClientCertificateRequest as Req;
use tonic::Code;

fn b64(der: &[u8]) -> String {
    // PEM body via openssl-free base64 (der's encoder).
    der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, der).unwrap()
}

/// A CSR whose signature no longer matches: one byte of the subject changed.
fn tampered_csr(key: &KeyPair) -> String {
    let pem = key.csr("/CN=aaaaaaaa", None);
    let (_, mut der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    let pos = der.windows(8).position(|w| w == b"aaaaaaaa").unwrap();
    der[pos] = b'b';
    b64(&der)
}

/// A CSR whose version INTEGER is `v` (openssl writes 0, the only version).
fn csr_with_version(key: &KeyPair, v: u8) -> String {
    let pem = key.csr("/CN=x", None);
    let (_, mut der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    // SEQUENCE { SEQUENCE { INTEGER 0, ...: the first 02 01 00.
    let pos = der.windows(3).position(|w| w == [2, 1, 0]).unwrap();
    assert!(pos < 10);
    der[pos + 2] = v;
    b64(&der)
}

/// `pem` re-wrapped as other tools write it: `width` columns, `eol` line ends.
fn rewrap(pem: &str, width: usize, eol: &str) -> String {
    let mut lines = pem.lines();
    let begin = lines.next().unwrap();
    let body: String = lines.clone().filter(|l| !l.starts_with("-----")).collect();
    let end = lines.find(|l| l.starts_with("-----END")).unwrap();
    let mut out = format!("{begin}{eol}");
    for chunk in body.as_bytes().chunks(width) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str(eol);
    }
    out + end + eol
}

#[tokio::test]
async fn pem_as_other_tools_write_it_is_read_and_still_checked() {
    let ca = Ca::started("p256");
    let key = KeyPair::new(ca.dir.path(), "rsa2048");
    let pk = key.public_pem();
    let csr = key.csr("/CN=lax", Some("DNS:lax.example"));
    let mut client = ca.client().await;
    // Python's base64.encodebytes / Java's MIME encoder (76 columns), CRLF
    // line ends, trailing blanks, one long line.
    for (what, public_key) in [
        ("76 columns", rewrap(&pk, 76, "\n")),
        ("76 columns, CRLF", rewrap(&pk, 76, "\r\n")),
        ("trailing blanks", rewrap(&pk, 64, " \t\n")),
        ("one line", rewrap(&pk, 100_000, "\n")),
        (
            "indented",
            format!("\n  {}\n\n", rewrap(&pk, 76, "\n").replace('\n', "\n  ")),
        ),
    ] {
        let r = client
            .generate_client_certificate(Req {
                public_key,
                common_name: "lax".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
            .into_inner();
        assert!(
            r.pem_certificate
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );
    }
    let r = client
        .generate_client_certificate(Req {
            pem_csr: rewrap(&csr, 76, "\r\n"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.dns_names, vec!["lax.example".to_string()]);

    let second = KeyPair::new(ca.dir.path(), "p256").public_pem();
    let header = pk.replacen('\n', "\nProc-Type: 4,ENCRYPTED\n", 1);
    let bad_b64 = rewrap(&pk, 76, "\n").replacen("MII", "M!I", 1);
    let refused: Vec<(&str, Req, &str)> = vec![
        (
            "two public keys",
            Req {
                public_key: format!("{pk}{second}"),
                common_name: "x".into(),
                ..Default::default()
            },
            "2 PEM blocks where one is expected",
        ),
        (
            "a header",
            Req {
                public_key: header,
                common_name: "x".into(),
                ..Default::default()
            },
            "header line",
        ),
        (
            "bad base64",
            Req {
                public_key: bad_b64,
                common_name: "x".into(),
                ..Default::default()
            },
            "not valid PEM",
        ),
        (
            "trailing garbage",
            Req {
                public_key: format!("{}garbage\n", rewrap(&pk, 76, "\r\n")),
                common_name: "x".into(),
                ..Default::default()
            },
            "text after the last -----END line",
        ),
        (
            "a CSR and a key",
            Req {
                pem_csr: format!("{csr}{pk}"),
                ..Default::default()
            },
            "2 PEM blocks",
        ),
    ];
    for (what, req, needle) in refused {
        let err = client
            .generate_client_certificate(req)
            .await
            .map(|_| ())
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{what}: message {:?} lacks {needle:?}",
            err.message()
        );
    }
    ca.assert_serves().await;
}

#[tokio::test]
async fn every_bad_request_gets_invalid_argument_and_the_daemon_still_serves() {
    let ca = Ca::started("p256");
    let dir = ca.dir.path();
    let good = KeyPair::new(dir, "p256");
    let pk = good.public_pem();
    let with_key = |f: &dyn Fn(&mut Req)| {
        let mut r = Req {
            public_key: pk.clone(),
            common_name: "x".into(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let hours = |h: i64, m: i64| {
        Some(prost_types::Duration {
            seconds: h * 3600 + m * 60,
            nanos: 0,
        })
    };
    let cert_pem = {
        let r = ca
            .client()
            .await
            .generate_client_certificate(with_key(&|_| {}))
            .await
            .unwrap()
            .into_inner();
        r.pem_certificate
    };
    let private_pem = std::fs::read_to_string(&good.private).unwrap();

    let cases: Vec<(&str, Req, &str)> = vec![
        (
            "neither key nor CSR",
            Req {
                common_name: "x".into(),
                ..Default::default()
            },
            "neither",
        ),
        (
            "both key and CSR",
            with_key(&|r| r.pem_csr = good.csr("/CN=x", None)),
            "both",
        ),
        (
            "malformed PEM",
            with_key(&|r| r.public_key = "hello".into()),
            "not valid PEM",
        ),
        (
            "truncated PEM",
            with_key(&|r| r.public_key = pk[..pk.len() / 2].to_string()),
            "public_key",
        ),
        (
            "certificate as public key",
            with_key(&|r| r.public_key = cert_pem.clone()),
            "\"CERTIFICATE\"",
        ),
        (
            "private key as public key",
            with_key(&|r| r.public_key = private_pem.clone()),
            "PRIVATE KEY",
        ),
        (
            "public key as CSR",
            Req {
                pem_csr: pk.clone(),
                ..Default::default()
            },
            "\"PUBLIC KEY\"",
        ),
        (
            "CSR whose signature does not verify",
            Req {
                pem_csr: tampered_csr(&good),
                ..Default::default()
            },
            "does not prove possession",
        ),
        (
            "CSR plus name fields",
            Req {
                pem_csr: good.csr("/CN=x", None),
                common_name: "y".into(),
                ..Default::default()
            },
            "names come from the CSR",
        ),
        (
            "RSA-1024",
            with_key(&|r| r.public_key = KeyPair::new(dir, "rsa1024").public_pem()),
            "1024 bits is too small",
        ),
        (
            "P-521",
            with_key(&|r| r.public_key = KeyPair::new(dir, "p521").public_pem()),
            "unsupported curve secp521r1",
        ),
        (
            "secp256k1",
            with_key(&|r| r.public_key = KeyPair::new(dir, "secp256k1").public_pem()),
            "unsupported curve secp256k1",
        ),
        (
            "duration 30 min",
            with_key(&|r| r.cert_duration = hours(0, 30)),
            "outside the client profile",
        ),
        (
            "duration 25 h",
            with_key(&|r| r.cert_duration = hours(25, 0)),
            "outside the client profile",
        ),
        (
            "negative duration",
            with_key(&|r| {
                r.cert_duration = Some(prost_types::Duration {
                    seconds: -3600,
                    nanos: 0,
                })
            }),
            "positive",
        ),
        (
            "request_id not a UUID",
            with_key(&|r| r.request_id = "retry-1".into()),
            "not a UUID",
        ),
        (
            "zero request_id",
            with_key(&|r| r.request_id = "00000000-0000-0000-0000-000000000000".into()),
            "zero UUID",
        ),
        (
            "unknown profile",
            with_key(&|r| r.profile = "root".into()),
            "profile \"root\"",
        ),
        (
            "no names",
            with_key(&|r| r.common_name.clear()),
            "name nobody",
        ),
        (
            "bad DNS name",
            with_key(&|r| r.dns_names = vec!["a_b.example".into()]),
            "a_b.example",
        ),
        (
            "bad IP",
            with_key(&|r| r.ip_addresses = vec!["10.0.0.256".into()]),
            "10.0.0.256",
        ),
        (
            "bad URI",
            with_key(&|r| r.uri_sans = vec!["not a uri".into()]),
            "not a uri",
        ),
        (
            "A-label that IDNA does not allow",
            with_key(&|r| r.dns_names = vec!["xn--a.example".into()]),
            "label \"xn--a\" is not a valid A-label",
        ),
        (
            "reserved LDH label",
            with_key(&|r| r.dns_names = vec!["ab--cd.example".into()]),
            "label \"ab--cd\" is a reserved label",
        ),
        (
            "spiffe URI with a parameter",
            with_key(&|r| r.uri_sans = vec!["spiffe://example.org/ns/x;y=z".into()]),
            "not a valid SPIFFE ID: ';' is not allowed in a path segment",
        ),
        (
            "spiffe URI with a dot-dot segment",
            with_key(&|r| r.uri_sans = vec!["spiffe://example.org/a/../b".into()]),
            "not a valid SPIFFE ID",
        ),
        (
            "spiffe URI with a port",
            with_key(&|r| r.uri_sans = vec!["spiffe://example.org:8443/x".into()]),
            "not a valid SPIFFE ID",
        ),
        (
            "CSR asking for a SPIFFE ID that is not one",
            Req {
                pem_csr: good.csr("/CN=x", Some("URI:spiffe://example.org/*")),
                ..Default::default()
            },
            "'*' is not allowed",
        ),
        (
            "CSR asking for an email name",
            Req {
                pem_csr: good.csr("/CN=x", Some("email:a@example.org")),
                ..Default::default()
            },
            "asks for an email (rfc822Name) subjectAltName",
        ),
        (
            "CSR of version 2",
            Req {
                pem_csr: csr_with_version(&good, 1),
                ..Default::default()
            },
            "version field is 1; PKCS#10 has only v1",
        ),
        (
            "wildcard on a client certificate",
            with_key(&|r| r.dns_names = vec!["*.example".into()]),
            "wildcard",
        ),
        (
            "reserved tag",
            with_key(&|r| {
                r.tags.insert("hsmca:owner".into(), "me".into());
            }),
            "hsmca:owner",
        ),
        (
            "long description",
            with_key(&|r| r.description = "d".repeat(1025)),
            "description",
        ),
        (
            "tag key of 129 characters",
            with_key(&|r| {
                r.tags.insert("k".repeat(129), "v".into());
            }),
            "1 to 128",
        ),
        (
            "tag value of 257 characters",
            with_key(&|r| {
                r.tags.insert("k".into(), "v".repeat(257));
            }),
            "longer than 256",
        ),
        (
            "tag value with a newline",
            with_key(&|r| {
                r.tags.insert("k".into(), "a\nb".into());
            }),
            "value contains '\\n'",
        ),
        (
            "tag key with <",
            with_key(&|r| {
                r.tags.insert("a<b".into(), "v".into());
            }),
            "contains '<'",
        ),
        (
            "51 tags",
            with_key(&|r| {
                for i in 0..51 {
                    r.tags.insert(format!("k{i}"), "v".into());
                }
            }),
            "51 tags",
        ),
        (
            "1 MiB request",
            with_key(&|r| r.description = "d".repeat(1024 * 1024)),
            "65536-byte limit",
        ),
    ];
    let mut client = ca.client().await;
    for (name, req, needle) in cases {
        let err = client
            .generate_client_certificate(req)
            .await
            .map(|_| ())
            .expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{name}: message {:?} lacks {needle:?}",
            err.message()
        );
    }
    ca.assert_serves().await;
}

#[tokio::test]
async fn garbage_bytes_and_abandoned_requests_do_not_hurt_the_daemon() {
    let ca = Ca::started("p256");

    // Not HTTP/2 at all.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0u8; 4096][..],
        b"\xff\xfe\xfd",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(ca.socket()).unwrap();
        let _ = s.write_all(garbage);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
    }
    // Connect and hang up without a byte.
    drop(std::os::unix::net::UnixStream::connect(ca.socket()).unwrap());

    // A valid HTTP/2 request whose gRPC message never finishes, then a hang-up.
    {
        let io = tokio::net::UnixStream::connect(ca.socket()).await.unwrap();
        let (mut h2c, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::builder()
            .method("POST")
            .uri("http://localhost/hsmca.v1.CertificateAuthority/GenerateClientCertificate")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (_resp, mut body) = h2c.send_request(req, false).unwrap();
        // gRPC frame header announcing 1000 bytes, followed by only 10.
        let mut partial = vec![0u8, 0, 0, 0x03, 0xe8];
        partial.extend_from_slice(&[0x12; 10]);
        body.send_data(bytes::Bytes::from(partial), false).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(body);
        drop(h2c);
        conn.abort();
    }

    // Requests abandoned while the token is signing.
    let key = KeyPair::new(ca.dir.path(), "p256");
    for _ in 0..20 {
        let mut client = ca.client().await;
        let req = Req {
            public_key: key.public_pem(),
            common_name: "abandoned".into(),
            ..Default::default()
        };
        let _ = tokio::time::timeout(
            Duration::from_millis(2),
            client.generate_client_certificate(req),
        )
        .await;
    }

    ca.assert_serves().await;
    assert!(!ca.log().contains("panicked"), "{}", ca.log());
}
