"""A SPIFFE workload for tests/workload.rs, built on py-spiffe (PyPI
`spiffe`), the library real Python workloads use; its generated stubs of
the standard's proto serve the calls that must show a raw gRPC code.

Usage: python workload_client.py SOCKET COMMAND [ARGS]

  fetch OUTDIR       fetch_x509_context, fetch_x509_bundles; writes
                     svid.pem (chain), svid.key (PKCS#8 PEM), bundle.pem and
                     crl.der (the first CRL of the raw response); prints JSON
  raw [--no-header]  one FetchX509SVID call: the code and message, or the IDs
  hints              one FetchX509SVID call: [[ID, hint], ...]
  bundles-raw        one FetchX509Bundles call: the code and message
  jwt                FetchJWTSVID with the header: the code
  wit                FetchWITSVID (not in this proto) by path: the code
  rotate N SECONDS   an X509Source; prints the distinct serials it saw
                     (at most N, within SECONDS)
  hold SECONDS       a FetchX509SVID stream: prints "first" after the first
                     message, then the code that ends the stream (or
                     "TIMEOUT")
  mtls SRV CLI [CRL] a TLS 1.3 handshake over loopback between the SVIDs in
                     directories SRV and CLI (svid.pem, svid.key,
                     bundle.pem), both sides requiring and verifying the
                     other's certificate against the bundle, the server also
                     against the CRL (PEM) when given; prints the result
"""

import json
import sys
import threading
import time

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

HEADER = [("workload.spiffe.io", "true")]


def stub(sock):
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel(sock))


def code_of(fn):
    try:
        r = fn()
        return {"code": "OK", "result": r}
    except grpc.RpcError as e:
        return {"code": e.code().name, "message": e.details()}


def main():
    sock = "unix://" + sys.argv[1]
    cmd = sys.argv[2]
    if cmd == "fetch":
        out = sys.argv[3]
        with WorkloadApiClient(socket_path=sock) as c:
            ctx = c.fetch_x509_context()
            svid = ctx.default_svid
            with open(f"{out}/svid.pem", "wb") as f:
                for cert in svid.cert_chain:
                    f.write(cert.public_bytes(serialization.Encoding.PEM))
            with open(f"{out}/svid.key", "wb") as f:
                f.write(
                    svid.private_key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
            bundles = c.fetch_x509_bundles()
            with open(f"{out}/bundle.pem", "wb") as f:
                for b in bundles._bundles.values():
                    for cert in b.x509_authorities:
                        f.write(cert.public_bytes(serialization.Encoding.PEM))
        first = next(stub(sock).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER))
        if first.crl:
            with open(f"{out}/crl.der", "wb") as f:
                f.write(first.crl[0])
        print(
            json.dumps(
                {
                    "spiffe_id": str(svid.spiffe_id),
                    "ids": [str(s.spiffe_id) for s in ctx.x509_svids],
                    "serial": format(svid.leaf.serial_number, "x"),
                    "trust_domains": sorted(str(td) for td in bundles._bundles.keys()),
                    "crls": len(first.crl),
                }
            )
        )
    elif cmd == "raw":
        md = [] if "--no-header" in sys.argv else HEADER

        def call():
            r = next(stub(sock).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=md, timeout=20))
            return [s.spiffe_id for s in r.svids]

        print(json.dumps(code_of(call)))
    elif cmd == "hints":

        def call():
            r = next(stub(sock).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=20))
            return [[s.spiffe_id, s.hint] for s in r.svids]

        print(json.dumps(code_of(call)))
    elif cmd == "bundles-raw":
        md = [] if "--no-header" in sys.argv else HEADER

        def call():
            r = next(stub(sock).FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=md, timeout=20))
            return sorted(r.bundles.keys())

        print(json.dumps(code_of(call)))
    elif cmd == "jwt":
        print(
            json.dumps(
                code_of(
                    lambda: str(
                        stub(sock).FetchJWTSVID(
                            workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER, timeout=20
                        )
                    )
                )
            )
        )
    elif cmd == "rotate":
        want, seconds = int(sys.argv[3]), float(sys.argv[4])
        seen = []
        lock = threading.Lock()
        source = X509Source(socket_path=sock, timeout_in_seconds=20)

        def note():
            s = format(source.get_x509_context().default_svid.leaf.serial_number, "x")
            with lock:
                if s not in seen:
                    seen.append(s)

        note()
        source.subscribe_for_updates(note)
        deadline = time.time() + seconds
        while time.time() < deadline:
            with lock:
                if len(seen) >= want:
                    break
            time.sleep(0.1)
        source.close()
        print(json.dumps({"serials": seen}))
    elif cmd == "wit":
        # Methods the standard added after this proto: called by path.
        ch = grpc.insecure_channel(sock)
        call = ch.unary_unary("/SpiffeWorkloadAPI/FetchWITSVID")
        print(json.dumps(code_of(lambda: str(call(b"", metadata=HEADER, timeout=20)))))
    elif cmd == "hold":
        seconds = float(sys.argv[3])
        stream = stub(sock).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=seconds)
        try:
            for i, _ in enumerate(stream):
                if i == 0:
                    print("first", flush=True)
            print(json.dumps({"code": "OK"}))
        except grpc.RpcError as e:
            code = "TIMEOUT" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else e.code().name
            print(json.dumps({"code": code, "message": e.details()}), flush=True)
    elif cmd == "mtls":
        print(json.dumps(mtls(sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


def mtls(srv, cli, crl):
    import socket
    import ssl

    def ctx(side, d):
        c = ssl.SSLContext(side)
        c.minimum_version = ssl.TLSVersion.TLSv1_3
        c.load_cert_chain(f"{d}/svid.pem", f"{d}/svid.key")
        c.load_verify_locations(cafile=f"{d}/bundle.pem")
        c.verify_mode = ssl.CERT_REQUIRED
        c.check_hostname = False
        return c

    sctx = ctx(ssl.PROTOCOL_TLS_SERVER, srv)
    if crl:
        sctx.load_verify_locations(cafile=crl)
        sctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    cctx = ctx(ssl.PROTOCOL_TLS_CLIENT, cli)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    result = {}

    def serve():
        conn, _ = lsock.accept()
        try:
            with sctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                result["server_saw"] = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            result["server_error"] = str(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(lsock.getsockname()) as raw:
            with cctx.wrap_socket(raw) as tls:
                peer = tls.getpeercert()
                result["client_saw"] = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
                result["read"] = tls.recv(2).decode()
    except (ssl.SSLError, OSError) as e:
        result["client_error"] = str(e)
    t.join(10)
    result["ok"] = result.get("read") == "ok" and "server_error" not in result
    return result


if __name__ == "__main__":
    main()
