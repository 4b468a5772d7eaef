"""Runs pkilint's own command-line entry points over many files in one
process (tests/conformance.rs): importing pkilint takes about a second,
linting a certificate a few milliseconds.

Usage: python pkilint_batch.py cert=PATH crl=PATH ...

  cert=PATH   lint_pkix_cert lint -s WARNING -f JSON PATH
  crl=PATH    lint_crl lint -t CRL -p PKIX -s WARNING -f JSON PATH

Prints one JSON object: {PATH: {"exit": N, "findings": [[severity, code,
node_path, message], ...]}, ...} with every finding of severity WARNING or worse.
"""

import contextlib
import io
import json
import sys

from pkilint.bin import lint_crl, lint_pkix_cert


def lint(kind, path):
    if kind == "cert":
        main, args = lint_pkix_cert.main, ["lint"]
    elif kind == "crl":
        main, args = lint_crl.main, ["lint", "-t", "CRL", "-p", "PKIX"]
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args + ["-s", "WARNING", "-f", "JSON", path])
    report = json.loads(out.getvalue() or '{"results": []}')
    findings = [
        [f["severity"], f["code"], result["node_path"], f["message"] or ""]
        for result in report["results"]
        for f in result["finding_descriptions"]
    ]
    return {"exit": code, "findings": findings}


def main():
    results = {}
    for arg in sys.argv[1:]:
        kind, _, path = arg.partition("=")
        results[path] = lint(kind, path)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
