"""Envoy's side of SDS for tests/sds.rs: Envoy's own generated protos (PyPI
xds-protos) over grpcio, on the daemon's workload socket.

usage: sds_client.py SCENARIO SOCKET OUT_DIR

SCENARIO is one of:
  protocol  request -> response -> ACK (no reply), NACK (no resend), stale
            nonce (ignored), a change of names (answered), empty names (all),
            FetchSecrets, and the refusals (unknown name, wrong type URL,
            DeltaSecrets, a malformed message), each followed by a request
            that still gets served;
  rotation  two streams of one caller, each pushed the next version when the
            SVID rotates, with the same new certificate;
  denied    a caller with no entry: StreamSecrets and FetchSecrets refused;
  hold      three streams answered, then "holding 3" on stdout, held open
            until a line arrives on stdin;
  push      one stream answered and acknowledged, its version printed on
            stdout; after a line on stdin, the next version must be pushed;
  dropped   like push, but after the line on stdin the stream must end
            with PERMISSION_DENIED (the caller's entry was removed).

The secrets served are written to OUT_DIR as PEM files (default.chain.pem,
default.key.pem, rootca.pem, ...) for openssl to check; a JSON summary of
what was seen is printed on stdout. Any unexpected behaviour exits 1 with a
message on stderr.
"""
import json
import os
import queue
import sys
import threading
import time

try:
    import grpc
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.secret.v3 import sds_pb2_grpc
    from google.rpc import status_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
except ImportError as e:
    print(f"FAIL: missing Python package ({e}); run scripts/test.sh", file=sys.stderr)
    sys.exit(1)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TRUST_DOMAIN_ID = "spiffe://hsmca.test"
TIMEOUT = 60
# How long "no reply" is watched for. A reply the daemon owes comes in
# milliseconds; silence for this long is taken as the daemon's decision.
SILENCE = 2.0


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


