use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

const SETTINGS: u8 = 0x4;

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Roughly what grpcio sends for a unary call.
fn request(authority: &str) -> Fields {
    fields(&[
        (":scheme", "http"),
        (":method", "POST"),
        (":authority", authority),
        (":path", "/hsmca.v1.CertificateAuthority/Issue"),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        (
            "user-agent",
            "grpc-python/1.76.0 grpc-c/51.0.0 (linux; chttp2)",
        ),
        ("grpc-accept-encoding", "identity, deflate, gzip"),
    ])
}

fn with_authority(mut list: Fields, authority: &str) -> Fields {
    for (n, v) in &mut list {
        if n == b":authority" {
            *v = authority.as_bytes().to_vec();
        }
    }
    list
}

fn encode(encoder: &mut Encoder<'static>, list: &Fields) -> Vec<u8> {
    encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])))
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    write_frame_header(&mut f, payload.len(), kind, flags, stream_id);
    f.extend_from_slice(payload);
    f
}

fn headers(stream_id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(TYPE_HEADERS, flags | FLAG_END_HEADERS, stream_id, block)
}

fn start() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0x40, 0, 0]));
    v
}

async fn run(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    AuthorityFix::new(input).read_to_end(&mut out).await?;
    Ok(out)
}

#[derive(Debug, PartialEq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

/// Splits what the wrapper hands on into frames, checking the preface.
fn split(out: &[u8]) -> Vec<Frame> {
    assert_eq!(&out[..24], PREFACE);
    let mut rest = &out[24..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frames.push(Frame {
            kind: rest[3],
            flags: rest[4],
            stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    frames
}

/// Decodes every header block in the output the way h2 would: a fresh
/// decoder with h2's default table size. Checks the framing we promise.
fn decode_blocks(out: &[u8]) -> Vec<(Frame, Fields)> {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
    let mut blocks = Vec::new();
    let mut open: Option<(Frame, Vec<u8>)> = None;
    for f in split(out) {
        assert!(f.payload.len() <= MAX_FRAME_SIZE, "frame too large");
        match f.kind {
            TYPE_HEADERS => {
                assert!(open.is_none());
                assert_eq!(f.flags & FLAG_PADDED, 0);
                let skip = if f.flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                let block = f.payload[skip..].to_vec();
                open = Some((f, block));
            }
            TYPE_CONTINUATION => {
                let (h, block) = open.as_mut().unwrap();
                assert_eq!(f.stream_id, h.stream_id);
                block.extend_from_slice(&f.payload);
                h.flags |= f.flags & FLAG_END_HEADERS;
            }
            _ => assert!(open.is_none(), "frame inside a header block"),
        }
        if open
            .as_ref()
            .is_some_and(|(h, _)| h.flags & FLAG_END_HEADERS != 0)
        {
            let (h, block) = open.take().unwrap();
            blocks.push((h, decoder.decode(&block).unwrap()));
        }
    }
    assert!(open.is_none(), "unfinished header block");
    blocks
}

#[tokio::test]
async fn percent_encoded_authority_becomes_localhost() {
    let mut client = Encoder::new();
    let req = request("tmp%2Fx%2Fhsmca.sock");
    let mut input = start();
    input.extend(headers(1, 0, &encode(&mut client, &req)));
    let out = run(&input).await.unwrap();
    let blocks = decode_blocks(&out);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].1, with_authority(req, "localhost"));
    assert_eq!(blocks[0].0.flags, FLAG_END_HEADERS);
    assert_eq!(blocks[0].0.stream_id, 1);
    // The SETTINGS frame before it is untouched.
    assert_eq!(out[..start().len()], start()[..]);
}

#[tokio::test]
async fn socket_path_authority_becomes_localhost() {
    // grpc-java and grpc-swift send the path itself.
    let mut client = Encoder::new();
    let req = request("/var/run/x.sock");
    let mut input = start();
    input.extend(headers(1, FLAG_END_STREAM, &encode(&mut client, &req)));
    let blocks = decode_blocks(&run(&input).await.unwrap());
    assert_eq!(blocks[0].1, with_authority(req, "localhost"));
    assert_eq!(blocks[0].0.flags, FLAG_END_HEADERS | FLAG_END_STREAM);
}

#[tokio::test]
async fn valid_authority_and_absent_authority_are_kept() {
    let mut client = Encoder::new();
    let mut input = start();
    let reqs = [
        request("localhost"),
        request("example.com:8443"),
        request("[::1]:50051"),
        request("localhost"),
        fields(&[(":method", "GET"), (":path", "/"), (":scheme", "http")]),
    ];
    for (i, req) in reqs.iter().enumerate() {
        input.extend(headers(1 + 2 * i as u32, 0, &encode(&mut client, req)));
    }
    let blocks = decode_blocks(&run(&input).await.unwrap());
    let got: Vec<Fields> = blocks.into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, reqs);
}

