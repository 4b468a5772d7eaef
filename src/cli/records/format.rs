//! The pure half of the record commands: filter strings and tag arguments
//! as typed, and the text block, table and JSON shapes of a record, each
//! testable without a daemon.

use std::{borrow::Cow, collections::BTreeMap};

use serde::Serialize;

use super::StateArg;
use crate::{
    client::CliResult,
    proto::{ClientCertificate, client_certificate::State},
    time::rfc3339,
};

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

pub fn time_text(ts: Option<&prost_types::Timestamp>) -> String {
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
