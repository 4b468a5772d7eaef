#!/usr/bin/env bash
# A private PostgreSQL server for tests and development: initdb into DIR/data,
# pg_ctl as the postgres user when run as root (initdb refuses root), listening
# only on the Unix socket directory DIR/sockets (no TCP port, no system
# service). Trust authentication: only whoever can reach DIR/sockets connects.
#
# Usage: scripts/pg-test-server.sh start DIR    (initdb on first use)
#        scripts/pg-test-server.sh stop DIR
#        scripts/pg-test-server.sh url DIR DB    prints the state.database URL
set -euo pipefail

cmd=${1:?usage: pg-test-server.sh start|stop|url DIR [DB]}
dir=${2:?usage: pg-test-server.sh start|stop|url DIR [DB]}
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
[[ -x $bindir/initdb ]] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }

as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case $cmd in
start)
    mkdir -p -- "$dir/sockets"
    chmod 755 -- "$dir"
    [[ $(id -u) -eq 0 ]] && chown -R postgres:postgres -- "$dir"
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        as_pg "$bindir/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log"
    fi
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-k $dir/sockets -c listen_addresses='' -c max_connections=400 -c shared_buffers=64MB" start >/dev/null
    echo "PostgreSQL on socket directory $dir/sockets"
    ;;
stop)
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
url)
    db=${3:?usage: pg-test-server.sh url DIR DB}
    "$bindir/psql" -h "$dir/sockets" -U postgres -d postgres -Atc \
        "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
        "$bindir/psql" -h "$dir/sockets" -U postgres -d postgres -qc "CREATE DATABASE $db"
    echo "postgres://postgres@localhost/$db?host=$dir/sockets"
    ;;
*)
    echo "usage: pg-test-server.sh start|stop|url DIR [DB]" >&2
    exit 2
    ;;
esac
