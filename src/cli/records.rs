//! Client commands for the certificate records a daemon keeps: `get`, `list`,
//! `tag`, `revoke` and `crl`.
//!
//! Every formatting step is a pure function (filter strings, reason names,
//! the text block, the table, the JSON shapes) so it can be tested without a
//! daemon; the command functions only call the RPC and print.

use std::{borrow::Cow, collections::BTreeMap, path::PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use super::{
    CliResult, Connection,
    client::{connect, socket_path, status_error, write_out},
};
use crate::proto::{
    ClientCertificate, DeleteClientCertificateRequest, GetClientCertificateRequest, GetCrlRequest,
    ListClientCertificatesRequest, UpdateClientCertificateRequest,
    certificate_authority_client::CertificateAuthorityClient, client_certificate::State,
};
use crate::{revocation::normalize_reason, time::rfc3339};

/// Replies can be large (a page of 1000 records with their chains, a long
/// CRL): allow more than tonic's default 4 MiB.
const MAX_REPLY_BYTES: usize = 64 << 20;

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The certificate's id.
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A certificate state, as `list --state` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Active,
    Revoked,
    Expired,
}

impl StateArg {
    /// The name the filter grammar (and the proto enum) uses.
    pub fn filter_name(self) -> &'static str {
        match self {
            StateArg::Active => "ACTIVE",
            StateArg::Revoked => "REVOKED",
            StateArg::Expired => "EXPIRED",
        }
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Only certificates in this state.
    #[arg(long, value_enum, ignore_case = true)]
    pub state: Option<StateArg>,
    /// Only certificates with this tag; repeatable (all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Certificates per page (the daemon's default is 50, at most 1000).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Start at this page, from a previous `list`.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Fetch every page, not just one.
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The certificate's id.
    pub id: String,
    /// Tags to set, merged into the existing ones; an empty VALUE removes the
    /// tag.
    #[arg(value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Remove this tag; repeatable.
    #[arg(long, value_name = "KEY")]
    pub remove: Vec<String>,
    /// Replace the description ("" clears it).
    #[arg(long)]
    pub description: Option<String>,
    /// Print the updated record as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The certificate's id.
    pub id: String,
    /// RFC 5280 reason: unspecified, keyCompromise, caCompromise,
    /// affiliationChanged, superseded, cessationOfOperation,
    /// privilegeWithdrawn (any case; key-compromise works too).
    #[arg(long, value_parser = normalize_reason)]
    pub reason: Option<&'static str>,
}

#[derive(Args, Debug)]
pub struct CrlArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Write the PEM CRL here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Pure helpers

/// `KEY=VALUE` → (KEY, VALUE), split at the first `=`.
pub fn parse_tag(arg: &str, what: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{what} {arg:?}: expected KEY=VALUE"))
}

/// A tag key or value as the filter grammar wants it: bare when it is a
/// plain word, else double-quoted with `"` and `\` escaped.
pub fn filter_quote(s: &str) -> Cow<'_, str> {
    let needs = s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '=' | '"' | '\\'));
    if !needs {
        return Cow::Borrowed(s);
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    Cow::Owned(q)
}

/// The `filter` of a ListClientCertificatesRequest: `state=…` and
/// `tag:KEY=VALUE` terms joined by spaces (an AND).
pub fn build_filter(state: Option<StateArg>, tags: &[(String, String)]) -> String {
    let mut terms = Vec::new();
    if let Some(s) = state {
        terms.push(format!("state={}", s.filter_name()));
    }
    for (k, v) in tags {
        terms.push(format!("tag:{}={}", filter_quote(k), filter_quote(v)));
    }
    terms.join(" ")
}

/// The tags of an UpdateClientCertificateRequest: each `KEY=VALUE` set, each
/// removed key sent with an empty value.
pub fn update_tags(set: &[String], remove: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for arg in set {
        let (k, v) = parse_tag(arg, "tag")?;
        if tags.contains_key(&k) {
            return Err(format!("tag {k:?} is given twice"));
        }
        tags.insert(k, v);
    }
    for k in remove {
        if tags.contains_key(k) {
            return Err(format!("tag {k:?} is both set and removed"));
        }
        tags.insert(k.clone(), String::new());
    }
    Ok(tags)
}

fn time_text(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), |t| rfc3339(t, false))
}

/// The state's proto name: ACTIVE, REVOKED, EXPIRED (STATE_UNSPECIFIED, or
/// the number when a newer daemon sends a value this client does not know).
pub fn state_name(state: i32) -> String {
    State::try_from(state).map_or_else(|_| state.to_string(), |s| s.as_str_name().to_owned())
}

