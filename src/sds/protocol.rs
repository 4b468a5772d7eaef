//! The xDS state-of-the-world rules of one `StreamSecrets` stream, as a pure
//! state machine: a request or a change of the caller's identity state goes
//! in, and out comes whether to answer and why. The stream loop
//! ([`super::service`]) does the I/O and builds the response; keeping the
//! decisions here lets every rule be tested without a socket.
//!
//! The rules (Envoy's xDS protocol, as SPIRE's agent applies them):
//! - the first request is answered as soon as the caller's state is known;
//! - every response carries the state's version and a nonce unique to the
//!   stream; a request whose `response_nonce` is not the last one sent is
//!   stale (it answers an older response) and is ignored;
//! - a request with the last nonce is an ACK when it carries the version
//!   sent and no `error_detail`, otherwise a NACK; neither is answered
//!   (answering a NACK with the same secrets would loop), unless it also
//!   changes the set of requested names;
//! - a new state version (a rotation, a revocation, a bundle change) is
//!   pushed once the client has asked for something.

use std::collections::BTreeSet;

/// What one request of the stream says, taken from the wire message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub version_info: String,
    pub response_nonce: String,
    pub resource_names: Vec<String>,
    /// The `error_detail` message when the client rejected a response.
    pub error_detail: Option<String>,
}

/// The decision about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Build a response for [`Stream::names`] from the current state and
    /// send it with this version and nonce, then call [`Stream::sent`].
    Respond(Reply),
    /// Send nothing.
    Quiet(Why),
}

/// The version and nonce a response must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub version: String,
    pub nonce: String,
}

/// Why nothing is sent (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The client applied the last response.
    Ack,
    /// The client rejected the last response (`error_detail`, or an older
    /// version with the last nonce); it keeps what it had until the next
    /// state version.
    Nack { detail: Option<String> },
    /// The request answers a response older than the last one sent.
    StaleNonce { expected: String },
    /// Requested, but the caller's state is not known yet: the response
    /// goes out when it is.
    NoStateYet,
    /// A state change before the client asked for anything.
    NotRequested,
    /// A state change that the client already has.
    SameVersion,
}

/// One stream's protocol state.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Prefix of every nonce of this stream, so a nonce from another stream
    /// never matches.
    tag: String,
    counter: u64,
    /// The names of the last request that was not stale; `None` before the
    /// first request.
    names: Option<BTreeSet<String>>,
    /// The latest state version known.
    state: Option<u64>,
    /// The last response sent.
    last: Option<Reply>,
}