#[tokio::test]
async fn dynamic_table_reuse_and_eviction_stay_in_step() {
    // The client indexes its headers and refers back to them; after a
    // rewrite, h2's side must still decode what the client meant. Many
    // distinct custom headers push entries out of both tables.
    let mut client = Encoder::new();
    let mut input = start();
    let mut expected = Vec::new();
    for i in 0..60u32 {
        let authority = if i % 3 == 0 {
            "localhost"
        } else {
            "tmp%2Fx.sock"
        };
        let mut req = request(authority);
        req.push((
            format!("x-custom-{}", i % 7).into_bytes(),
            format!("{:0>200}", i % 11).into_bytes(),
        ));
        input.extend(headers(1 + 2 * i, 0, &encode(&mut client, &req)));
        expected.push(with_authority(req, "localhost"));
    }
    let blocks = decode_blocks(&run(&input).await.unwrap());
    let got: Vec<Fields> = blocks.into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn dynamic_table_size_updates_are_honoured() {
    let mut client = Encoder::new();
    let mut input = start();
    // Shrink to 0 (nothing indexed), then back to 4096.
    client.set_max_table_size(0);
    let mut first = vec![0x20];
    first.extend(encode(&mut client, &request("tmp%2Fx.sock")));
    input.extend(headers(1, 0, &first));
    client.set_max_table_size(HEADER_TABLE_SIZE);
    let mut second = loona_hpack::encoder::encode_integer(HEADER_TABLE_SIZE, 5);
    second[0] |= 0x20;
    second.extend(encode(&mut client, &request("tmp%2Fx.sock")));
    input.extend(headers(3, 0, &second));
    input.extend(headers(
        5,
        0,
        &encode(&mut client, &request("tmp%2Fx.sock")),
    ));
    let blocks = decode_blocks(&run(&input).await.unwrap());
    assert_eq!(blocks.len(), 3);
    for (_, f) in blocks {
        assert_eq!(f, request("localhost"));
    }

    // Beyond the 4096 that h2 allows: refused.
    let mut bad = start();
    let mut block = loona_hpack::encoder::encode_integer(8192, 5);
    block[0] |= 0x20;
    block.push(0x82);
    bad.extend(headers(1, 0, &block));
    assert!(run(&bad).await.is_err());
}

#[tokio::test]
async fn padding_is_dropped_and_priority_kept() {
    let mut client = Encoder::new();
    let req = request("tmp%2Fx.sock");
    let block = encode(&mut client, &req);
    let priority = [0x80, 0, 0, 0, 0x10];
    let mut payload = vec![7];
    payload.extend(priority);
    payload.extend(&block);
    payload.extend([0; 7]);
    let mut input = start();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS | FLAG_END_STREAM,
        1,
        &payload,
    ));
    let blocks = decode_blocks(&run(&input).await.unwrap());
    let (h, f) = &blocks[0];
    assert_eq!(h.flags, FLAG_PRIORITY | FLAG_END_HEADERS | FLAG_END_STREAM);
    assert_eq!(h.payload[..5], priority);
    assert_eq!(*f, with_authority(req, "localhost"));
}

