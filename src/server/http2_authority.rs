//! Accepts the `:authority` that gRPC clients send on Unix sockets.
//!
//! grpc-core ≥ 1.57 (Python grpcio, C++, Ruby, …), grpc-java and grpc-swift
//! send the socket path as the HTTP/2 `:authority` of a `unix:` channel, e.g.
//! `tmp%2Fhsmca.sock` or `/run/hsmca/hsmca.sock`. That is not a valid URI
//! authority, and the HTTP/2 stack under the daemon (h2) resets such a stream
//! with PROTOCOL_ERROR before any handler sees it, so a client with default
//! channel options could not talk to hsmca at all (hyperium/h2#487,
//! grpc/grpc#38142).
//!
//! [`AuthorityFix`] sits between the accepted socket and the HTTP/2 server
//! and replaces an `:authority` that does not parse with `localhost`, the
//! same value grpc-go sends for `unix:` targets. The daemon never looks at the
//! authority: it serves one socket and identifies callers by their
//! credentials (SO_PEERCRED), which still reach the handlers unchanged.
//!
//! How: writes and every frame except HEADERS/CONTINUATION pass through
//! untouched. Each header block is HPACK-decoded with a decoder that tracks
//! the client's encoder, and re-encoded, changed or not, with an encoder that
//! h2's decoder tracks; the two compression contexts are independent, so
//! once any block is rewritten every later one must be too. Padding is
//! dropped and a block arrives as one HEADERS frame, split into CONTINUATION
//! frames only when it exceeds the frame size limit. After the client
//! preface, anything that is not well-formed HTTP/2 framing or HPACK ends the
//! connection with an I/O error; a connection that does not start with the
//! preface is passed through untouched, for the server to refuse as before.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a client sends first on an HTTP/2 connection with prior knowledge.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// h2's SETTINGS_MAX_FRAME_SIZE, which the daemon leaves at its default:
/// HEADERS/CONTINUATION frames beyond it are rejected, frames we emit stay
/// within it.
const MAX_FRAME_SIZE: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE on both hops: the daemon does not change h2's
/// default, so the client's encoder stays within it and h2's decoder expects
/// us to.
const HEADER_TABLE_SIZE: usize = 4_096;
/// Largest compressed header block accepted (all fragments together).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest decoded header list accepted (RFC 7541 size: name + value + 32
/// per field). Well above h2's own limit (16 KiB by default), which then
/// still answers oversized requests itself; this one bounds our memory
/// against blocks that expand through the dynamic table.
const MAX_HEADER_LIST: usize = 256 * 1024;
/// Room for one whole HEADERS/CONTINUATION frame plus read-ahead.
const INPUT_BUFFER: usize = 2 * (FRAME_HEADER_LEN + MAX_FRAME_SIZE);
/// Scratch buffers that grew past this for an unusual block are shrunk back.
const KEEP_CAPACITY: usize = 2 * MAX_FRAME_SIZE;
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// The accepted connection as the HTTP/2 server sees it: see the module
/// documentation.
pub struct AuthorityFix<S> {
    inner: S,
    /// Bytes read from `inner`, not yet handed on: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Rewritten frames waiting to be read: `output[output_pos..]`.
    output: Vec<u8>,
    output_pos: usize,
    state: State,
    /// An error found after data already handed on in the same read.
    error: Option<io::Error>,
    blocks: Blocks,
}