class Stream:
    """One StreamSecrets call: requests go in through a queue, responses
    come out through another (an RpcError ends it)."""

    def __init__(self, stub, name):
        self.name = name
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        self.call = stub.StreamSecrets(self._requests(), timeout=600)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _requests(self):
        while True:
            r = self.requests.get()
            if r is None:
                return
            yield r

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
            self.responses.put(EOFError("stream ended without a status"))
        except grpc.RpcError as e:
            self.responses.put(e)

    def send(self, names, version="", nonce="", error=None, type_url=SECRET_TYPE):
        req = discovery_pb2.DiscoveryRequest(
            version_info=version,
            response_nonce=nonce,
            resource_names=names,
            type_url=type_url,
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.requests.put(req)

    def recv(self, what, timeout=TIMEOUT):
        try:
            r = self.responses.get(timeout=timeout)
        except queue.Empty:
            fail(f"{self.name}: no response within {timeout}s ({what})")
        if isinstance(r, Exception):
            fail(f"{self.name}: stream ended instead of answering ({what}): {describe(r)}")
        return r

    def silent(self, what, seconds=SILENCE):
        """Nothing arrives for `seconds`."""
        try:
            r = self.responses.get(timeout=seconds)
        except queue.Empty:
            return
        if isinstance(r, Exception):
            fail(f"{self.name}: stream ended ({what}): {describe(r)}")
        fail(f"{self.name}: got a response where none was due ({what}): "
             f"version {r.version_info!r} nonce {r.nonce!r}")

    def error(self, what, timeout=TIMEOUT):
        """The stream ends with a status; returns the RpcError."""
        try:
            r = self.responses.get(timeout=timeout)
        except queue.Empty:
            fail(f"{self.name}: the stream was not ended ({what})")
        if not isinstance(r, grpc.RpcError):
            fail(f"{self.name}: expected an error status ({what}), got {r!r}")
        return r

    def close(self):
        self.requests.put(None)
        self.call.cancel()


def describe(e):
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"
    return repr(e)


def secrets(resp):
    """name -> Secret of a response, checking the wire shape on the way."""
    check(resp.type_url == SECRET_TYPE, f"response type_url {resp.type_url!r}")
    check(resp.version_info != "", "response without version_info")
    check(resp.nonce != "", "response without nonce")
    out = {}
    for any_ in resp.resources:
        check(any_.type_url == SECRET_TYPE, f"resource type_url {any_.type_url!r}")
        s = secret_pb2.Secret()
        any_.Unpack(s)
        check(s.name not in out, f"secret {s.name!r} twice in one response")
        out[s.name] = s
    return out


def inline(ds, what):
    kind = ds.WhichOneof("specifier")
    check(kind in ("inline_bytes", "inline_string"), f"{what}: not inline ({kind})")
    return ds.inline_bytes.decode() if kind == "inline_bytes" else ds.inline_string


def tls_certificate(s):
    check(s.WhichOneof("type") == "tls_certificate", f"{s.name!r} is not a tls_certificate")
    chain = inline(s.tls_certificate.certificate_chain, f"{s.name} chain")
    key = inline(s.tls_certificate.private_key, f"{s.name} key")
    check(chain.startswith("-----BEGIN CERTIFICATE-----"), f"{s.name}: chain is not PEM")
    check(key.startswith("-----BEGIN PRIVATE KEY-----"), f"{s.name}: key is not PKCS#8 PEM")
    return chain, key


def trusted_ca(s):
    check(s.WhichOneof("type") == "validation_context", f"{s.name!r} is not a validation_context")
    ca = inline(s.validation_context.trusted_ca, f"{s.name} trusted_ca")
    check(ca.startswith("-----BEGIN CERTIFICATE-----"), f"{s.name}: trusted_ca is not PEM")
    return ca


def file_name(secret_name):
    return secret_name.replace("spiffe://", "").replace("/", "_")


def save(out_dir, s):
    """Writes a secret as PEM files; returns their names."""
    base = os.path.join(out_dir, file_name(s.name))
    if s.WhichOneof("type") == "tls_certificate":
        chain, key = tls_certificate(s)
        open(base + ".chain.pem", "w").write(chain)
        open(base + ".key.pem", "w").write(key)
    else:
        open(base + ".ca.pem", "w").write(trusted_ca(s))


def fetch(stub, names, type_url=SECRET_TYPE):
    req = discovery_pb2.DiscoveryRequest(resource_names=names, type_url=type_url)
    return stub.FetchSecrets(req, timeout=TIMEOUT)


def expect_code(what, code, fn, contains=None):
    try:
        fn()
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: want {code.name}, got {describe(e)}")
        if contains is not None:
            check(contains in (e.details() or ""), f"{what}: {contains!r} not in {e.details()!r}")
        return e.details()
    fail(f"{what}: succeeded, want {code.name}")


def still_serves(stub, what, seen):
    got = secrets(fetch(stub, ["default"]))
    check(list(got) == ["default"], f"after {what}: FetchSecrets gave {list(got)}")
    seen.setdefault("served_after", []).append(what)


def protocol(stub, out_dir):
    seen = {}
    health = health_pb2_grpc.HealthStub(RAW_CHANNEL).Check(
        health_pb2.HealthCheckRequest(service="envoy.service.secret.v3.SecretDiscoveryService"),
        timeout=TIMEOUT)
    check(health.status == health_pb2.HealthCheckResponse.SERVING, f"health: {health}")
    # request -> response
    s = Stream(stub, "stream 1")
    s.send(["default", "ROOTCA"])
    r1 = s.recv("first request")
    got = secrets(r1)
    check(sorted(got) == ["ROOTCA", "default"], f"first response names {sorted(got)}")
    for sec in got.values():
        save(out_dir, sec)
    seen["first"] = {"version": r1.version_info, "nonce": r1.nonce, "names": sorted(got)}

    # ACK: no reply
    s.send(["default", "ROOTCA"], version=r1.version_info, nonce=r1.nonce)
    s.silent("ACK of the first response")
    seen["ack_silent"] = True

    # NACK: logged, no reply, no resend loop (watched for twice as long)
    s.send(["default", "ROOTCA"], version="", nonce=r1.nonce, error="rejected by the test")
    s.silent("NACK of the first response", seconds=2 * SILENCE)
    seen["nack_silent"] = True

    # A stale nonce, even one asking for other names, is ignored
    s.send(["ROOTCA"], version=r1.version_info, nonce="not-a-nonce-sent-here")
    s.silent("request with a stale nonce")
    s.send(["ROOTCA"], version=r1.version_info, nonce="")
    s.silent("request with an empty nonce after a response")
    seen["stale_ignored"] = True

    # A change of names with the right nonce is answered
    s.send(["ROOTCA"], version=r1.version_info, nonce=r1.nonce)
    r2 = s.recv("change of names")
    got = secrets(r2)
    check(list(got) == ["ROOTCA"], f"after the change of names: {list(got)}")
    check(r2.nonce != r1.nonce, "a new response reused the nonce")
    check(r2.version_info == r1.version_info, "the version moved without a rotation")
    s.send(["ROOTCA"], version=r2.version_info, nonce=r2.nonce)
    s.silent("ACK of the second response")
    seen["names_change"] = {"version": r2.version_info, "nonce": r2.nonce}
    s.close()

    # Empty names: all of the caller's secrets, each under its full name
    s = Stream(stub, "stream 2")
    s.send([])
    r = s.recv("empty resource_names")
    got = secrets(r)
    for sec in got.values():
        save(out_dir, sec)
    kinds = {n: sec.WhichOneof("type") for n, sec in got.items()}
    seen["all"] = kinds
    check(kinds.get(TRUST_DOMAIN_ID) == "validation_context", f"all: {kinds}")
    ids = [n for n, k in kinds.items() if k == "tls_certificate"]
    check(len(ids) >= 1 and all(n.startswith(TRUST_DOMAIN_ID + "/") for n in ids), f"all: {kinds}")
    s.send([], version=r.version_info, nonce=r.nonce)
    s.silent("ACK of all")
    # The SPIFFE ID and the trust domain's ID are names too
    s.send([ids[0], TRUST_DOMAIN_ID], version=r.version_info, nonce=r.nonce)
    got = secrets(s.recv("names by SPIFFE ID"))
    check(sorted(got) == sorted([ids[0], TRUST_DOMAIN_ID]), f"by SPIFFE ID: {sorted(got)}")
    s.close()

    # FetchSecrets
    r = fetch(stub, ["default", "ROOTCA"])
    got = secrets(r)
    check(sorted(got) == ["ROOTCA", "default"], f"FetchSecrets names {sorted(got)}")
    check(r.version_info == r1.version_info, "FetchSecrets and StreamSecrets disagree on the version")
    for sec in got.values():
        base = file_name(sec.name)
        if sec.name == "default":
            check(tls_certificate(sec) == (open(os.path.join(out_dir, base + ".chain.pem")).read(),
                                           open(os.path.join(out_dir, base + ".key.pem")).read()),
                  "FetchSecrets served another SVID than StreamSecrets")
    got = secrets(fetch(stub, []))
    check(sorted(got) == sorted(seen["all"]), f"FetchSecrets all: {sorted(got)}")
    seen["fetch"] = {"version": r.version_info, "nonce": r.nonce}

    # Refusals, each followed by proof the daemon still serves
    other = TRUST_DOMAIN_ID + "/not/mine"
    detail = expect_code("StreamSecrets unknown name", grpc.StatusCode.INVALID_ARGUMENT,
                         lambda: unknown_on_stream(stub, ["default", other]), contains=other)
    seen["unknown_stream"] = detail
    still_serves(stub, "unknown name on a stream", seen)
    seen["unknown_fetch"] = expect_code(
        "FetchSecrets unknown name", grpc.StatusCode.INVALID_ARGUMENT,
        lambda: fetch(stub, ["ROOTCA", "rootca"]), contains='"rootca"')
    still_serves(stub, "unknown name on FetchSecrets", seen)
    # An unknown name after a good response ends that stream
    s = Stream(stub, "stream 3")
    s.send(["default"])
    r = s.recv("before an unknown name")
    s.send(["default", "spiffe://other.test"], version=r.version_info, nonce=r.nonce)
    e = s.error("unknown name mid-stream")
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "spiffe://other.test" in e.details(),
          f"unknown name mid-stream: {describe(e)}")
    still_serves(stub, "unknown name mid-stream", seen)
    cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    seen["type_url"] = expect_code("FetchSecrets wrong type_url", grpc.StatusCode.INVALID_ARGUMENT,
                                   lambda: fetch(stub, ["default"], type_url=cluster), contains=cluster)
    expect_code("StreamSecrets wrong type_url", grpc.StatusCode.INVALID_ARGUMENT,
                lambda: unknown_on_stream(stub, ["default"], type_url=cluster), contains=cluster)
    still_serves(stub, "wrong type_url", seen)
    seen["delta"] = expect_code("DeltaSecrets", grpc.StatusCode.UNIMPLEMENTED,
                                lambda: list(stub.DeltaSecrets(iter([discovery_pb2.DeltaDiscoveryRequest(
                                    type_url=SECRET_TYPE)]), timeout=TIMEOUT)))
    still_serves(stub, "DeltaSecrets", seen)
    seen["malformed"] = expect_code("FetchSecrets malformed message", grpc.StatusCode.INTERNAL,
                                    lambda: raw_fetch(stub, b"\x0a\xff\xff\xff\xff\x0f"))
    still_serves(stub, "malformed message", seen)
    long_name = "n" * 5000
    seen["long_name"] = expect_code("FetchSecrets 5000-character name", grpc.StatusCode.INVALID_ARGUMENT,
                                    lambda: fetch(stub, [long_name]), contains="n" * 100)
    check(len(seen["long_name"]) < 2000, "the error repeats a long name in full")
    still_serves(stub, "a 5000-character name", seen)
    many = [f"{TRUST_DOMAIN_ID}/n/{i:05}" for i in range(10000)]
    seen["many_names"] = expect_code("FetchSecrets 10,000 unknown names", grpc.StatusCode.INVALID_ARGUMENT,
                                     lambda: fetch(stub, many), contains="and 9995 more")
    check(len(seen["many_names"]) < 2000, "the error lists every refused name")
    still_serves(stub, "10,000 unknown names", seen)
    seen["oversize"] = expect_code("FetchSecrets over 1 MiB", grpc.StatusCode.OUT_OF_RANGE,
                                   lambda: fetch(stub, ["x" * 4096] * 300))
    still_serves(stub, "a request over 1 MiB", seen)
    return seen


