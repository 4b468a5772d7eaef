//! Turning records into replies, and the small request languages of the
//! record RPCs: page tokens and list filters.

use base64::Engine;

use crate::{
    ca::CaChain,
    proto::{ClientCertificate, client_certificate::State},
    store::{Record, StateFilter},
};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

fn ts_secs(s: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    }
}

/// The record's certificate, then the CA's chain up to the root.
fn chain(rec: &Record, ca: &CaChain) -> Vec<String> {
    let mut chain = Vec::with_capacity(ca.chain_pem.len() + 1);
    chain.push(rec.pem.clone());
    chain.extend(ca.chain_pem.iter().cloned());
    chain
}

/// The record as the API shows it now: current tags and state.
pub fn to_reply(rec: &Record, ca: &CaChain, now: i64) -> ClientCertificate {
    let state = if rec.revoked.is_some() {
        State::Revoked
    } else if rec.expire_time <= now {
        State::Expired
    } else {
        State::Active
    };
    ClientCertificate {
        certificate_id: rec.id.clone(),
        pem_certificate: rec.pem.clone(),
        pem_certificate_chain: chain(rec, ca),
        ca_cert: ca.root_pem.clone(),
        serial_number: rec.serial.clone(),
        subject: rec.subject.clone(),
        dns_names: rec.dns_names.clone(),
        uri_sans: rec.uri_sans.clone(),
        ip_addresses: rec.ip_addresses.clone(),
        create_time: Some(prost_types::Timestamp {
            seconds: rec.create_time_us.div_euclid(1_000_000),
            nanos: (rec.create_time_us.rem_euclid(1_000_000) * 1000) as i32,
        }),
        not_before: Some(ts_secs(rec.not_before)),
        expire_time: Some(ts_secs(rec.expire_time)),
        description: rec.description.clone(),
        tags: rec.tags.clone(),
        state: state as i32,
        request_id: rec.request_id.clone(),
    }
}

/// What a record keeps of its reply for `request_id` replays: the reply
/// without the certificate and chain PEMs, which the record and the CA
/// already hold (a tenth of the bytes per record). [`replayed`] puts them
/// back.
pub fn stored_reply(reply: &ClientCertificate) -> Vec<u8> {
    use prost::Message;
    ClientCertificate {
        pem_certificate: String::new(),
        pem_certificate_chain: Vec::new(),
        ca_cert: String::new(),
        ..reply.clone()
    }
    .encode_to_vec()
}

/// The reply a `request_id` replay returns: the stored one, with the
/// certificate from the record and the CA's current chain and root (the
/// same bytes unless the CA certificate was replaced since; then the chain
/// that validates now). Records written before replies were stored this
/// way hold the whole reply, which is returned as it is.
pub fn replayed(rec: &Record, ca: &CaChain) -> Option<ClientCertificate> {
    use prost::Message;
    let mut reply = ClientCertificate::decode(rec.reply.as_slice()).ok()?;
    if reply.pem_certificate.is_empty() {
        reply.pem_certificate = rec.pem.clone();
        reply.pem_certificate_chain = chain(rec, ca);
        reply.ca_cert = ca.root_pem.clone();
    }
    Some(reply)
}

/// A list call's page size (0: the default; capped) and keyset cursor.
pub fn page(
    page_size: i32,
    page_token: &str,
) -> Result<(u32, Option<(i64, String)>), tonic::Status> {
    let limit = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => {
            return Err(tonic::Status::invalid_argument(
                "page_size must not be negative",
            ));
        }
        n => (n as u32).min(MAX_PAGE_SIZE),
    };
    let after = if page_token.is_empty() {
        None
    } else {
        Some(decode_page_token(page_token).ok_or_else(|| {
            tonic::Status::invalid_argument(
                "page_token is malformed; pass next_page_token from the previous reply unchanged",
            )
        })?)
    };
    Ok((limit, after))
}

pub fn encode_page_token(create_time_us: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{create_time_us}:{id}"))
}