/// Text from the daemon made safe for a terminal: control characters (escape
/// sequences, stray newlines) are shown escaped.
fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

const KEY_WIDTH: usize = 14;

/// One `key: value` field; several values go on continuation lines.
fn push_field<S: AsRef<str>>(out: &mut String, key: &str, values: &[S]) {
    let label = format!("{key}:");
    if values.iter().all(|v| v.as_ref().is_empty()) {
        out.push_str(&label);
        out.push('\n');
        return;
    }
    for (i, v) in values.iter().enumerate() {
        let head = if i == 0 { label.as_str() } else { "" };
        out.push_str(&format!("{head:<KEY_WIDTH$}{}\n", printable(v.as_ref())));
    }
}

/// A record as a `key: value` block, for `get` and `tag`.
pub fn record_block(c: &ClientCertificate) -> String {
    let mut out = String::new();
    push_field(&mut out, "id", &[&c.certificate_id]);
    push_field(&mut out, "serial", &[&c.serial_number]);
    push_field(&mut out, "subject", &[&c.subject]);
    push_field(&mut out, "state", &[state_name(c.state)]);
    for (key, values) in [
        ("dns names", &c.dns_names),
        ("uris", &c.uri_sans),
        ("ip addresses", &c.ip_addresses),
    ] {
        if !values.is_empty() {
            push_field(&mut out, key, values);
        }
    }
    push_field(&mut out, "not before", &[time_text(c.not_before.as_ref())]);
    push_field(&mut out, "expires", &[time_text(c.expire_time.as_ref())]);
    push_field(&mut out, "created", &[time_text(c.create_time.as_ref())]);
    // The description may hold newlines: one line each.
    let description: Vec<&str> = if c.description.is_empty() {
        Vec::new()
    } else {
        c.description.split('\n').collect()
    };
    push_field(&mut out, "description", &description);
    let tags: Vec<String> = c.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    push_field(&mut out, "tags", &tags);
    if !c.request_id.is_empty() {
        push_field(&mut out, "request id", &[&c.request_id]);
    }
    out
}

/// At most 16 hex digits of a serial, then an ellipsis.
fn short_serial(serial: &str) -> String {
    if serial.chars().count() > 16 {
        let head: String = serial.chars().take(16).collect();
        format!("{head}…")
    } else {
        serial.to_owned()
    }
}

