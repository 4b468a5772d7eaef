#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/: a few valid and a few
invalid inputs per target. Keys and CSRs are made by openssl. Run from the
repository root: python3 fuzz/make_corpus.py (the committed corpus came from
it; re-running adds fresh keys next to the committed ones)."""
import os
import struct
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def rewrap(text, width, eol):
    """PEM as Python's base64.encodebytes or Java's MIME encoder write it."""
    lines = text.strip().split("\n")
    body = "".join(l for l in lines if not l.startswith("-----"))
    out = lines[0] + eol
    for i in range(0, len(body), width):
        out += body[i:i + width] + eol
    return out + lines[-1] + eol


def openssl(*args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def key(tmp, kind):
    path = os.path.join(tmp, kind + ".key")
    algo = {
        "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "p521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        "ed25519": ["-algorithm", "ED25519"],
        "rsa2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "rsa1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    }[kind]
    openssl("genpkey", *algo, "-out", path)
    pub = openssl("pkey", "-in", path, "-pubout").decode()
    return path, pub


def csr(keypath, subj, san=None):
    args = ["req", "-new", "-key", keypath, "-subj", subj]
    if san:
        args += ["-addext", "subjectAltName=" + san]
    return openssl(*args).decode()


# protobuf wire format, enough for GenerateClientCertificateRequest
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def duration(secs):
    return field_bytes(4, varint(1 << 3 | 0) + varint(secs))


def tag(k, v):
    return field_bytes(11, field_bytes(1, k) + field_bytes(2, v))


def main():
    jwt_seeds()
    with tempfile.TemporaryDirectory() as tmp:
        keys = {k: key(tmp, k) for k in ["p256", "p384", "p521", "ed25519", "rsa2048", "rsa1024"]}
        for k, (_, pub) in keys.items():
            put("public_key", k + ".pem", pub)
        put("public_key", "private.pem", open(keys["p256"][0]).read())
        put("public_key", "truncated.pem", keys["p256"][1][:80])
        put("public_key", "empty.pem", "")
        put("public_key", "mime76-crlf.pem", rewrap(keys["rsa2048"][1], 76, "\r\n"))
        put("public_key", "two-blocks.pem", keys["rsa2048"][1] * 2)
        put("public_key", "header.pem", keys["rsa2048"][1].replace("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1))

        csrs = {
            "p256-cn-dns": csr(keys["p256"][0], "/CN=svc", "DNS:a.example,IP:10.0.0.1"),
            "p384-uri": csr(keys["p384"][0], "/CN=x/O=Org", "URI:spiffe://td/ns/a"),
            "ed25519": csr(keys["ed25519"][0], "/CN=ed"),
            "rsa2048-wild": csr(keys["rsa2048"][0], "/CN=w", "DNS:*.example.com"),
            "email-san": csr(keys["p256"][0], "/CN=e", "email:a@b.example"),
        }
        for name, text in csrs.items():
            put("csr", name + ".pem", text)
        bad = csrs["p256-cn-dns"].replace("A", "B", 1)
        put("csr", "bad-signature.pem", bad)
        put("csr", "mime76-blanks.pem", rewrap(csrs["p256-cn-dns"], 76, "  \n"))

        put("names", "cn-only", "demo")
        put("names", "all", "svc\nd:a.example\nd:*.example.com\nu:https://x.example/p\nu:spiffe://td/a\ni:10.0.0.1\ni:::1")
        put("names", "bad", "\nd:-bad-.example\nd:a..b\nu:not a uri\ni:999.1.1.1\nCN=x,O=y")
        put("names", "subject", "x\nCN=hsmca CA,O=Example\\, Inc.,C=DE")
        put("names", "idna-spiffe", "x\nd:xn--bcher-kva.example\nd:xn--a.example\nd:ab--cd.example\n"
            "u:spiffe://example.org/ns/a\nu:spiffe://example.org/x;y=z\nu:SPIFFE://Example.org/..\nxn--9ua")

        dur = struct.pack("<qi", 12 * 3600, 0)
        put("request_fields", "ok", dur + b"0b5e6b6e-5f63-4c9e-9b1a-3c1c4b0f2a11\na description\napp=web\nteam=a b\n")
        put("request_fields", "bad", struct.pack("<qi", -1, 2_000_000_000) + b"00000000-0000-0000-0000-000000000000\n\nhsmca:x=1\n=\nk=\x01")
        put("request_fields", "long", struct.pack("<qi", 2**62, 0) + b"not-a-uuid\n" + b"d" * 1100)

        put("filters", "state", "state=ACTIVE")
        put("filters", "tags", 'tag:app=web AND tag:"a b"="c d" state=REVOKED')
        put("filters", "labels", "label:app=web state=FINISHED")
        put("filters", "bad", 'state=BOGUS tag: "unterminated')
        put("filters", "token", "MTcwMDAwMDAwMDAwMDAwMHxhYmM")

        reqs = {
            "key": field_bytes(2, keys["p256"][1]) + field_bytes(6, "demo") + field_bytes(7, "a.example") + duration(3600 * 12),
            "csr": field_bytes(3, csrs["p256-cn-dns"]) + field_bytes(5, "server"),
            "full": field_bytes(1, "0b5e6b6e-5f63-4c9e-9b1a-3c1c4b0f2a11") + field_bytes(2, keys["rsa2048"][1])
            + field_bytes(5, "client") + field_bytes(6, "cn") + field_bytes(8, "spiffe://td/x")
            + field_bytes(9, "192.0.2.1") + field_bytes(10, "desc") + tag("app", "web") + duration(7200),
            "both": field_bytes(2, keys["p256"][1]) + field_bytes(3, csrs["ed25519"]),
            "wildcard-client": field_bytes(3, csrs["rsa2048-wild"]),
        }
        for name, data in reqs.items():
            put("issue_check", name, data)
    authority_seeds()


# --- HTTP/2 and HPACK, for the authority target -----------------------------
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first):
    """RFC 7541 §5.1 integer with `first` holding the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_literal(name, value, indexing=True):
    """A literal field with a new name (no Huffman), with or without
    incremental indexing."""
    name, value = name.encode(), value.encode()
    first = 0x40 if indexing else 0x00
    prefix = 6 if indexing else 4
    return hpack_int(0, prefix, first) + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


