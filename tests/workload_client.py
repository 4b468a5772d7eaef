"""A SPIFFE workload for tests/workload.rs, built on py-spiffe (PyPI
`spiffe`), the library real Python workloads use; its generated stubs of
the standard's proto serve the calls that must show a raw gRPC code.

Usage: python workload_client.py SOCKET COMMAND [ARGS]

  fetch OUTDIR       fetch_x509_context, fetch_x509_bundles; writes
                     svid.pem (chain), svid.key (PKCS#8 PEM), bundle.pem and
                     crl.der (the first CRL of the raw response); prints JSON
  raw [--no-header]  one FetchX509SVID call: the code and message, or the IDs
  bundles-raw        one FetchX509Bundles call: the code and message
  jwt                FetchJWTSVID with the header: the code
  rotate N SECONDS   an X509Source; prints the distinct serials it saw
                     (at most N, within SECONDS)
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
            s = format(source.svid.leaf.serial_number, "x")
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
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()