/// Records as an aligned table, for `list`.
pub fn record_table(certs: &[ClientCertificate]) -> String {
    let header = ["ID", "SERIAL", "STATE", "EXPIRES", "SUBJECT"].map(str::to_owned);
    let mut rows = vec![header];
    for c in certs {
        let subject = if c.subject.is_empty() {
            "-".to_owned()
        } else {
            printable(&c.subject).into_owned()
        };
        rows.push([
            printable(&c.certificate_id).into_owned(),
            short_serial(&printable(&c.serial_number)),
            state_name(c.state),
            time_text(c.expire_time.as_ref()),
            subject,
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                // Pad by characters, not bytes (the serial's "…").
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A certificate record for scripts: times as RFC 3339 strings (null when
/// absent), the state by name, tags as an object.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordJson {
    pub certificate_id: String,
    pub serial_number: String,
    pub subject: String,
    pub state: String,
    pub dns_names: Vec<String>,
    pub uri_sans: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub create_time: Option<String>,
    pub not_before: Option<String>,
    pub expire_time: Option<String>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub request_id: String,
}

impl From<&ClientCertificate> for RecordJson {
    fn from(c: &ClientCertificate) -> Self {
        let time = |t: Option<&prost_types::Timestamp>| t.map(|t| rfc3339(t, true));
        RecordJson {
            certificate_id: c.certificate_id.clone(),
            serial_number: c.serial_number.clone(),
            subject: c.subject.clone(),
            state: state_name(c.state),
            dns_names: c.dns_names.clone(),
            uri_sans: c.uri_sans.clone(),
            ip_addresses: c.ip_addresses.clone(),
            create_time: time(c.create_time.as_ref()),
            not_before: time(c.not_before.as_ref()),
            expire_time: time(c.expire_time.as_ref()),
            description: c.description.clone(),
            tags: c.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            request_id: c.request_id.clone(),
        }
    }
}

/// `issue --json`: the record and the PEMs.
#[derive(Serialize, Debug)]
pub struct IssuedJson {
    #[serde(flatten)]
    pub record: RecordJson,
    pub pem_certificate: String,
    pub pem_certificate_chain: Vec<String>,
    pub ca_cert: String,
}

/// `list --json`.
#[derive(Serialize, Debug)]
pub struct ListJson {
    pub client_certificates: Vec<RecordJson>,
    pub next_page_token: String,
}

fn to_json<T: Serialize>(value: &T) -> CliResult<String> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}

/// `get`/`tag --json`.
pub fn record_json(c: &ClientCertificate) -> CliResult<String> {
    to_json(&RecordJson::from(c))
}

/// `issue --json`.
pub fn issued_json(c: &ClientCertificate) -> CliResult<String> {
    to_json(&IssuedJson {
        record: RecordJson::from(c),
        pem_certificate: c.pem_certificate.clone(),
        pem_certificate_chain: c.pem_certificate_chain.clone(),
        ca_cert: c.ca_cert.clone(),
    })
}

/// `list --json`.
pub fn list_json(certs: &[ClientCertificate], next_page_token: &str) -> CliResult<String> {
    to_json(&ListJson {
        client_certificates: certs.iter().map(RecordJson::from).collect(),
        next_page_token: next_page_token.to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Commands

async fn client(conn: &Connection) -> CliResult<CertificateAuthorityClient<Channel>> {
    let socket = socket_path(conn)?;
    Ok(CertificateAuthorityClient::new(connect(&socket).await?)
        .max_decoding_message_size(MAX_REPLY_BYTES))
}

fn print_record(c: &ClientCertificate, json: bool) -> CliResult {
    let text = if json {
        record_json(c)?
    } else {
        record_block(c)
    };
    write_out(None, &text)
}

pub async fn get(args: GetArgs) -> CliResult {
    let mut client = client(&args.conn).await?;
    let cert = client
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: args.id,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_record(&cert, args.json)
}

pub async fn list(args: ListArgs) -> CliResult {
    let tags = args
        .tags
        .iter()
        .map(|t| parse_tag(t, "--tag"))
        .collect::<Result<Vec<_>, _>>()?;
    let filter = build_filter(args.state, &tags);
    let mut client = client(&args.conn).await?;
    let mut certs = Vec::new();
    let mut page_token = args.page_token.clone().unwrap_or_default();
    let next = loop {
        let resp = client
            .list_client_certificates(ListClientCertificatesRequest {
                page_size: args.page_size.unwrap_or_default(),
                page_token: page_token.clone(),
                filter: filter.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        certs.extend(resp.client_certificates);
        if !args.all || resp.next_page_token.is_empty() {
            break resp.next_page_token;
        }
        if resp.next_page_token == page_token {
            return Err("the daemon returned the same page token twice".into());
        }
        page_token = resp.next_page_token;
    };
    if args.json {
        write_out(None, &list_json(&certs, &next)?)?;
    } else if certs.is_empty() {
        eprintln!("no certificates");
    } else {
        write_out(None, &record_table(&certs))?;
    }
    if !next.is_empty() {
        eprintln!("more: run again with --page-token {next}");
    }
    Ok(())
}

pub async fn tag(args: TagArgs) -> CliResult {
    if args.tags.is_empty() && args.remove.is_empty() && args.description.is_none() {
        return Err("nothing to change: give KEY=VALUE tags, --remove KEY or --description".into());
    }
    let tags = update_tags(&args.tags, &args.remove)?;
    let mut client = client(&args.conn).await?;
    let cert = client
        .update_client_certificate(UpdateClientCertificateRequest {
            certificate_id: args.id,
            description: args.description,
            tags,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_record(&cert, args.json)
}

pub async fn revoke(args: RevokeArgs) -> CliResult {
    let mut client = client(&args.conn).await?;
    client
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: args.id.clone(),
            reason: args.reason.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(status_error)?;
    write_out(None, &format!("revoked {}\n", args.id))
}

pub async fn crl(args: CrlArgs) -> CliResult {
    let mut client = client(&args.conn).await?;
    let resp = client
        .get_crl(GetCrlRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    write_out(args.out.as_deref(), &resp.pem_crl)?;
    eprintln!(
        "this update {}, next update {}",
        time_text(resp.this_update.as_ref()),
        time_text(resp.next_update.as_ref())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use prost_types::Timestamp;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn sample() -> ClientCertificate {
        ClientCertificate {
            certificate_id: "0b6c3a1e-7d7e-4a55-9a43-3f1f6c1c2d10".into(),
            pem_certificate: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
                .into(),
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
}