pub fn decode_page_token(token: &str) -> Option<(i64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let rest = text.strip_prefix("v1:")?;
    let (t, id) = rest.split_once(':')?;
    if id.is_empty() || id.len() > 64 {
        return None;
    }
    Some((t.parse().ok()?, id.to_owned()))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub state: Option<StateFilter>,
    pub tags: Vec<(String, String)>,
}

/// `state=ACTIVE|REVOKED|EXPIRED` and `tag:KEY=VALUE` terms, separated by
/// spaces or `AND`; KEY and VALUE may be double-quoted (`\"`, `\\` escape).
pub fn parse_filter(s: &str) -> Result<Filter, String> {
    let mut out = Filter::default();
    for (word, value) in parse_terms(s, "state=ACTIVE or tag:KEY=VALUE")? {
        if word == "state" {
            if out.state.is_some() {
                return Err("filter names state twice".into());
            }
            out.state = Some(match value.to_ascii_uppercase().as_str() {
                "ACTIVE" => StateFilter::Active,
                "REVOKED" => StateFilter::Revoked,
                "EXPIRED" => StateFilter::Expired,
                _ => {
                    return Err(format!(
                        "filter state {value:?} is not ACTIVE, REVOKED or EXPIRED"
                    ));
                }
            });
        } else if let Some(key) = word.strip_prefix("tag:") {
            if key.is_empty() {
                return Err("filter tag: needs a key".into());
            }
            if out.tags.len() >= 10 {
                return Err("filter has more than 10 tag terms".into());
            }
            out.tags.push((key.to_owned(), value));
        } else {
            return Err(format!(
                "filter term {word:?} is unknown; use state=… or tag:KEY=VALUE"
            ));
        }
    }
    Ok(out)
}

/// Splits a filter into `WORD=VALUE` terms separated by spaces or `AND`.
/// `hint` shows a valid term in the error for a term without `=`.
pub fn parse_terms(s: &str, hint: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let word = read_token(&mut chars, true)?;
        if word == "AND" {
            continue;
        }
        if chars.next() != Some('=') {
            return Err(format!("filter term {word:?} needs =; use {hint}"));
        }
        let value = read_token(&mut chars, false)?;
        out.push((word, value));
    }
}

/// Reads up to `=` (for a key) or whitespace (for a value); quoted parts may
/// hold anything. `tag:"a b"` keeps its `tag:` prefix unquoted.
fn read_token(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    key: bool,
) -> Result<String, String> {
    let mut out = String::new();
    while let Some(&c) = chars.peek() {
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(e) => out.push(e),
                        None => return Err("filter ends inside a quoted string".into()),
                    },
                    Some('"') => break,
                    Some(c) => out.push(c),
                    None => return Err("filter has an unterminated quote".into()),
                }
            }
        } else if (key && c == '=') || c.is_whitespace() {
            break;
        } else {
            out.push(c);
            chars.next();
        }
    }
    if out.is_empty() && key {
        return Err("filter has an empty term".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_junk() {
        let t = encode_page_token(
            1_700_000_000_123_456,
            "0b6f3c2e-1c1b-4f6e-9a53-0c4d2f8a9b10",
        );
        assert_eq!(
            decode_page_token(&t),
            Some((
                1_700_000_000_123_456,
                "0b6f3c2e-1c1b-4f6e-9a53-0c4d2f8a9b10".into()
            ))
        );
        for bad in [
            "",
            "!!!",
            "djE6",
            "djE6eDp5",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v2:1:a"),
        ] {
            assert_eq!(decode_page_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters() {
        assert_eq!(parse_filter("").unwrap(), Filter::default());
        let f = parse_filter(r#"state=revoked AND tag:team=pay tag:"a b"="x=y" tag:k="""#).unwrap();
        assert_eq!(f.state, Some(StateFilter::Revoked));
        assert_eq!(
            f.tags,
            vec![
                ("team".into(), "pay".into()),
                ("a b".into(), "x=y".into()),
                ("k".into(), String::new())
            ]
        );
        for bad in [
            "state",
            "state=NEW",
            "owner=1",
            "tag:=x",
            "tag:a=\"open",
            "state=ACTIVE state=REVOKED",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
