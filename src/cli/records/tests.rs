#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use prost_types::Timestamp;

use super::*;
use crate::proto::client_certificate::State;

fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn sample() -> ClientCertificate {
    ClientCertificate {
        certificate_id: "0b6c3a1e-7d7e-4a55-9a43-3f1f6c1c2d10".into(),
        pem_certificate: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        pem_certificate_chain: vec!["leaf\n".into(), "root\n".into()],
        ca_cert: "root\n".into(),
        serial_number: "5f3a9c0e11d24b7a8e6f0a1b2c3d4e5f".into(),
        subject: "CN=demo".into(),
        dns_names: vec!["demo.example".into(), "alt.example".into()],
        uri_sans: vec![],
        ip_addresses: vec!["192.0.2.1".into()],
        // 2024-02-29T12:00:00Z and neighbours
        create_time: ts(1_709_208_000, 123_000_000),
        not_before: ts(1_709_207_940, 0),
        expire_time: ts(1_709_251_200, 0),
        description: "for the demo".into(),
        tags: [("env", "prod"), ("team", "a b=c")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        state: State::Active as i32,
        request_id: "6f1c0a2e-1111-4222-8333-444455556666".into(),
    }
}

#[test]
fn filter_quoting() {
    assert_eq!(filter_quote("env"), "env");
    assert_eq!(filter_quote("a:b/c@d.e+f-g_h"), "a:b/c@d.e+f-g_h");
    assert_eq!(filter_quote(""), r#""""#);
    assert_eq!(filter_quote("a b"), r#""a b""#);
    assert_eq!(filter_quote("x=y"), r#""x=y""#);
    assert_eq!(filter_quote(r#"say "hi""#), r#""say \"hi\"""#);
    assert_eq!(filter_quote(r"back\slash"), r#""back\\slash""#);
    assert_eq!(filter_quote("tab\there"), "\"tab\there\"");
}

#[test]
fn filter_building() {
    assert_eq!(build_filter(None, &[]), "");
    assert_eq!(build_filter(Some(StateArg::Active), &[]), "state=ACTIVE");
    assert_eq!(build_filter(Some(StateArg::Revoked), &[]), "state=REVOKED");
    assert_eq!(build_filter(Some(StateArg::Expired), &[]), "state=EXPIRED");
    let tags = vec![
        ("env".to_owned(), "prod".to_owned()),
        ("a b".to_owned(), "x=y".to_owned()),
        ("k".to_owned(), String::new()),
    ];
    assert_eq!(
        build_filter(Some(StateArg::Active), &tags),
        r#"state=ACTIVE tag:env=prod tag:"a b"="x=y" tag:k="""#
    );
    assert_eq!(build_filter(None, &tags[..1]), "tag:env=prod");
}

#[test]
fn tag_arguments() {
    assert_eq!(
        parse_tag("team=a b=c", "--tag").unwrap(),
        ("team".into(), "a b=c".into())
    );
    assert_eq!(parse_tag("k=", "--tag").unwrap(), ("k".into(), "".into()));
    assert!(
        parse_tag("novalue", "--tag")
            .unwrap_err()
            .contains("expected KEY=VALUE")
    );

    let t = update_tags(&["env=prod".into(), "gone=".into()], &["old".into()]).unwrap();
    let want: BTreeMap<String, String> = [("env", "prod"), ("gone", ""), ("old", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(t, want);
    assert!(
        update_tags(&["a=1".into(), "a=2".into()], &[])
            .unwrap_err()
            .contains("twice")
    );
    assert!(
        update_tags(&["a=1".into()], &["a".into()])
            .unwrap_err()
            .contains("both set and removed")
    );
    assert!(update_tags(&["a".into()], &[]).is_err());
}

#[test]
fn states() {
    assert_eq!(state_name(1), "ACTIVE");
    assert_eq!(state_name(2), "REVOKED");
    assert_eq!(state_name(3), "EXPIRED");
    assert_eq!(state_name(0), "STATE_UNSPECIFIED");
    assert_eq!(state_name(42), "42");
}

#[test]
fn block() {
    let want = "\
id:           0b6c3a1e-7d7e-4a55-9a43-3f1f6c1c2d10
serial:       5f3a9c0e11d24b7a8e6f0a1b2c3d4e5f
subject:      CN=demo
state:        ACTIVE
dns names:    demo.example
              alt.example
ip addresses: 192.0.2.1
not before:   2024-02-29T11:59:00Z
expires:      2024-03-01T00:00:00Z
created:      2024-02-29T12:00:00Z
description:  for the demo
tags:         env=prod
              team=a b=c
request id:   6f1c0a2e-1111-4222-8333-444455556666
";
    assert_eq!(record_block(&sample()), want);

    let bare = ClientCertificate {
        certificate_id: "x".into(),
        description: "two\nlines\x1b[31m".into(),
        ..Default::default()
    };
    let want = "\
id:           x
serial:
subject:
state:        STATE_UNSPECIFIED
not before:   -
expires:      -
created:      -
description:  two
              lines\\u{1b}[31m
tags:
";
    assert_eq!(record_block(&bare), want);
}

#[test]
fn table() {
    let mut other = sample();
    other.certificate_id = "short".into();
    other.serial_number = "0a".into();
    other.subject = String::new();
    other.state = State::Revoked as i32;
    other.expire_time = None;
    let want = "\
ID                                    SERIAL             STATE    EXPIRES               SUBJECT
0b6c3a1e-7d7e-4a55-9a43-3f1f6c1c2d10  5f3a9c0e11d24b7a…  ACTIVE   2024-03-01T00:00:00Z  CN=demo
short                                 0a                 REVOKED  -                     -
";
    assert_eq!(record_table(&[sample(), other]), want);
    assert_eq!(record_table(&[]), "ID  SERIAL  STATE  EXPIRES  SUBJECT\n");
}

#[test]
fn json_shapes() {
    let v: serde_json::Value = serde_json::from_str(&record_json(&sample()).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "certificate_id": "0b6c3a1e-7d7e-4a55-9a43-3f1f6c1c2d10",
            "serial_number": "5f3a9c0e11d24b7a8e6f0a1b2c3d4e5f",
            "subject": "CN=demo",
            "state": "ACTIVE",
            "dns_names": ["demo.example", "alt.example"],
            "uri_sans": [],
            "ip_addresses": ["192.0.2.1"],
            "create_time": "2024-02-29T12:00:00.123Z",
            "not_before": "2024-02-29T11:59:00Z",
            "expire_time": "2024-03-01T00:00:00Z",
            "description": "for the demo",
            "tags": {"env": "prod", "team": "a b=c"},
            "request_id": "6f1c0a2e-1111-4222-8333-444455556666",
        })
    );

    let missing = ClientCertificate::default();
    let v: serde_json::Value = serde_json::from_str(&record_json(&missing).unwrap()).unwrap();
    assert_eq!(v["expire_time"], serde_json::Value::Null);
    assert_eq!(v["state"], "STATE_UNSPECIFIED");
    assert_eq!(v["tags"], serde_json::json!({}));

    let v: serde_json::Value =
        serde_json::from_str(&list_json(&[sample(), missing], "tok").unwrap()).unwrap();
    assert_eq!(v["next_page_token"], "tok");
    let list = v["client_certificates"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["certificate_id"], sample().certificate_id);
    assert!(list[0].get("pem_certificate").is_none());
    let v: serde_json::Value = serde_json::from_str(&list_json(&[], "").unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"client_certificates": [], "next_page_token": ""})
    );

    let v: serde_json::Value = serde_json::from_str(&issued_json(&sample()).unwrap()).unwrap();
    assert_eq!(v["certificate_id"], sample().certificate_id);
    assert_eq!(v["tags"]["team"], "a b=c");
    assert_eq!(v["pem_certificate"], sample().pem_certificate);
    assert_eq!(
        v["pem_certificate_chain"],
        serde_json::json!(["leaf\n", "root\n"])
    );
    assert_eq!(v["ca_cert"], "root\n");
}
