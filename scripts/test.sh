#!/usr/bin/env bash
# Run the whole hsmca test suite, installing what a fresh Debian machine
# lacks (Debian packages, a Python venv for the gRPC/pkilint tests, and the
# rustfmt/clippy components).
#
# Usage: scripts/test.sh [ARGS...]    ARGS are passed on to "cargo test"
#
# Steps: cargo fmt --check; cargo clippy --all-targets -- -D warnings;
# scripts/check-modules.py (the module graph's rules); the shipped build
# (cargo build, no test features) for tests/shipped_build.rs;
# cargo test --all-targets ARGS; the suites that touch the store once more
# against a private PostgreSQL server (scripts/pg-test-server.sh); the Debian package built from the dev
# build, linted, installed, checked and purged (scripts/package-test.sh;
# changes this machine); then every fuzz target for
# HSMCA_FUZZ_SECONDS each (default 10, unoptimised build; 0 only replays
# the committed seed corpus) through scripts/fuzz.sh, which installs cargo-fuzz when missing.
# Exits non-zero on any failure.
#
# Exports HSMCA_TEST_PYTHON=<repo>/target/test-venv/bin/python and
# HSMCA_TEST_PROMTOOL (promtool) for the tests.
set -euo pipefail

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

step() {
    printf '\n==> %s\n' "$*" >&2
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

apt_updated=no
apt_install() {
    if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        die "missing Debian package(s): $*; not root and sudo is not installed, so install them as root (apt-get install $*) and re-run"
    fi
    step "installing $*"
    if [[ $apt_updated == no ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update
        apt_updated=yes
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
        install -y --no-install-recommends "$@"
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$repo"

command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain (https://rustup.rs) and re-run"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

# --- Debian packages --------------------------------------------------------
# softhsm2: the token; opensc: pkcs11-tool and pkcs11-spy.so;
# openssl + libengine-pkcs11-openssl: checking certificates and signing
# with keys on the token from the tests; systemd: systemd-analyze (the unit
# files are verified and scored) and systemd-socket-activate (socket
# activation is tested with it). Neither needs systemd to be running.
# gnutls-bin: certtool, the third verifier of the conformance matrix.
# lintian and man-db: the package test checks the .deb and its man page.
missing=()
# postgresql: the PostgreSQL store's suites start private servers with its
# initdb/pg_ctl (no system service is used).
for p in softhsm2 opensc openssl libengine-pkcs11-openssl systemd gnutls-bin lintian man-db postgresql; do
    pkg_installed "$p" || missing+=("$p")
done
# The Rust toolchain needs a C compiler/linker; libFuzzer (fuzz/) is C++.
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# setup.sh types the PINs into softhsm2-util through script(1).
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
fi
if ! compgen -G '/usr/lib/*/pkcs11/pkcs11-spy.so' >/dev/null &&
    [[ ! -e /usr/lib/pkcs11/pkcs11-spy.so ]]; then
    printf '%s: warning: pkcs11-spy.so not found under /usr/lib/*/pkcs11/\n' "$prog" >&2
fi

# --- promtool ---------------------------------------------------------------
# Prometheus' rule checker, for contrib/prometheus. Debian ships it only in
# the prometheus package, which pulls a dozen JavaScript packages for the
# web UI (96 MB installed) and whose postinst would start a Prometheus
# server; no smaller package ships promtool. The tests need only that one
# static binary, so it is taken out of the package (apt-get download,
# dpkg-deb -x) into target/tools, and nothing is installed.
promtool=$repo/target/tools/promtool
if [[ ! -x $promtool ]] && command -v promtool >/dev/null 2>&1; then
    promtool=$(command -v promtool)
elif [[ ! -x $promtool ]]; then
    step "extracting promtool from Debian's prometheus package into target/tools"
    if ! apt-cache show prometheus >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update
        apt_updated=yes
    fi
    dl=$(mktemp -d)
    (cd "$dl" && apt-get download prometheus)
    dpkg-deb -x "$dl"/prometheus_*.deb "$dl/root"
    install -D -m 0755 "$dl/root/usr/bin/promtool" "$promtool"
    rm -rf -- "$dl"
fi
"$promtool" --version >/dev/null 2>&1 || die "promtool at $promtool does not run"
export HSMCA_TEST_PROMTOOL=$promtool

# --- Python venv for the tests --------------------------------------------
venv=$repo/target/test-venv
py=$venv/bin/python
if [[ -x $py ]] && "$py" -m pip --version >/dev/null 2>&1; then
    :
else
    step "creating Python venv $venv"
    rm -rf -- "$venv"
    mkdir -p -- "$repo/target"
    if ! python3 -m venv "$venv"; then
        # Debian's python3 needs python3-venv (ensurepip) for "-m venv".
        rm -rf -- "$venv"
        pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        venv_pkgs=(python3-venv)
        if apt-cache show "python$pyver-venv" >/dev/null 2>&1; then
            venv_pkgs+=("python$pyver-venv")
        fi
        apt_install "${venv_pkgs[@]}"
        python3 -m venv "$venv" || die "could not create a Python venv in $venv"
    fi
fi
# spiffe (py-spiffe): a real Workload API client for tests/workload.rs;
# xds-protos: Envoy's generated protos, Envoy's side of SDS in tests/sds.rs.
if ! "$py" -c 'import grpc, grpc_tools, grpc_health, grpc_reflection, pkilint, cryptography, spiffe, envoy.service.secret.v3.sds_pb2_grpc' >/dev/null 2>&1; then
    step "installing Python test dependencies into $venv"
    "$py" -m pip install --disable-pip-version-check --quiet \
        'grpcio>=1.60,<2' 'grpcio-tools>=1.60,<2' 'grpcio-health-checking>=1.60,<2' \
        'grpcio-reflection>=1.60,<2' 'pkilint>=0.13,<0.14' 'cryptography>=42' \
        'spiffe>=0.3.2,<0.4' 'xds-protos>=1.85,<2'
    "$py" -c 'import grpc, grpc_tools, grpc_health, grpc_reflection, pkilint, cryptography, spiffe, envoy.service.secret.v3.sds_pb2_grpc' ||
        die "Python test dependencies still not importable after pip install"
fi
export HSMCA_TEST_PYTHON=$py

# --- Rust components --------------------------------------------------------
for c in rustfmt clippy; do
    sub=fmt
    [[ $c == clippy ]] && sub=clippy
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 || die "cargo $sub is missing and rustup is not installed to add $c"
        step "adding the $c component"
        rustup component add "$c"
    fi
done

# --- checks and tests -------------------------------------------------------
step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings (and the shipped build, without test features)"
cargo clippy --all-targets -- -D warnings
cargo clippy --bin hsmca -- -D warnings

step "module graph: no import cycles, walls hold, no file over 600 lines (scripts/check-modules.py)"
python3 scripts/check-modules.py

# The daemon as shipped (no test-only fault hook), for tests/shipped_build.rs:
# `cargo test` then rebuilds target/debug/hsmca with the hook for the others.
step "cargo build --bin hsmca (the shipped build, without test features)"
cargo build --bin hsmca
mkdir -p target/shipped
cp target/debug/hsmca target/shipped/hsmca
export HSMCA_SHIPPED_BIN=$repo/target/shipped/hsmca

step "cargo test --all-targets $*"
cargo test --all-targets "$@"

# The suites that touch the store, again with every daemon on a database of
# its own on a private PostgreSQL server (initdb in a temporary directory,
# a Unix socket directory of its own, stopped at the end). The multi-node
# suite (tests/nodes.rs) starts its own servers and ran above. Left out of
# this pass: SQLite's own file (a full disk under it), and the single-daemon
# SIGKILL test (10,000 certificates, minutes), whose PostgreSQL counterpart
# kills two daemons again and again in tests/nodes.rs.
step "the store-touching suites against PostgreSQL"
pg_dir=$(mktemp -d /tmp/hsmca-pg-suite.XXXXXX)
trap 'scripts/pg-test-server.sh stop "$pg_dir" >/dev/null 2>&1 || true; rm -rf -- "$pg_dir"' EXIT
scripts/pg-test-server.sh start "$pg_dir"
HSMCA_TEST_POSTGRES=$pg_dir/sockets cargo test --test records --test requests \
    --test policy --test lifecycle --test issue --test retention --test request_labels \
    "$@" -- --skip a_full_disk --skip kill_9_loses_no_certificate
scripts/pg-test-server.sh stop "$pg_dir"

step "the Debian package: build, lintian, dpkg -i, checks, dpkg -r/-P (scripts/package-test.sh)"
scripts/package-test.sh

# CI fuzzes briefly with an unoptimised build (the long runs, a million
# executions a target, are `scripts/fuzz.sh` by hand; see the README).
fuzz_secs=${HSMCA_FUZZ_SECONDS:-10}
export FUZZ_PROFILE=${FUZZ_PROFILE:-dev}
if [[ $fuzz_secs == 0 ]]; then
    step "fuzz targets: replaying the seed corpus (scripts/fuzz.sh --replay)"
    scripts/fuzz.sh --replay
else
    step "fuzz targets: ${fuzz_secs}s each (scripts/fuzz.sh $fuzz_secs)"
    scripts/fuzz.sh "$fuzz_secs"
fi

step "all checks passed"
