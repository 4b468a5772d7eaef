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
    with tempfile.TemporaryDirectory() as tmp:
        keys = {k: key(tmp, k) for k in ["p256", "p384", "p521", "ed25519", "rsa2048", "rsa1024"]}
        for k, (_, pub) in keys.items():
            put("public_key", k + ".pem", pub)
        put("public_key", "private.pem", open(keys["p256"][0]).read())
        put("public_key", "truncated.pem", keys["p256"][1][:80])
        put("public_key", "empty.pem", "")

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

        put("names", "cn-only", "demo")
        put("names", "all", "svc\nd:a.example\nd:*.example.com\nu:https://x.example/p\nu:spiffe://td/a\ni:10.0.0.1\ni:::1")
        put("names", "bad", "\nd:-bad-.example\nd:a..b\nu:not a uri\ni:999.1.1.1\nCN=x,O=y")
        put("names", "subject", "x\nCN=hsmca CA,O=Example\\, Inc.,C=DE")

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


if __name__ == "__main__":
    main()