#[tokio::test]
async fn continuation_frames_are_joined() {
    let mut client = Encoder::new();
    let req = request("tmp%2Fx.sock");
    let block = encode(&mut client, &req);
    let (a, rest) = block.split_at(10);
    let (b, c) = rest.split_at(20);
    let mut input = start();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED,
        1,
        &[[2].as_slice(), a, &[0, 0]].concat(),
    ));
    input.extend(frame(TYPE_CONTINUATION, 0, 1, b));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c));
    input.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\0"));
    let out = run(&input).await.unwrap();
    let frames = split(&out);
    assert_eq!(frames.len(), 3, "SETTINGS, one HEADERS, DATA");
    assert_eq!(frames[1].flags, FLAG_END_HEADERS);
    let blocks = decode_blocks(&out);
    assert_eq!(blocks[0].1, with_authority(req, "localhost"));
}

#[tokio::test]
async fn large_blocks_are_split_within_the_frame_size() {
    let mut client = Encoder::new();
    let mut req = request("tmp%2Fx.sock");
    req.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let block = encode(&mut client, &req);
    let priority = [0, 0, 0, 0, 15];

    // One frame size plus the priority fields: too big.
    let mut input = start();
    let payload = [&priority[..], &block[..MAX_FRAME_SIZE]].concat();
    input.extend(frame(TYPE_HEADERS, FLAG_PRIORITY, 1, &payload));
    assert!(run(&input).await.is_err());

    // Small client frames, rejoined and split again at the limit.
    let mut input = start();
    let mut chunks = block.chunks(5_000).peekable();
    let first = chunks.next().unwrap();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PRIORITY,
        1,
        &[&priority[..], first].concat(),
    ));
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            FLAG_END_HEADERS
        } else {
            0
        };
        input.extend(frame(TYPE_CONTINUATION, flags, 1, chunk));
    }
    let out = run(&input).await.unwrap();
    let frames = split(&out);
    let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.payload.len())).collect();
    assert_eq!(
        kinds[1..],
        [
            (TYPE_HEADERS, MAX_FRAME_SIZE),
            (TYPE_CONTINUATION, MAX_FRAME_SIZE),
            (TYPE_CONTINUATION, kinds[3].1)
        ]
    );
    let blocks = decode_blocks(&out);
    assert_eq!(blocks[0].1, with_authority(req, "localhost"));
    assert_eq!(blocks[0].0.payload[..5], priority);
}

#[tokio::test]
async fn other_frames_pass_byte_for_byte() {
    let mut input = start();
    input.extend(frame(
        0x0,
        0x8,
        1,
        &[[3].as_slice(), &[0xab; 1000], &[0; 3]].concat(),
    )); // DATA, padded
    input.extend(frame(0x0, 0x1, 3, &vec![0x5a; MAX_FRAME_SIZE])); // DATA
    input.extend(frame(0x2, 0, 3, &[0, 0, 0, 1, 16])); // PRIORITY
    input.extend(frame(0x3, 0, 3, &[0, 0, 0, 8])); // RST_STREAM
    input.extend(frame(SETTINGS, 0x1, 0, &[])); // SETTINGS ack
    input.extend(frame(0x6, 0, 0, b"12345678")); // PING
    input.extend(frame(0x8, 0, 0, &[0, 1, 0, 0])); // WINDOW_UPDATE
    input.extend(frame(0xfa, 0xff, 9, b"unknown")); // extension frame
    input.extend(frame(
        0x7,
        0,
        0,
        &[0, 0, 0, 0, 0, 0, 0, 0, b'b', b'y', b'e'],
    )); // GOAWAY
    assert_eq!(run(&input).await.unwrap(), input);
}

