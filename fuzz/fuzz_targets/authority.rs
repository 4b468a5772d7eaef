//! The HTTP/2 `:authority` rewriter (`server::http2_authority::AuthorityFix`)
//! and the vendored HPACK decoder under it: what a client sends before any
//! gRPC handler runs.
//!
//! Input: the first byte picks how the rest is used and how it is read.
//! - `mode & 3 == 0`: the rest is the connection's bytes as they are (any
//!   preface or none).
//! - `mode & 3 == 1`: the client preface, then the rest as frames.
//! - otherwise: the preface, then the rest as header blocks that the
//!   harness frames itself, so the fuzzer works on HPACK directly: each
//!   record is `control, len_hi, len_lo, split, BLOCK[len]`; control bit 0
//!   END_STREAM, 1 PADDED, 2 PRIORITY, 3 split the block into HEADERS +
//!   CONTINUATION at `split`, 4 put a PING between blocks, 5 reuse the
//!   previous stream id.
//!
//! `(mode >> 2) % 5` picks the read size (1, 7, 64, 4096 bytes or all at
//! once) and `(mode >> 5)` the size of the reader's buffer, so blocks and
//! frames arrive cut at every place.
//!
//! Besides "no panic, no hang", the output is checked against a reference
//! reading of the input: the same frames with every header block decoded
//! and its first unparsable `:authority` set to `localhost`. What the
//! rewriter hands on must be a prefix of that (all of it when the input
//! was accepted), its header blocks must decode with a fresh HPACK decoder
//! (h2's view), and every other frame must pass byte for byte. Without the
//! preface, the bytes must pass unchanged.
#![no_main]

use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
};

use hsmca::server::http2_authority::AuthorityFix;
use libfuzzer_sys::fuzz_target;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const PUSH_PROMISE: u8 = 0x5;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const TABLE_SIZE: usize = 4096;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// An always-ready reader that hands out at most `chunk` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq)]
enum Item {
    /// A header block's fields, with its stream and END_STREAM flag.
    Block(u32, bool, Fields),
    /// Any other frame: type, flags, stream id (with its reserved bit),
    /// payload.
    Other(u8, u8, [u8; 4], Vec<u8>),
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = match mode & 3 {
        0 => rest.to_vec(),
        1 => [PREFACE, rest].concat(),
        _ => frame_blocks(rest),
    };
    let chunk = [1, 7, 64, 4096, usize::MAX][usize::from(mode >> 2) % 5];
    let out_buf = [1, 9, 100, 16_393, 70_000, 3, 17, 512][usize::from(mode >> 5)];
    let (output, accepted) = run(&input, chunk, out_buf);

    if !input.starts_with(PREFACE) {
        // Not HTTP/2 with prior knowledge (or too short to tell): passed
        // through untouched.
        if input.len() >= PREFACE.len() || !PREFACE.starts_with(&input) {
            assert!(input.starts_with(&output), "opaque bytes changed");
            if accepted {
                assert_eq!(output, input, "opaque bytes lost");
            }
        }
        return;
    }
    if output.len() < PREFACE.len() {
        assert!(PREFACE.starts_with(&output));
        return;
    }
    assert_eq!(&output[..PREFACE.len()], PREFACE);
    let (expected, reference_complete) = reference(&input[PREFACE.len()..]);
    let got = read_output(&output[PREFACE.len()..]);
    assert!(
        got.len() <= expected.len() && got[..] == expected[..got.len()],
        "output differs from the reference reading:\n got {got:?}\nwant {expected:?}"
    );
    if accepted {
        assert!(reference_complete, "accepted what the reference refuses");
        assert_eq!(got.len(), expected.len(), "accepted input was not all handed on");
    }
});

/// Reads everything through the rewriter; whether it ended cleanly.
fn run(input: &[u8], chunk: usize, out_buf: usize) -> (Vec<u8>, bool) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fix = AuthorityFix::new(Trickle { data: input, chunk });
    let mut output = Vec::new();
    let mut buf = vec![0u8; out_buf];
    loop {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut fix).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return (output, true),
            Poll::Ready(Ok(())) => output.extend_from_slice(rb.filled()),
            Poll::Ready(Err(_)) => return (output, false),
            Poll::Pending => panic!("pending although the input is always ready"),
        }
    }
}