def unknown_on_stream(stub, names, type_url=SECRET_TYPE):
    s = Stream(stub, "refused stream")
    s.send(names, type_url=type_url)
    e = s.error("refused request")
    s.close()
    raise e


RAW_CHANNEL = None


def raw_fetch(stub, payload):
    call = RAW_CHANNEL.unary_unary(
        "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return call(payload, timeout=TIMEOUT)


def rotation(stub, out_dir):
    streams = [Stream(stub, f"stream {i}") for i in (1, 2)]
    first = []
    for s in streams:
        s.send(["default"])
        r = s.recv("first request")
        s.send(["default"], version=r.version_info, nonce=r.nonce)
        first.append(r)
    check(first[0].version_info == first[1].version_info, "two streams of one caller, two versions")
    chain1, _ = tls_certificate(secrets(first[0])["default"])
    pushed = []
    for s, r in zip(streams, first):
        p = s.recv("rotation push", timeout=TIMEOUT)
        check(p.version_info != r.version_info, "a push without a new version")
        check(p.nonce != r.nonce, "a push reused the nonce")
        s.send(["default"], version=p.version_info, nonce=p.nonce)
        pushed.append(p)
    chains = [tls_certificate(secrets(p)["default"])[0] for p in pushed]
    check(chains[0] == chains[1], "the two streams got different SVIDs after one rotation")
    check(chains[0] != chain1, "the push carried the old SVID")
    check(pushed[0].version_info == pushed[1].version_info, "the streams disagree on the new version")
    save(out_dir, secrets(pushed[0])["default"])
    open(os.path.join(out_dir, "before.chain.pem"), "w").write(chain1)
    for s in streams:
        s.close()
    return {
        "versions": [first[0].version_info, pushed[0].version_info],
        "nonces": [r.nonce for r in first + pushed],
    }


def denied(stub, out_dir):
    seen = {}
    seen["stream"] = expect_code("StreamSecrets without an entry", grpc.StatusCode.PERMISSION_DENIED,
                                 lambda: unknown_on_stream(stub, ["default"]))
    seen["fetch"] = expect_code("FetchSecrets without an entry", grpc.StatusCode.PERMISSION_DENIED,
                                lambda: fetch(stub, []))
    return seen


def hold(stub, out_dir):
    streams = [Stream(stub, f"stream {i}") for i in range(3)]
    for s in streams:
        s.send(["default"])
        s.recv("first request")
    print(f"holding {len(streams)}", flush=True)
    sys.stdin.readline()
    for s in streams:
        s.close()
    return {"held": len(streams)}


def push(stub, out_dir):
    s = Stream(stub, "stream")
    s.send(["default"])
    r = s.recv("first request")
    s.send(["default"], version=r.version_info, nonce=r.nonce)
    chain, _ = tls_certificate(secrets(r)["default"])
    open(os.path.join(out_dir, "before.chain.pem"), "w").write(chain)
    print(r.version_info, flush=True)
    sys.stdin.readline()
    # A revocation changes the CRL, then the SVID: each change is a version
    # of its own, and each is pushed.
    versions = [r.version_info]
    deadline = time.monotonic() + TIMEOUT
    while True:
        p = s.recv("push after the change", timeout=max(0.1, deadline - time.monotonic()))
        check(p.version_info not in versions, f"a push without a new version: {p.version_info}")
        versions.append(p.version_info)
        s.send(["default"], version=p.version_info, nonce=p.nonce)
        if tls_certificate(secrets(p)["default"])[0] != chain:
            break
    save(out_dir, secrets(p)["default"])
    s.close()
    return {"versions": versions}


def dropped(stub, out_dir):
    s = Stream(stub, "stream")
    s.send(["default"])
    r = s.recv("first request")
    s.send(["default"], version=r.version_info, nonce=r.nonce)
    print(r.version_info, flush=True)
    sys.stdin.readline()
    e = s.error("entry removed")
    check(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"entry removed: {describe(e)}")
    denied_fetch = expect_code("FetchSecrets after the entry was removed",
                               grpc.StatusCode.PERMISSION_DENIED, lambda: fetch(stub, []))
    return {"stream": e.details(), "fetch": denied_fetch}


def main():
    global RAW_CHANNEL
    if len(sys.argv) != 4:
        fail(__doc__)
    scenario, socket, out_dir = sys.argv[1:]
    # grpcio's defaults: the daemon accepts the socket path as :authority.
    channel = grpc.insecure_channel("unix://" + os.path.abspath(socket))
    RAW_CHANNEL = channel
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    run = {"protocol": protocol, "rotation": rotation, "denied": denied, "hold": hold,
           "push": push, "dropped": dropped}.get(scenario)
    if run is None:
        fail(f"unknown scenario {scenario!r}")
    seen = run(stub, out_dir)
    print(json.dumps(seen, indent=1, sort_keys=True))
    # grpcio's threads would hold the process; everything is checked.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
