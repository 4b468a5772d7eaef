"""JWT-SVIDs from hsmca's Workload API, through real clients (tests/workload_jwt.rs).

usage: workload_jwt.py SOCKET TRUST_DOMAIN fetch           -> JSON: tokens, bundle, checks
       workload_jwt.py SOCKET TRUST_DOMAIN validate TOKEN  -> JSON: py-spiffe's validation
       workload_jwt.py SOCKET TRUST_DOMAIN bundles N       -> JSON: the first N bundle messages
       workload_jwt.py SOCKET TRUST_DOMAIN refusals TOKEN  -> JSON: gRPC codes of bad calls
       workload_jwt.py SOCKET TRUST_DOMAIN once            -> JSON: one FetchJWTSVID, no retries

py-spiffe (PyPI `spiffe`) is the client; the independent check of every
token is `cryptography` verifying the JWS signature with the key from the
JWKS, and PyJWT (through py-spiffe's JwtSvid.parse_and_validate).
"""
import base64
import json
import sys

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from spiffe import JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64int(s):
    return int.from_bytes(b64d(s), "big")


def verify_independently(token, jwks):
    """The JWS signature, checked with cryptography against the JWKS key."""
    h, c, s = token.split(".")
    header = json.loads(b64d(h))
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert key["use"] == "jwt-svid", key
    sig = b64d(s)
    msg = (h + "." + c).encode()
    if key["kty"] == "EC":
        curve, hash_alg, size = {
            "P-256": (ec.SECP256R1(), hashes.SHA256(), 32),
            "P-384": (ec.SECP384R1(), hashes.SHA384(), 48),
        }[key["crv"]]
        pub = ec.EllipticCurvePublicNumbers(b64int(key["x"]), b64int(key["y"]), curve).public_key()
        assert len(sig) == 2 * size, len(sig)
        der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
        pub.verify(der, msg, ec.ECDSA(hash_alg))
    else:
        pub = rsa.RSAPublicNumbers(b64int(key["e"]), b64int(key["n"])).public_key()
        pub.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
    return header


def client(socket):
    return WorkloadApiClient(socket_path="unix://" + socket)


def bundle_json(c, td):
    bundles = c.fetch_jwt_bundles()
    b = bundles.get_bundle_for_trust_domain(TrustDomain(td))
    assert b is not None, "no JWT bundle for the trust domain"
    return b


def raw_jwks(socket):
    """The raw JWKS bytes of the first FetchJWTBundles message."""
    with grpc.insecure_channel("unix://" + socket) as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
        stream = stub.FetchJWTBundles(
            workload_pb2.JWTBundlesRequest(), metadata=[("workload.spiffe.io", "true")], timeout=10
        )
        msg = next(stream)
        stream.cancel()
        return dict(msg.bundles)


def fetch(socket, td):
    out = {}
    with client(socket) as c:
        svid = c.fetch_jwt_svid(audience={"db"})
        token = svid.token
        out["spiffe_id"] = str(svid.spiffe_id)
        out["token"] = token
        # All of the caller's JWT-SVIDs, and one named by its SPIFFE ID.
        out["all"] = [s.token for s in c.fetch_jwt_svids(audience={"db", "cache"})]
        named = c.fetch_jwt_svid(audience={"db"}, subject=SpiffeId(out["spiffe_id"]))
        out["named_spiffe_id"] = str(named.spiffe_id)
        # py-spiffe's validation through the daemon.
        v = c.validate_jwt_svid(token, "db")
        out["validated_spiffe_id"] = str(v.spiffe_id)
        # The bundle, and PyJWT's validation of the token with it.
        b = bundle_json(c, td)
        checked = JwtSvid.parse_and_validate(token, b, {"db"})
        out["pyjwt_spiffe_id"] = str(checked.spiffe_id)
        out["bundle_kids"] = sorted(b.jwt_authorities.keys())
    bundles = raw_jwks(socket)
    out["bundle_keys"] = sorted(bundles.keys())
    jwks = json.loads(bundles["spiffe://" + td])
    out["jwks"] = jwks
    out["headers"] = [verify_independently(t, jwks) for t in [out["token"]] + out["all"]]
    out["claims"] = json.loads(b64d(token.split(".")[1]))
    return out


def validate(socket, token):
    with client(socket) as c:
        v = c.validate_jwt_svid(token, "db")
        return {"spiffe_id": str(v.spiffe_id)}


def bundles(socket, td, n):
    """The first n FetchJWTBundles messages (key ids of each)."""
    seen = []
    with grpc.insecure_channel("unix://" + socket) as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
        stream = stub.FetchJWTBundles(
            workload_pb2.JWTBundlesRequest(), metadata=[("workload.spiffe.io", "true")], timeout=60
        )
        for msg in stream:
            jwks = json.loads(msg.bundles["spiffe://" + td])
            seen.append([k["kid"] for k in jwks["keys"]])
            if len(seen) == n:
                stream.cancel()
                break
    return {"messages": seen}


def refusals(socket, token):
    out = {}
    hdr = [("workload.spiffe.io", "true")]

    def code(f):
        try:
            f()
            return "OK"
        except grpc.RpcError as e:
            return e.code().name + ": " + (e.details() or "")

    with grpc.insecure_channel("unix://" + socket) as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
        req = workload_pb2.JWTSVIDRequest(audience=["db"])
        out["no_header"] = code(lambda: stub.FetchJWTSVID(req, timeout=10))
        out["no_audience"] = code(
            lambda: stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(), metadata=hdr, timeout=10)
        )
        out["foreign_spiffe_id"] = code(
            lambda: stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["db"], spiffe_id="spiffe://hsmca.test/nobody"),
                metadata=hdr,
                timeout=10,
            )
        )
        out["bad_spiffe_id"] = code(
            lambda: stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["db"], spiffe_id="https://x"),
                metadata=hdr,
                timeout=10,
            )
        )

        def val(svid, aud="db", metadata=hdr):
            return code(
                lambda: stub.ValidateJWTSVID(
                    workload_pb2.ValidateJWTSVIDRequest(audience=aud, svid=svid),
                    metadata=metadata,
                    timeout=10,
                )
            )

        out["validate_no_header"] = val(token, metadata=[])
        out["validate_wrong_audience"] = val(token, aud="other")
        out["validate_garbage"] = val("not.a.jwt")
        h, c, s = token.split(".")
        none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
        out["validate_alg_none"] = val(none_header + "." + c + ".")
        hs = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
        out["validate_hs256"] = val(hs + "." + c + "." + s)
        flipped = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
        out["validate_bad_signature"] = val(h + "." + c + "." + flipped)
        out["validate_no_audience"] = val(token, aud="")
        # Still serving after all of that.
        out["after"] = code(lambda: stub.FetchJWTSVID(req, metadata=hdr, timeout=10))
    return out


def once(socket):
    """One FetchJWTSVID without retries: its gRPC code, and the token."""
    with grpc.insecure_channel("unix://" + socket) as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
        try:
            r = stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["db"]),
                metadata=[("workload.spiffe.io", "true")],
                timeout=10,
            )
            return {"code": "OK", "token": r.svids[0].svid}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details()}


def main():
    socket, td, cmd = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "fetch":
        r = fetch(socket, td)
    elif cmd == "validate":
        r = validate(socket, sys.argv[4])
    elif cmd == "bundles":
        r = bundles(socket, td, int(sys.argv[4]))
    elif cmd == "once":
        r = once(socket)
    elif cmd == "refusals":
        r = refusals(socket, sys.argv[4])
    else:
        raise SystemExit("unknown command " + cmd)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
