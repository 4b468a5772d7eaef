#!/usr/bin/env bash
# Build the hsmca Debian package.
#
# Usage: scripts/package.sh [--profile PROFILE] [--fast]
#
#   --profile PROFILE  the cargo profile to build and package (default:
#                      release, thin LTO, about 6 min from cold on 2 cores).
#                      The test suite packages the dev build it already has
#                      (--profile dev): the same files, a bigger and slower
#                      binary; cargo-deb warns that it is not for releases.
#   --fast             faster, weaker xz compression (the tests use it)
#
# Steps: cargo build; `hsmca generate-docs` writes the man pages and the
# bash/zsh/fish completions from the clap definitions into
# target/<profile>/package-docs, where the man pages and the README files
# are gzipped (Debian policy); `cargo deb --no-build` packages the binary,
# the units, the sysusers/tmpfiles entries, /etc/hsmca/hsmca.toml, the docs
# and those files as listed in Cargo.toml ([package.metadata.deb]).
# cargo-deb 3.8.x is installed with `cargo install` when missing.
#
# Prints the path of the .deb on the last line of standard output:
# target/debian/ for release, target/debian-PROFILE/ for another profile.
set -euo pipefail

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

step() {
    printf '\n==> %s\n' "$*" >&2
}

profile=release
fast=()
while (($#)); do
    case $1 in
        --profile)
            [[ $# -ge 2 && -n $2 ]] || die "--profile needs a value"
            profile=$2
            shift 2
            ;;
        --fast)
            fast=(--fast)
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$repo"

command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain (https://rustup.rs) and re-run"

# cargo-deb 3.8: packaging the dev profile is a warning there and is to
# become an error in a later release, so the version is pinned to 3.8.x.
cargo_deb_wanted='~3.8'
if ! cargo deb --version 2>/dev/null | grep -Eq '(^| )3\.8\.'; then
    step "installing cargo-deb $cargo_deb_wanted (cargo install, about 2 min)"
    cargo install cargo-deb --locked --version "$cargo_deb_wanted"
fi

case $profile in
    dev | debug) profile=dev profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
out_dir=$target_dir/debian
[[ $profile == release ]] || out_dir=$target_dir/debian-$profile

step "cargo build --profile $profile --bin hsmca"
cargo build --locked --profile "$profile" --bin hsmca

bin=$target_dir/$profile_dir/hsmca
docs=$target_dir/$profile_dir/package-docs
step "man pages and completions from the clap definitions ($docs)"
rm -rf -- "$docs"
"$bin" generate-docs "$docs"
# Debian policy (12.3): man pages and documentation over 4 kB are shipped
# gzip -9n'd; cargo-deb compresses only files it did not get from target/.
gzip -9n -- "$docs"/man/*.1
mkdir -p -- "$docs/doc"
gzip -9n <README.md >"$docs/doc/README.md.gz"
gzip -9n <BENCHMARKS.md >"$docs/doc/BENCHMARKS.md.gz"
gzip -9n <systemd/README.md >"$docs/doc/README.systemd.md.gz"

strip=()
# The dev profile carries full debug info, which cargo-deb would keep.
[[ $profile == dev ]] && strip=(--strip)

step "cargo deb --no-build --profile $profile"
mkdir -p -- "$out_dir"
rm -f -- "$out_dir"/hsmca_*.deb
cargo deb --no-build --locked --profile "$profile" "${strip[@]}" "${fast[@]}" --output "$out_dir/" >&2
deb=$(find "$out_dir" -maxdepth 1 -name 'hsmca_*.deb' -print -quit)
[[ -n $deb ]] || die "cargo deb made no package in $out_dir"
printf '%s\n' "$deb"
