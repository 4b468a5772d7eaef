#!/usr/bin/env bash
# Fuzz every parser of client input (the cargo-fuzz targets in fuzz/) for a
# bounded time each, on the stable toolchain.
#
# Usage: scripts/fuzz.sh [SECONDS]     run each target SECONDS (default 60)
#        scripts/fuzz.sh --replay      only replay the committed corpus
#                                      (fuzz/corpus/TARGET) through each target
#
# Environment: FUZZ_TARGETS="csr names"  a subset of targets;
#              FUZZ_SANITIZER=address    (default none: several times faster;
#                                        the code under test is safe Rust)
#              FUZZ_PROFILE=dev          build without optimisations (CI: a
#                                        much shorter build, fewer executions)
#              FUZZ_RUNS=N               stop each target after N executions
#                                        (SECONDS still caps it): e.g.
#                                        FUZZ_RUNS=1000000 scripts/fuzz.sh 3600
#
# cargo-fuzz needs nightly-only -Z flags; RUSTC_BOOTSTRAP=1 lets the stable
# compiler accept them. cargo-fuzz is installed (cargo install --locked) when
# missing. New corpus entries go to <target dir>/fuzz/corpus/TARGET, never
# into the committed seeds; a crash leaves its input in
# fuzz/artifacts/TARGET/ and makes this script fail: turn it into a
# regression test next to the code that crashed, and add it to the seeds.
set -euo pipefail

prog=${0##*/}
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$repo"

mode=run
secs=60
case ${1:-} in
"") ;;
--replay) mode=replay ;;
*[!0-9]*) die "usage: $prog [SECONDS | --replay]" ;;
*) secs=$1 ;;
esac

command -v cargo >/dev/null 2>&1 || die "cargo not found"
if ! cargo fuzz --version >/dev/null 2>&1; then
    printf '==> installing cargo-fuzz\n' >&2
    cargo install cargo-fuzz --locked
fi
# libFuzzer is C++: cargo-fuzz builds it with the system compiler.
command -v c++ >/dev/null 2>&1 || die "a C++ compiler is needed (apt-get install g++)"

export RUSTC_BOOTSTRAP=1
target_dir=${CARGO_TARGET_DIR:-$repo/target}/fuzz
sanitizer=${FUZZ_SANITIZER:-none}
runs=()
[[ -z ${FUZZ_RUNS:-} ]] || runs=(-runs="$FUZZ_RUNS")
flags=(--sanitizer "$sanitizer" --debug-assertions --target-dir "$target_dir")
[[ ${FUZZ_PROFILE:-release} != dev ]] || flags+=(--dev)

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi
((${#targets[@]})) || die "no fuzz targets found"

printf '==> building %s\n' "${targets[*]}" >&2
cargo fuzz build "${flags[@]}"

summary=()
for t in "${targets[@]}"; do
    seeds=fuzz/corpus/$t
    [[ -d $seeds ]] || die "no seed corpus $seeds"
    log=$target_dir/$t.log
    if [[ $mode == replay ]]; then
        printf '==> %s: replaying %s\n' "$t" "$seeds" >&2
        # -runs=0: execute the corpus once, fuzz nothing.
        cargo fuzz run "${flags[@]}" "$t" "$seeds" -- -runs=0 2>&1 | tee "$log" >&2
        summary+=("$t: $(find "$seeds" -type f | wc -l) inputs replayed, no crash")
    else
        work=$target_dir/corpus/$t
        mkdir -p -- "$work"
        printf '==> %s: fuzzing for %ss\n' "$t" "$secs" >&2
        cargo fuzz run "${flags[@]}" "$t" "$work" "$seeds" -- \
            -max_total_time="$secs" "${runs[@]}" -print_final_stats=1 \
            2>&1 | tee "$log" >&2
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}')
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | awk '{s+=$1} END {print s+0}')
        took=$(sed -n 's/.*Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
        summary+=("$t: $execs executions in ${took:-$secs}s ($rate/s), no crash")
    fi
done
printf '\n==> fuzzing summary\n' >&2
printf '  %s\n' "${summary[@]}" >&2
