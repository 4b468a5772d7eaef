#!/usr/bin/env bash
# Set up a development SoftHSM2 token and run hsmca on it.
#
# Usage: scripts/dev.sh [--postgres] [--nodes N] [DIR]
#
# DIR (default: dev/ in the repository root; a relative DIR is taken
# relative to the current directory) receives the token, PINs and
# configuration made by softhsm-setup/setup.sh. The daemon is built with
# "cargo build --release", the CA is initialised on the first run
# ("hsmca init"), and then "hsmca serve" runs in the foreground.
#
# --postgres: the records live in a private PostgreSQL server under
# DIR/postgres (Unix socket only, started here, stopped on Ctrl-C) instead
# of SQLite. --nodes N (with --postgres): N daemons on the one token and
# database, with sockets DIR/node1/hsmca.sock ... DIR/nodeN/hsmca.sock.
set -euo pipefail

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

apt_install() {
    if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        die "missing Debian package(s): $*; not root and sudo is not installed, so install them as root (apt-get install $*) and re-run"
    fi
    printf '%s: installing %s\n' "$prog" "$*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
        install -y --no-install-recommends "$@"
}

postgres=no
nodes=1
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
    -h | --help)
        printf 'usage: %s [--postgres] [--nodes N] [DIR]\n' "$0"
        exit 0
        ;;
    --postgres) postgres=yes ;;
    --nodes)
        [[ ${2-} =~ ^[1-9][0-9]?$ ]] || die "--nodes takes a number from 1 to 99"
        nodes=$2
        shift
        ;;
    *) args+=("$1") ;;
    esac
    shift
done
set -- "${args[@]+"${args[@]}"}"
[[ $# -le 1 ]] || die "usage: $0 [--postgres] [--nodes N] [DIR]"
[[ $nodes -eq 1 || $postgres == yes ]] || die "--nodes needs --postgres: several daemons share one PostgreSQL database, never one SQLite file"

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)

# A DIR given on the command line is relative to where the user is; resolve
# it before changing to the repository root.
if [[ $# -eq 1 ]]; then
    [[ -n $1 ]] || die "DIR must not be empty"
    case $1 in
        /*) dir=$1 ;;
        *) dir=$PWD/$1 ;;
    esac
else
    dir=$repo/dev
fi

cd -- "$repo"

# --- token and configuration ------------------------------------------------
"$repo/softhsm-setup/setup.sh" "$dir"
dir=$(cd -- "$dir" && pwd -P)
config=$dir/hsmca.toml

# --- build ------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain (https://rustup.rs) and re-run"
# The Rust toolchain needs a C compiler/linker; the protobuf files are
# compiled by a pure-Rust crate, so protoc is not needed.
if ! command -v cc >/dev/null 2>&1; then
    apt_install gcc libc6-dev
fi
cargo build --release
hsmca=$repo/target/release/hsmca
[[ -x $hsmca ]] || die "$hsmca was not built"

export SOFTHSM2_CONF=$dir/softhsm2.conf

# --- CA -----------------------------------------------------------------------
if [[ ! -e $dir/ca.pem ]]; then
    "$hsmca" init --config "$config"
fi

q() { printf '%q' "$1"; }

# --- several daemons on PostgreSQL --------------------------------------------
if [[ $postgres == yes ]]; then
    command -v runuser >/dev/null 2>&1 || die "runuser not found (util-linux)"
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_install postgresql
    # As root the server runs as the postgres user, which must be able to
    # pass through DIR to its data directory: DIR becomes 0711 (others may
    # traverse, not list; tokens/, state/ and the PIN files stay private).
    [[ $(id -u) -ne 0 ]] || chmod 0711 "$dir"
    "$repo/scripts/pg-test-server.sh" start "$dir/postgres"
    HSMCA_STATE__DATABASE=$("$repo/scripts/pg-test-server.sh" url "$dir/postgres" hsmca)
    export HSMCA_STATE__DATABASE
    pids=()
    stop_all() {
        for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        wait
        "$repo/scripts/pg-test-server.sh" stop "$dir/postgres" || true
    }
    trap stop_all EXIT
    trap 'exit 0' INT TERM
    printf '\nhsmca development CA in %s, records in PostgreSQL (%s)\n' "$dir" "$HSMCA_STATE__DATABASE"
    for n in $(seq 1 "$nodes"); do
        mkdir -p "$dir/node$n"
        # Each node has its own sockets; the workload endpoint (on in the
        # development config) too.
        node_env=(HSMCA_SERVER__SOCKET="$dir/node$n/hsmca.sock")
        if grep -q '^\[workload\]' "$config"; then
            node_env+=(HSMCA_WORKLOAD__SOCKET="$dir/node$n/workload.sock")
        fi
        env "${node_env[@]}" "$hsmca" serve --config "$config" \
            >"$dir/node$n/daemon.log" 2>&1 &
        pids+=($!)
    done
    for n in $(seq 1 "$nodes"); do
        for _ in $(seq 1 300); do
            [[ -S $dir/node$n/hsmca.sock ]] && break
            kill -0 "${pids[$((n - 1))]}" 2>/dev/null || die "node$n stopped; see $dir/node$n/daemon.log"
            sleep 0.1
        done
        printf '  node%s: socket %s (log %s)\n' "$n" "$dir/node$n/hsmca.sock" "$dir/node$n/daemon.log"
    done
    cat <<EOF

Issue on one node and look at the record, the replay and the CRL on another:

  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem
  openssl pkey -in key.pem -pubout -out key.pub.pem
  target/release/hsmca issue --socket $(q "$dir/node1/hsmca.sock") --public-key key.pub.pem --cn demo --out cert.pem
  target/release/hsmca list --socket $(q "$dir/node$nodes/hsmca.sock")
  target/release/hsmca crl --socket $(q "$dir/node$nodes/hsmca.sock")

Ctrl-C stops the daemons and PostgreSQL.
EOF
    wait -n "${pids[@]}" || true
    exit 0
fi

# --- usage ------------------------------------------------------------------
q() { printf '%q' "$1"; }
cat <<EOF

hsmca development CA in $dir
From another terminal (in $repo):

  # make a key pair and extract its public key
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem
  openssl pkey -in key.pem -pubout -out key.pub.pem

  # have the CA issue a certificate for it
  target/release/hsmca issue --config $(q "$config") --public-key key.pub.pem --cn demo --out cert.pem --chain chain.pem

  # check it against the CA certificate
  openssl verify -CAfile $(q "$dir/ca.pem") -untrusted chain.pem cert.pem

Starting "hsmca serve" (Ctrl-C to stop)...

EOF

exec "$hsmca" serve --config "$config"