#[tokio::test]
async fn not_http2_passes_through() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(run(input).await.unwrap(), input);
    assert_eq!(run(b"").await.unwrap(), b"");
}

#[tokio::test]
async fn malformed_input_is_an_error() {
    let ok_block = encode(&mut Encoder::new(), &request("localhost"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CONTINUATION without HEADERS",
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &ok_block),
        ),
        (
            "frame between HEADERS and CONTINUATION",
            [
                frame(TYPE_HEADERS, 0, 1, &ok_block),
                frame(0x6, 0, 0, b"12345678"),
            ]
            .concat(),
        ),
        (
            "CONTINUATION on another stream",
            [
                frame(TYPE_HEADERS, 0, 1, &ok_block),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]),
            ]
            .concat(),
        ),
        (
            "padding longer than the frame",
            frame(
                TYPE_HEADERS,
                FLAG_PADDED | FLAG_END_HEADERS,
                1,
                &[200, 0x82],
            ),
        ),
        (
            "PADDED without pad length",
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[]),
        ),
        (
            "PRIORITY too short",
            frame(TYPE_HEADERS, FLAG_PRIORITY | FLAG_END_HEADERS, 1, &[0, 0]),
        ),
        ("index out of range", headers(1, 0, &[0xff, 0x7f])),
        ("truncated literal", headers(1, 0, &[0x40, 0x0a, b'a'])),
        (
            "bad huffman",
            headers(1, 0, &[0x40, 0x81, 0xff, 0x81, 0xff]),
        ),
        (
            "oversized frame",
            frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1,
                &vec![0x82; MAX_FRAME_SIZE + 1],
            ),
        ),
        (
            "PUSH_PROMISE",
            frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &[0, 0, 0, 2, 0x82]),
        ),
        (
            "ends inside a frame",
            frame(0x0, 0, 1, b"abc")[..8].to_vec(),
        ),
        ("ends inside a block", frame(TYPE_HEADERS, 0, 1, &ok_block)),
    ];
    for (what, tail) in cases {
        let mut input = start();
        input.extend(tail);
        assert!(run(&input).await.is_err(), "{what}: accepted");
    }
}

#[tokio::test]
async fn header_blocks_that_expand_are_bounded() {
    // One 4000-byte entry in the dynamic table, then a small block that
    // refers to it a hundred times.
    let mut client = Encoder::new();
    let mut input = start();
    let big = fields(&[("x-big", &"a".repeat(4000))]);
    input.extend(headers(1, 0, &encode(&mut client, &big)));
    input.extend(headers(3, 0, &[0xbe; 100]));
    let err = run(&input).await.unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");

    // Many CONTINUATION frames: bounded too.
    let mut input = start();
    input.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
    for _ in 0..5 {
        input.extend(frame(TYPE_CONTINUATION, 0, 1, &vec![0x82; MAX_FRAME_SIZE]));
    }
    let err = run(&input).await.unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
}

#[tokio::test]
async fn random_input_never_panics() {
    // xorshift: deterministic, no extra dependency.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut decoded = 0;
    for _ in 0..5000 {
        let mut input = start();
        if next() % 2 == 0 {
            // Give the decoder a dynamic table to index into.
            let mut req = request("tmp%2Fx.sock");
            req.push((b"x-a".to_vec(), b"b".repeat((next() % 300) as usize)));
            input.extend(headers(1, 0, &encode(&mut Encoder::new(), &req)));
        }
        for _ in 0..(next() % 4) {
            let len = (next() % 64) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let kind =
                [TYPE_HEADERS, TYPE_CONTINUATION, 0x0, 0x8, next() as u8][(next() % 5) as usize];
            let mut flags = next() as u8;
            if kind == TYPE_HEADERS && next() % 2 == 0 {
                flags = FLAG_END_HEADERS;
            }
            if next() % 4 == 0 {
                input.extend(&body); // raw garbage, not even framed
            } else {
                input.extend(frame(kind, flags, (next() % 4) as u32, &body));
            }
        }
        if let Ok(out) = run(&input).await {
            decoded += decode_blocks(&out).len();
        }
    }
    assert!(decoded > 1000, "only {decoded} blocks made it through");
}