def grpc_request(authority):
    # :method POST, :scheme http, :path, :authority, then regular fields.
    return (hpack_int(3, 7, 0x80)  # static 3 = :method POST
            + hpack_int(6, 7, 0x80)  # static 6 = :scheme http
            + hpack_literal(":path", "/hsmca.v1.CertificateAuthority/GenerateClientCertificate")
            + hpack_literal(":authority", authority)
            + hpack_literal("content-type", "application/grpc")
            + hpack_literal("te", "trailers")
            + hpack_literal("user-agent", "grpc-python/1.76.0 grpc-c/51.0.0 (linux; chttp2)"))


def authority_seeds():
    settings = h2_frame(0x4, 0, 0, bytes.fromhex("000400010000"))
    data = h2_frame(0x0, 0x1, 1, b"\0\0\0\0\x05" + b"\x12\x03abc")
    # Mode byte: bits 0-1 mode (0 raw, 1 preface added, 2/3 framed blocks),
    # bits 2-4 read size, bits 5-7 output buffer size.
    for name, authority in [("grpcio-percent", "tmp%2Fhsmca.sock"), ("grpc-java-path", "/run/hsmca/hsmca.sock"), ("valid", "localhost")]:
        block = grpc_request(authority)
        put("authority", name, bytes([0x01]) + settings + h2_frame(0x1, 0x4, 1, block) + data)
    # The same request read a byte at a time, into a 9-byte buffer.
    put("authority", "grpcio-trickle", bytes([0x01 | (0 << 2) | (1 << 5)]) + settings
        + h2_frame(0x1, 0x4, 1, grpc_request("a%2Fb")) + data)
    # RFC 7541 C.3 (no Huffman) and C.4 (Huffman): three requests sharing
    # one dynamic table.
    c3 = ["828684410f7777772e6578616d706c652e636f6d", "828684be58086e6f2d6361636865",
          "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"]
    c4 = ["828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf",
          "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]
    for name, blocks in [("rfc7541-c3", c3), ("rfc7541-c4", c4)]:
        frames = b"".join(h2_frame(0x1, 0x5, 1 + 2 * i, bytes.fromhex(b)) for i, b in enumerate(blocks))
        put("authority", name, bytes([0x01 | (2 << 2)]) + settings + frames)
    # Dynamic table size updates: shrink to 0 (evicts all), grow back to
    # 4096, then fields that fill and evict it; and one above the limit.
    filler = b"".join(hpack_literal("x-filler-%d" % i, "v" * 200) for i in range(30))
    resize = hpack_int(0, 5, 0x20) + hpack_int(4096, 5, 0x20) + grpc_request("h%2Fs") + filler
    put("authority", "table-resize-evict", bytes([0x01]) + settings + h2_frame(0x1, 0x5, 1, resize)
        + h2_frame(0x1, 0x5, 3, hpack_int(62, 7, 0x80) + hpack_int(63, 7, 0x80)))
    put("authority", "table-too-large", bytes([0x01]) + settings
        + h2_frame(0x1, 0x5, 1, hpack_int(8192, 5, 0x20) + grpc_request("x")))
    # Framed-block mode: records of control, length (2 bytes), split, block.
    def record(control, block, split=0):
        return bytes([control]) + struct.pack(">H", len(block)) + bytes([split]) + block
    put("authority", "blocks-continuation-padded-priority", bytes([0x02 | (1 << 2)])
        + record(0x08 | 0x02 | 0x04, grpc_request("tmp%2Fs.sock"), split=17)
        + record(0x10 | 0x01, grpc_request("localhost"))
        + record(0x20 | 0x08, hpack_int(0, 5, 0x20) + grpc_request("/p"), split=1))
    put("authority", "blocks-huffman", bytes([0x03 | (3 << 2)]) + b"".join(record(0x01, bytes.fromhex(b)) for b in c4))
    # Not HTTP/2 at all, and a client that stops inside a frame.
    put("authority", "http1", bytes([0x00]) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    put("authority", "cut-off", bytes([0x01]) + settings + h2_frame(0x1, 0x4, 1, grpc_request("a%2Fb"))[:40])
    # A frame that must not come from a client, and CONTINUATION on another stream.
    put("authority", "push-promise", bytes([0x01]) + h2_frame(0x5, 0x4, 1, b"\0\0\0\x02\x82"))
    put("authority", "continuation-other-stream", bytes([0x01]) + h2_frame(0x1, 0x0, 1, grpc_request("x")[:5])
        + h2_frame(0x9, 0x4, 3, grpc_request("x")[5:]))


def jwt_seeds():
    """Tokens for jwt_validate: one signed by its P-256 key (seed 7), and
    the shapes an attacker tries. Needs the `cryptography` package."""
    import base64
    import hashlib
    import json

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    key = ec.derive_private_key(int.from_bytes(b"\x07" * 32, "big"), ec.SECP256R1())
    n = key.public_key().public_numbers()
    x, y = b64(n.x.to_bytes(32, "big")), b64(n.y.to_bytes(32, "big"))
    canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (x, y)
    kid = b64(hashlib.sha256(canonical.encode()).digest())
    claims = {"sub": "spiffe://hsmca.test/user/a", "aud": ["db"], "exp": 1800000000, "iat": 1700000000}

    def token(header, claims=claims):
        h = b64(json.dumps(header, separators=(",", ":")).encode())
        c = b64(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature(key.sign((h + "." + c).encode(), ec.ECDSA(hashes.SHA256())))
        return h + "." + c + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    put("jwt_validate", "valid-es256", "db\n" + token({"alg": "ES256", "kid": kid, "typ": "JWT"}))
    put("jwt_validate", "no-kid", "db\n" + token({"alg": "ES256"}))
    put("jwt_validate", "alg-none", "db\n" + b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims).encode()) + ".")
    put("jwt_validate", "garbage", "db\nnot.a.jwt")
    put("jwt_validate", "foreign-td", "db\n" + token({"alg": "ES256"}, dict(claims, sub="spiffe://other/x")))


if __name__ == "__main__":
    main()