impl Stream {
    /// `tag` makes this stream's nonces distinct from every other stream's.
    pub fn new(tag: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            counter: 0,
            names: None,
            state: None,
            last: None,
        }
    }

    /// The names of the latest request that was not stale, sorted and
    /// without duplicates (empty means "all of the caller's secrets").
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().flatten().map(String::as_str)
    }

    /// A request arrived.
    pub fn on_request(&mut self, req: &Request) -> Decision {
        let names: BTreeSet<String> = req
            .resource_names
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        let mut nack = None;
        if let Some(last) = &self.last {
            if req.response_nonce != last.nonce {
                return Decision::Quiet(Why::StaleNonce {
                    expected: last.nonce.clone(),
                });
            }
            if req.error_detail.is_some() || req.version_info != last.version {
                nack = Some(Why::Nack {
                    detail: req.error_detail.clone(),
                });
            }
        }
        let changed = self.names.as_ref() != Some(&names);
        self.names = Some(names);
        if !changed {
            return Decision::Quiet(match (nack, &self.last) {
                (Some(nack), _) => nack,
                (None, Some(_)) => Why::Ack,
                (None, None) => Why::NoStateYet,
            });
        }
        match self.state {
            Some(v) => self.respond(v),
            None => Decision::Quiet(Why::NoStateYet),
        }
    }

    /// The caller's state has version `version` now.
    pub fn on_state(&mut self, version: u64) -> Decision {
        self.state = Some(version);
        if self.names.is_none() {
            return Decision::Quiet(Why::NotRequested);
        }
        if matches!(&self.last, Some(last) if last.version == version.to_string()) {
            return Decision::Quiet(Why::SameVersion);
        }
        self.respond(version)
    }

    fn respond(&mut self, version: u64) -> Decision {
        self.counter += 1;
        Decision::Respond(Reply {
            version: version.to_string(),
            nonce: format!("{}-{}", self.tag, self.counter),
        })
    }

    /// The response decided last was sent (a response that could not be
    /// built, and so was not sent, leaves the stream as it was).
    pub fn sent(&mut self, reply: &Reply) {
        self.last = Some(reply.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: &str, nonce: &str, names: &[&str]) -> Request {
        Request {
            version_info: version.into(),
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|s| (*s).into()).collect(),
            error_detail: None,
        }
    }

    fn nack(version: &str, nonce: &str, names: &[&str]) -> Request {
        Request {
            error_detail: Some("bad key".into()),
            ..req(version, nonce, names)
        }
    }

    /// Responds and records the response as sent.
    fn responds(s: &mut Stream, d: Decision) -> Reply {
        match d {
            Decision::Respond(r) => {
                s.sent(&r);
                r
            }
            Decision::Quiet(why) => panic!("expected a response, got silence ({why:?})"),
        }
    }

    fn quiet(d: Decision) -> Why {
        match d {
            Decision::Quiet(why) => why,
            Decision::Respond(r) => panic!("expected silence, got a response {r:?}"),
        }
    }

    #[test]
    fn first_request_is_answered_with_the_state_version() {
        let mut s = Stream::new("t");
        assert_eq!(quiet(s.on_state(3)), Why::NotRequested);
        let d = s.on_request(&req("", "", &["default"]));
        let r = responds(&mut s, d);
        assert_eq!(r.version, "3");
        assert_eq!(r.nonce, "t-1");
        assert_eq!(s.names().collect::<Vec<_>>(), ["default"]);
    }

    #[test]
    fn first_request_before_any_state_waits_for_it() {
        let mut s = Stream::new("t");
        assert_eq!(quiet(s.on_request(&req("", "", &[]))), Why::NoStateYet);
        let d = s.on_state(1);
        let r = responds(&mut s, d);
        assert_eq!((r.version.as_str(), r.nonce.as_str()), ("1", "t-1"));
    }

    #[test]
    fn a_reconnecting_client_is_answered_whatever_version_it_had() {
        // Envoy sends the version it holds on a new stream, with no nonce.
        let mut s = Stream::new("t");
        s.on_state(7);
        let d = s.on_request(&req("7", "", &["default"]));
        assert_eq!(responds(&mut s, d).version, "7");
    }

    #[test]
    fn ack_is_not_answered() {
        let mut s = Stream::new("t");
        s.on_state(1);
        let d = s.on_request(&req("", "", &["default", "ROOTCA"]));
        let r = responds(&mut s, d);
        let ack = req(&r.version, &r.nonce, &["ROOTCA", "default"]);
        assert_eq!(quiet(s.on_request(&ack)), Why::Ack);
        // Again: still nothing.
        assert_eq!(quiet(s.on_request(&ack)), Why::Ack);
    }

    #[test]
    fn nack_is_not_answered_until_the_next_version() {
        let mut s = Stream::new("t");
        s.on_state(1);
        let d = s.on_request(&req("", "", &["default"]));
        let r = responds(&mut s, d);
        // Rejected: error_detail, and the version the client still holds.
        let why = quiet(s.on_request(&nack("", &r.nonce, &["default"])));
        assert_eq!(
            why,
            Why::Nack {
                detail: Some("bad key".into())
            }
        );
        // The same NACK again (a client retrying) is not a loop either.
        assert!(matches!(
            quiet(s.on_request(&nack("", &r.nonce, &["default"]))),
            Why::Nack { .. }
        ));
        // The next rotation goes out.
        let d = s.on_state(2);
        let r2 = responds(&mut s, d);
        assert_eq!(r2.version, "2");
        assert_ne!(r2.nonce, r.nonce);
    }

    #[test]
    fn an_older_version_with_the_last_nonce_is_a_nack() {
        let mut s = Stream::new("t");
        s.on_state(1);
        let d = s.on_request(&req("", "", &[]));
        let r = responds(&mut s, d);
        let d = s.on_state(2);
        let r2 = responds(&mut s, d);
        let why = quiet(s.on_request(&req(&r.version, &r2.nonce, &[])));
        assert_eq!(why, Why::Nack { detail: None });
    }

    #[test]
    fn nack_that_changes_the_names_is_answered() {
        let mut s = Stream::new("t");
        s.on_state(1);
        let d = s.on_request(&req("", "", &["default"]));
        let r = responds(&mut s, d);
        let d = s.on_request(&nack("", &r.nonce, &["ROOTCA"]));
        assert_eq!(responds(&mut s, d).version, "1");
        assert_eq!(s.names().collect::<Vec<_>>(), ["ROOTCA"]);
    }

    #[test]
    fn stale_nonce_is_ignored_and_changes_nothing() {
        let mut s = Stream::new("t");
        s.on_state(1);
        let d = s.on_request(&req("", "", &["default"]));
        let r1 = responds(&mut s, d);
        let d = s.on_state(2);
        let r2 = responds(&mut s, d);
        // An ACK of the first response, arriving after the second was sent,
        // even one that asks for other names.
        let why = quiet(s.on_request(&req(&r1.version, &r1.nonce, &["ROOTCA"])));
        assert_eq!(
            why,
            Why::StaleNonce {
                expected: r2.nonce.clone()
            }
        );
        assert_eq!(s.names().collect::<Vec<_>>(), ["default"]);
        // An empty nonce after a response, and another stream's nonce.
        assert!(matches!(
            quiet(s.on_request(&req("2", "", &["default"]))),
            Why::StaleNonce { .. }
        ));
        assert!(matches!(
            quiet(s.on_request(&req("2", "u-2", &["default"]))),
            Why::StaleNonce { .. }
        ));
        // The real ACK still works.
        assert_eq!(
            quiet(s.on_request(&req("2", &r2.nonce, &["default"]))),
            Why::Ack
        );
    }

    #[test]
    fn a_change_of_names_is_answered() {
        let mut s = Stream::new("t");
        s.on_state(4);
        let d = s.on_request(&req("", "", &["default"]));
        let r = responds(&mut s, d);
        let d = s.on_request(&req(&r.version, &r.nonce, &["default", "ROOTCA"]));
        let r2 = responds(&mut s, d);
        assert_eq!(r2.version, "4");
        assert_ne!(r2.nonce, r.nonce);
        // Names are a set: order, duplicates and empty names do not count.
        let same = req("4", &r2.nonce, &["ROOTCA", "", "default", "ROOTCA"]);
        assert_eq!(quiet(s.on_request(&same)), Why::Ack);
        // From some names to all of them.
        let d = s.on_request(&req("4", &r2.nonce, &[]));
        responds(&mut s, d);
        assert_eq!(s.names().count(), 0);
    }

    #[test]
    fn every_new_version_is_pushed_once() {
        let mut s = Stream::new("t");
        s.on_state(1);
        let d = s.on_request(&req("", "", &[]));
        responds(&mut s, d);
        assert_eq!(quiet(s.on_state(1)), Why::SameVersion);
        let mut nonces = BTreeSet::new();
        for v in 2..=5 {
            let d = s.on_state(v);
            let r = responds(&mut s, d);
            assert_eq!(r.version, v.to_string());
            assert!(nonces.insert(r.nonce.clone()), "nonce reused");
            assert_eq!(
                quiet(s.on_request(&req(&r.version, &r.nonce, &[]))),
                Why::Ack
            );
            assert_eq!(quiet(s.on_state(v)), Why::SameVersion);
        }
    }

    #[test]
    fn a_response_not_sent_leaves_the_stream_unchanged() {
        let mut s = Stream::new("t");
        s.on_state(1);
        // Decided but never sent (the names could not be served).
        assert!(matches!(
            s.on_request(&req("", "", &["nope"])),
            Decision::Respond(_)
        ));
        // The next request is not measured against a nonce never sent.
        let d = s.on_request(&req("", "", &["default"]));
        let r = responds(&mut s, d);
        assert_eq!(r.nonce, "t-2");
    }

    #[test]
    fn version_is_pushed_after_names_waited_for_state() {
        let mut s = Stream::new("t");
        assert_eq!(quiet(s.on_request(&req("", "", &["a"]))), Why::NoStateYet);
        assert_eq!(quiet(s.on_request(&req("", "", &["a"]))), Why::NoStateYet);
        let d = s.on_state(9);
        assert_eq!(responds(&mut s, d).version, "9");
    }
}