/// Header blocks in progress and the rewriting machinery.
struct Blocks {
    /// A header block waiting for its CONTINUATION frames.
    pending: Option<BlockStart>,
    block: Vec<u8>,
    rewriter: Rewriter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the 24-byte client preface.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Handing on the next `remaining` bytes unchanged (the preface, or a
    /// whole frame that needs no rewriting, header included).
    Copy { remaining: usize },
    /// Not HTTP/2 with prior knowledge: everything passes through and the
    /// server answers it as it would without us.
    Opaque,
    /// A framing or compression error was returned; the connection is dead.
    Failed,
}

/// The HEADERS frame that opened a block.
#[derive(Clone, Copy, Debug)]
struct BlockStart {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// What processing the buffered input achieved.
enum Step {
    Progress,
    NeedInput,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            input: vec![0; INPUT_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            output: Vec::new(),
            output_pos: 0,
            state: State::Preface,
            error: None,
            blocks: Blocks {
                pending: None,
                block: Vec::new(),
                rewriter: Rewriter::new(),
            },
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Works through buffered input, putting what can be handed on into
    /// `buf` or `self.output`.
    fn step(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<Step> {
        let avail = self.end - self.start;
        match self.state {
            State::Failed => Err(protocol_error("connection already failed")),
            State::Opaque | State::Copy { .. } => {
                if avail == 0 {
                    return Ok(Step::NeedInput);
                }
                let mut n = avail.min(buf.remaining());
                if let State::Copy { remaining } = self.state {
                    n = n.min(remaining);
                    self.state = if remaining == n {
                        State::Frame
                    } else {
                        State::Copy {
                            remaining: remaining - n,
                        }
                    };
                }
                buf.put_slice(&self.input[self.start..self.start + n]);
                self.start += n;
                Ok(Step::Progress)
            }
            State::Preface => {
                let seen = &self.input[self.start..self.end];
                if !PREFACE.starts_with(&seen[..seen.len().min(PREFACE.len())]) {
                    self.state = State::Opaque;
                    Ok(Step::Progress)
                } else if seen.len() >= PREFACE.len() {
                    self.state = State::Copy {
                        remaining: PREFACE.len(),
                    };
                    Ok(Step::Progress)
                } else {
                    Ok(Step::NeedInput)
                }
            }
            State::Frame => {
                if avail < FRAME_HEADER_LEN {
                    return Ok(Step::NeedInput);
                }
                let h = &self.input[self.start..self.start + FRAME_HEADER_LEN];
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let kind = h[3];
                let flags = h[4];
                let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                if self.blocks.pending.is_some() && kind != TYPE_CONTINUATION {
                    return Err(protocol_error("header block interrupted by another frame"));
                }
                match kind {
                    TYPE_HEADERS | TYPE_CONTINUATION => {
                        if len > MAX_FRAME_SIZE {
                            return Err(protocol_error(
                                "header frame larger than the frame size limit",
                            ));
                        }
                        if avail < FRAME_HEADER_LEN + len {
                            return Ok(Step::NeedInput);
                        }
                        let from = self.start + FRAME_HEADER_LEN;
                        self.start = from + len;
                        let payload = &self.input[from..from + len];
                        let out = &mut self.output;
                        if kind == TYPE_HEADERS {
                            self.blocks.on_headers(flags, stream_id, payload, out)?;
                        } else {
                            self.blocks
                                .on_continuation(flags, stream_id, payload, out)?;
                        }
                        Ok(Step::Progress)
                    }
                    // Only servers push; h2 would end the connection anyway,
                    // and its header block belongs to the compression context
                    // we rewrite.
                    TYPE_PUSH_PROMISE => Err(protocol_error("PUSH_PROMISE from a client")),
                    _ => {
                        self.state = State::Copy {
                            remaining: FRAME_HEADER_LEN + len,
                        };
                        Ok(Step::Progress)
                    }
                }
            }
        }
    }

    /// Hands on rewritten frames; true if `buf` is now full.
    fn drain_output(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let n = (self.output.len() - self.output_pos).min(buf.remaining());
        buf.put_slice(&self.output[self.output_pos..self.output_pos + n]);
        self.output_pos += n;
        if self.output_pos == self.output.len() {
            self.output.clear();
            self.output_pos = 0;
            trim(&mut self.output);
        }
        buf.remaining() == 0
    }

    /// Whether the input ended between frames rather than inside one.
    fn at_boundary(&self) -> bool {
        self.start == self.end
            && self.blocks.pending.is_none()
            && matches!(self.state, State::Frame | State::Preface | State::Opaque)
    }
}

impl<S: AsyncRead + Unpin> AuthorityFix<S> {
    /// Reads more input; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.input.len() - self.end < FRAME_HEADER_LEN + MAX_FRAME_SIZE {
            // Make room for a whole frame after the partial one we hold.
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut rb = ReadBuf::new(&mut self.input[self.end..]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        let filled_before = buf.filled().len();
        loop {
            if this.output_pos < this.output.len() && this.drain_output(buf) {
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.step(buf) {
                Ok(Step::Progress) => continue,
                Ok(Step::NeedInput) => {}
                Err(e) => {
                    this.state = State::Failed;
                    if buf.filled().len() > filled_before {
                        // Readers expect nothing in `buf` with an error:
                        // hand on what we have, report the error next time.
                        this.error = Some(e);
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(e));
                }
            }
            if buf.filled().len() > filled_before {
                // Hand on what we have rather than wait for more.
                return Poll::Ready(Ok(()));
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.at_boundary() => return Poll::Ready(Ok(())),
                Ok(0) => {
                    this.state = State::Failed;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside an HTTP/2 frame",
                    )));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = <S as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl Blocks {
    fn on_headers(
        &mut self,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut fragment = payload;
        let mut padding = 0;
        if flags & FLAG_PADDED != 0 {
            let (&pad, rest) = fragment
                .split_first()
                .ok_or_else(|| protocol_error("PADDED HEADERS frame without a pad length"))?;
            padding = usize::from(pad);
            fragment = rest;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            let (fields, rest) = fragment
                .split_first_chunk::<5>()
                .ok_or_else(|| protocol_error("HEADERS frame too short for its priority"))?;
            priority = Some(*fields);
            fragment = rest;
        }
        let fragment = fragment
            .len()
            .checked_sub(padding)
            .and_then(|len| fragment.get(..len))
            .ok_or_else(|| protocol_error("HEADERS padding longer than the frame"))?;
        let start = BlockStart {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
        };
        if flags & FLAG_END_HEADERS != 0 {
            // The usual case: the whole block in one frame, decoded in place.
            self.rewriter.rewrite(fragment, start, out)
        } else {
            self.block.clear();
            self.block.extend_from_slice(fragment);
            self.pending = Some(start);
            Ok(())
        }
    }

    fn on_continuation(
        &mut self,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let start = self
            .pending
            .ok_or_else(|| protocol_error("CONTINUATION without HEADERS"))?;
        if stream_id != start.stream_id {
            return Err(protocol_error("CONTINUATION on another stream"));
        }
        if self.block.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(protocol_error("header block too large"));
        }
        self.block.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS != 0 {
            self.pending = None;
            self.rewriter.rewrite(&self.block, start, out)?;
            self.block.clear();
            trim(&mut self.block);
        }
        Ok(())
    }
}

/// The two HPACK contexts and reusable scratch space.
struct Rewriter {
    /// Mirrors the client's encoder.
    decoder: Decoder<'static>,
    /// Mirrored by h2's decoder.
    encoder: Encoder<'static>,
    /// Decoded names and values back to back; `fields` holds each field's
    /// (name start, value start, value end) in it.
    arena: Vec<u8>,
    fields: Vec<(usize, usize, usize)>,
    encoded: Vec<u8>,
    /// Whether this connection already logged a replacement.
    logged: bool,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            decoder,
            // Starts at 4096 (HEADER_TABLE_SIZE) and never emits size updates.
            encoder: Encoder::new(),
            arena: Vec::new(),
            fields: Vec::new(),
            encoded: Vec::new(),
            logged: false,
        }
    }

    /// Decodes `block`, fixes `:authority`, re-encodes, and appends the
    /// resulting HEADERS (+ CONTINUATION) frames to `out`.
    fn rewrite(&mut self, block: &[u8], start: BlockStart, out: &mut Vec<u8>) -> io::Result<()> {
        self.arena.clear();
        self.fields.clear();
        let arena = &mut self.arena;
        let fields = &mut self.fields;
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(block, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size <= MAX_HEADER_LIST {
                    let name_start = arena.len();
                    arena.extend_from_slice(&name);
                    let value_start = arena.len();
                    arena.extend_from_slice(&value);
                    fields.push((name_start, value_start, arena.len()));
                }
            })
            .map_err(|e| protocol_error(format!("HPACK: {e}")))?;
        if list_size > MAX_HEADER_LIST {
            return Err(protocol_error("header list too large"));
        }

        let arena = &self.arena;
        let replace = self.fields.iter().position(|&(n, v, e)| {
            &arena[n..v] == b":authority" && http::uri::Authority::try_from(&arena[v..e]).is_err()
        });
        if let Some(i) = replace
            && !self.logged
        {
            self.logged = true;
            let (_, v, e) = self.fields[i];
            tracing::debug!(
                authority = %String::from_utf8_lossy(&arena[v..e]),
                "client sent an unparsable :authority; passing localhost on"
            );
        }

        self.encoded.clear();
        let headers = self.fields.iter().enumerate().map(|(i, &(n, v, e))| {
            let value = if Some(i) == replace {
                REPLACEMENT_AUTHORITY
            } else {
                &arena[v..e]
            };
            (&arena[n..v], value)
        });
        self.encoder.encode_into(headers, &mut self.encoded)?;

        write_block(&self.encoded, start, out);
        trim(&mut self.arena);
        trim(&mut self.encoded);
        Ok(())
    }
}

/// Frames an encoded header block: one HEADERS frame, followed by
/// CONTINUATION frames only if it does not fit.
fn write_block(encoded: &[u8], start: BlockStart, out: &mut Vec<u8>) {
    let priority_len = if start.priority.is_some() { 5 } else { 0 };
    let first = encoded.len().min(MAX_FRAME_SIZE - priority_len);
    let mut flags = 0;
    if start.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if start.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if first == encoded.len() {
        flags |= FLAG_END_HEADERS;
    }
    out.reserve(
        encoded.len() + priority_len + FRAME_HEADER_LEN * (1 + encoded.len() / MAX_FRAME_SIZE),
    );
    write_frame_header(
        out,
        priority_len + first,
        TYPE_HEADERS,
        flags,
        start.stream_id,
    );
    if let Some(priority) = start.priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(&encoded[..first]);
    let mut rest = &encoded[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME_SIZE);
        let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(out, n, TYPE_CONTINUATION, flags, start.stream_id);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn write_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// Gives back memory that one unusually large block made a buffer grow to.
fn trim(v: &mut Vec<u8>) {
    if v.capacity() > KEEP_CAPACITY && v.len() <= KEEP_CAPACITY {
        v.shrink_to(KEEP_CAPACITY);
    }
}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from client: {}", msg.into()),
    )
}

#[cfg(test)]
mod tests;
