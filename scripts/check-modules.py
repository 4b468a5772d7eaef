#!/usr/bin/env python3
"""The module graph's rules, checked from the source (see ARCHITECTURE.md).

usage: scripts/check-modules.py [SRC_DIR]      (default: src/ next to this script)

Reads every `crate::…` path in SRC_DIR's non-test code (everything before a
file's first `#[cfg(test)]`, comments stripped; `tests.rs` files are test
modules and not read), including `use crate::{a,
b::{…}}` groups, and builds the graph of top-level modules (`src/x.rs` and
`src/x/` are module `x`). It fails (exit 1), printing each finding, when:

- the graph has a cycle: every strongly connected set of modules is listed
  with the files and lines of the imports that close it;
- a wall is crossed: `server` importing `token`; `issue` importing `store`,
  `audit`, `requests` or `proto`; `token` importing `tonic` or any module
  that does; `policy` importing `token` or `cryptoki`;
- a file has more than 600 lines of non-test code.

It prints the layers (each module after everything it imports) on success.
"""
import os
import re
import sys

MAX_LINES = 600
WALLS = [
    ("server", "token", "the gRPC layer knows only the signing contract"),
    ("issue", "store", "certificate building returns what it built; the edges record it"),
    ("issue", "audit", "certificate building returns what it built; the edges audit it"),
    ("issue", "requests", "certificate requests are built on issuance, not the reverse"),
    ("issue", "proto", "certificate building takes plain input, not wire types"),
    ("policy", "token", "policy decides who may have what, not how it is signed"),
]


def top_module(src, path):
    parts = os.path.relpath(path, src).split(os.sep)
    if len(parts) == 1:
        name = parts[0][:-3]
        return None if name in ("main", "lib") else name
    return parts[0]


def code_of(path):
    """(text before the test module with comments blanked, line offsets kept);
    a `tests.rs` file is a test module of its own and counts as none"""
    if os.path.basename(path) == "tests.rs":
        return ""
    txt = open(path, encoding="utf-8").read()
    m = re.search(r"^\s*#\[cfg\(test\)\]", txt, re.M)
    if m:
        txt = txt[: m.start()]
    return re.sub(r"//[^\n]*", "", txt)


def imports(txt):
    """(module, offset) for each crate:: path head in txt"""
    out = []
    for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)", txt):
        out.append((m.group(1), m.start()))
    for g in re.finditer(r"\bcrate::\{", txt):
        depth, j, expect = 1, g.end(), True
        while j < len(txt) and depth:
            c = txt[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == "," and depth == 1:
                expect = True
            elif expect and depth == 1 and (c.isalpha() or c == "_"):
                m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", txt[j:])
                out.append((m.group(0), j))
                j += m.end() - 1
                expect = False
            j += 1
    return out


def strongly_connected(graph):
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def layers(graph):
    level = {}

    def depth(v, seen=()):
        if v in level:
            return level[v]
        if v in seen:
            return 0
        d = 1 + max((depth(w, seen + (v,)) for w in graph.get(v, ())), default=-1)
        level[v] = d
        return d

    for v in graph:
        depth(v)
    rows = {}
    for v, d in level.items():
        rows.setdefault(d, []).append(v)
    return [sorted(rows[d]) for d in sorted(rows)]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "src")
    files = sorted(
        os.path.join(root, f)
        for root, _, fs in os.walk(src)
        for f in fs
        if f.endswith(".rs")
    )
    mods = {top_module(src, f) for f in files} - {None}
    graph = {m: set() for m in mods}
    sites = {}  # (from, to) -> ["file:line", ...]
    findings = []
    long_files = []
    for f in files:
        m = top_module(src, f)
        txt = code_of(f)
        lines = txt.count("\n")
        if lines > MAX_LINES:
            long_files.append(f"{os.path.relpath(f, src)}: {lines} lines of non-test code (more than {MAX_LINES})")
        if m is None:
            continue
        for dep, off in imports(txt):
            if dep in mods and dep != m:
                graph[m].add(dep)
                line = txt.count("\n", 0, off) + 1
                sites.setdefault((m, dep), []).append(f"{os.path.relpath(f, src)}:{line}")
        if m == "token" and re.search(r"\btonic::", txt):
            findings.append(f"wall crossed: {os.path.relpath(f, src)} uses tonic (the token layer stays below gRPC)")
        if m == "policy" and re.search(r"\bcryptoki::", txt):
            findings.append(f"wall crossed: {os.path.relpath(f, src)} uses cryptoki (policy knows no PKCS#11)")
    for comp in strongly_connected(graph):
        edges = [
            f"{a} -> {b} ({', '.join(sites[(a, b)][:3])})"
            for a in comp
            for b in sorted(graph[a])
            if b in comp
        ]
        findings.append(f"import cycle among {', '.join(comp)}: " + "; ".join(edges))
    for a, b, why in WALLS:
        if b in graph.get(a, ()):
            findings.append(f"wall crossed: {a} imports {b} ({', '.join(sites[(a, b)][:3])}): {why}")
    # token must not reach tonic through another module either
    reach, todo = set(), ["token"]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in reach:
                reach.add(w)
                todo.append(w)
    for f in files:
        if top_module(src, f) in reach and re.search(r"\btonic::", code_of(f)):
            findings.append(
                f"wall crossed: token depends on {top_module(src, f)}, which uses tonic ({os.path.relpath(f, src)})"
            )
    findings.extend(long_files)
    if findings:
        for x in findings:
            print(f"check-modules: {x}")
        return 1
    print(f"check-modules: {len(mods)} top-level modules, no cycles, walls hold; layers, lowest first:")
    for i, row in enumerate(layers(graph)):
        print(f"  {i}: {' '.join(row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