/// Hands out one byte per read, with a Pending in between.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    ready: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.ready = !self.ready;
        if !self.ready {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.pos < self.data.len() {
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + 1]);
            self.pos += 1;
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn arbitrary_read_boundaries_give_identical_output() {
    let mut client = Encoder::new();
    let mut input = start();
    for i in 0..4u32 {
        let block = encode(&mut client, &request("tmp%2Fx.sock"));
        let (a, b) = block.split_at(block.len() / 2);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED,
            1 + 2 * i,
            &[[1].as_slice(), a, &[0]].concat(),
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1 + 2 * i, b));
        input.extend(frame(0x0, 0x1, 1 + 2 * i, &[0x11; 300]));
        input.extend(frame(0x6, 0, 0, b"pingpong"));
    }
    let whole = run(&input).await.unwrap();
    assert_eq!(decode_blocks(&whole).len(), 4);

    for chunk in [1, 2, 9, 10, 4096] {
        let mut fix = AuthorityFix::new(Trickle {
            data: input.clone(),
            pos: 0,
            ready: false,
        });
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = fix.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, whole, "read size {chunk}");
    }
}

#[tokio::test]
async fn connect_info_is_the_sockets() {
    let (a, _b) = tokio::net::UnixStream::pair().unwrap();
    let info = AuthorityFix::new(a).connect_info();
    let cred = info.peer_cred.unwrap();
    assert_eq!(cred.pid(), Some(std::process::id() as i32));
}

/// Against the real h2 server: the request that h2 resets on its own is
/// served through the wrapper, with authority "localhost".
async fn h2_authorities(wrap: bool) -> Vec<String> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let serve = tokio::spawn(async move {
        async fn accept<T: AsyncRead + AsyncWrite + Unpin>(io: T) -> Vec<String> {
            let mut conn = h2::server::handshake(io).await.unwrap();
            let mut got = Vec::new();
            while let Some(r) = conn.accept().await {
                let (req, mut respond) = r.unwrap();
                got.push(
                    req.uri()
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                );
                respond
                    .send_response(http::Response::new(()), true)
                    .unwrap();
            }
            got
        }
        if wrap {
            accept(AuthorityFix::new(server)).await
        } else {
            accept(server).await
        }
    });
    let mut encoder = Encoder::new();
    let mut input = start();
    input.extend(headers(
        1,
        FLAG_END_STREAM,
        &encode(&mut encoder, &request("tmp%2Fx%2Fhsmca.sock")),
    ));
    input.extend(headers(
        3,
        FLAG_END_STREAM,
        &encode(&mut encoder, &request("/var/run/x.sock")),
    ));
    input.extend(headers(
        5,
        FLAG_END_STREAM,
        &encode(&mut encoder, &request("example.com:443")),
    ));
    input.extend(headers(
        7,
        FLAG_END_STREAM,
        &encode(&mut encoder, &request("tmp%2Fx%2Fhsmca.sock")),
    ));
    client.write_all(&input).await.unwrap();
    // Let h2 answer, then hang up.
    let mut sink = vec![0; 1 << 16];
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if client.read(&mut sink).await.unwrap_or(0) == 0 {
                break;
            }
        }
    })
    .await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn h2_serves_what_it_would_reset() {
    assert_eq!(
        h2_authorities(false).await,
        ["example.com:443"],
        "h2 no longer rejects these authorities; is the wrapper still needed?"
    );
    assert_eq!(
        h2_authorities(true).await,
        ["localhost", "localhost", "example.com:443", "localhost"]
    );
}