/// The preface, a SETTINGS frame, then the records framed as header blocks.
fn frame_blocks(mut rest: &[u8]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let mut stream = 1u32;
    while let [control, hi, lo, split, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (block, next) = tail.split_at(len);
        rest = next;
        if control & 0x20 == 0 {
            stream += 2;
        }
        if control & 0x10 != 0 {
            frame(&mut out, PING, 0, 0, &[0; 8]);
        }
        let mut flags = if control & 1 != 0 { END_STREAM } else { 0 };
        let mut payload = Vec::new();
        if control & 2 != 0 {
            flags |= PADDED;
            payload.push(3);
        }
        if control & 4 != 0 {
            flags |= PRIORITY;
            payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        }
        let cut = if control & 8 != 0 {
            usize::from(*split).min(block.len())
        } else {
            block.len()
        };
        payload.extend_from_slice(&block[..cut]);
        if control & 2 != 0 {
            payload.extend_from_slice(&[0; 3]);
        }
        if cut == block.len() {
            flags |= END_HEADERS;
        }
        frame(&mut out, HEADERS, flags, stream, &payload);
        if cut < block.len() {
            frame(&mut out, CONTINUATION, END_HEADERS, stream, &block[cut..]);
        }
    }
    out
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The frames after the preface: (type, flags, stream id bytes, payload);
/// stops at a frame that is cut off.
fn frames(mut rest: &[u8]) -> (Vec<(u8, u8, [u8; 4], &[u8])>, bool) {
    let mut frames = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 9 {
            return (frames, false);
        }
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            return (frames, false);
        }
        frames.push((rest[3], rest[4], [rest[5], rest[6], rest[7], rest[8]], &rest[9..9 + len]));
        rest = &rest[9 + len..];
    }
    (frames, true)
}

fn stream_id(id: [u8; 4]) -> u32 {
    u32::from_be_bytes(id) & 0x7fff_ffff
}

/// What the rewriter should hand on for `input` (after the preface): every
/// frame, header blocks decoded (with no size limits) and their first
/// unparsable `:authority` replaced. Whether the whole input was read.
fn reference(input: &[u8]) -> (Vec<Item>, bool) {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    let (frames, whole) = frames(input);
    let mut items = Vec::new();
    // The open block: stream, END_STREAM, fragments so far.
    let mut open: Option<(u32, bool, Vec<u8>)> = None;
    for (kind, flags, id, payload) in frames {
        if open.is_some() && kind != CONTINUATION {
            return (items, false);
        }
        match kind {
            HEADERS => {
                if payload.len() > 16_384 {
                    return (items, false);
                }
                let mut fragment = payload;
                let mut padding = 0;
                if flags & PADDED != 0 {
                    let Some((&pad, rest)) = fragment.split_first() else {
                        return (items, false);
                    };
                    padding = usize::from(pad);
                    fragment = rest;
                }
                if flags & PRIORITY != 0 {
                    if fragment.len() < 5 {
                        return (items, false);
                    }
                    fragment = &fragment[5..];
                }
                let Some(len) = fragment.len().checked_sub(padding) else {
                    return (items, false);
                };
                open = Some((stream_id(id), flags & END_STREAM != 0, fragment[..len].to_vec()));
            }
            CONTINUATION => {
                if payload.len() > 16_384 {
                    return (items, false);
                }
                match open.as_mut() {
                    Some((stream, _, block)) if *stream == stream_id(id) => {
                        block.extend_from_slice(payload)
                    }
                    _ => return (items, false),
                }
            }
            PUSH_PROMISE => return (items, false),
            _ => items.push(Item::Other(kind, flags, id, payload.to_vec())),
        }
        if flags & END_HEADERS != 0
            && let Some((stream, end_stream, block)) = open.take()
        {
            let Ok(mut fields) = decoder.decode(&block) else {
                return (items, false);
            };
            if let Some(f) = fields.iter_mut().find(|(n, v)| {
                n == b":authority" && http::uri::Authority::try_from(&v[..]).is_err()
            }) {
                f.1 = b"localhost".to_vec();
            }
            items.push(Item::Block(stream, end_stream, fields));
        }
    }
    (items, whole && open.is_none())
}

/// What the rewriter handed on (after the preface), read as h2 would: a
/// fresh decoder for its own encoder's blocks. Checks the framing it
/// promises: no padding, frames within 16 KiB, blocks not interleaved.
fn read_output(output: &[u8]) -> Vec<Item> {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    let (frames, _) = frames(output);
    let mut items = Vec::new();
    let mut open: Option<(u32, bool, Vec<u8>)> = None;
    for (kind, flags, id, payload) in frames {
        match kind {
            HEADERS => {
                assert!(open.is_none(), "HEADERS inside a header block");
                assert_eq!(flags & PADDED, 0, "padding handed on");
                assert!(payload.len() <= 16_384, "HEADERS frame too large");
                let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                open = Some((stream_id(id), flags & END_STREAM != 0, payload[skip..].to_vec()));
            }
            CONTINUATION => {
                assert!(payload.len() <= 16_384, "CONTINUATION frame too large");
                let (stream, _, block) = open.as_mut().expect("CONTINUATION outside a block");
                assert_eq!(*stream, stream_id(id), "CONTINUATION on another stream");
                block.extend_from_slice(payload);
            }
            _ => {
                assert!(open.is_none(), "a frame inside a header block");
                items.push(Item::Other(kind, flags, id, payload.to_vec()));
            }
        }
        if flags & END_HEADERS != 0
            && let Some((stream, end_stream, block)) = open.take()
        {
            let fields = decoder
                .decode(&block)
                .expect("the rewritten block decodes with a fresh decoder");
            items.push(Item::Block(stream, end_stream, fields));
        }
    }
    items
}
