#!/usr/bin/env bash
# Run the cargo-fuzz targets (fuzz/fuzz_targets) one after the other.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   scripts/fuzz.sh 600 nbd_server label # these targets, 10 minutes each
#   RUNS=10000000 scripts/fuzz.sh 1800   # stop at 10 M executions or 30 min
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs
# cargo-fuzz if it is missing. Grown corpora stay in fuzz/corpus/<target>/
# (git ignores all but the seed-* files). Exits non-zero if a target
# crashed; the crashing input is in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^edgevol')
fi
runs=${RUNS:--1}  # -1: no limit on executions
rss=${RSS_LIMIT_MB:-2048}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

failed=()
printf '%-14s %12s %8s %10s  %s\n' target executions seconds exec/s result >&2
for t in "${targets[@]}"; do
    log=$(mktemp)
    mkdir -p "fuzz/corpus/$t"
    start=$(date +%s)
    status=0
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -runs="$runs" \
        -rss_limit_mb="$rss" -print_final_stats=1 >"$log" 2>&1 || status=$?
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$status" -eq 0 ]; then
        result="ok, 0 crashes"
    else
        result="CRASH (exit $status)"
        failed+=("$t")
        echo "---- $t: last lines of the libFuzzer log ($log)" >&2
        tail -40 "$log" >&2
        art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        echo "---- reproduce: cargo +nightly fuzz run $t ${art:-fuzz/artifacts/$t/<file>}" >&2
        echo "---- fix the parser, then keep the input as a regression test:" >&2
        echo "     cp ${art:-fuzz/artifacts/$t/<file>} fuzz/regressions/$t/<what-it-broke>" >&2
        echo "     (cargo test -p edgevol-fuzz replays fuzz/regressions/ on every CI run)" >&2
    fi
    printf '%-14s %12s %8s %10s  %s\n' "$t" "${execs:-?}" "$took" "${rate:-?}" "$result" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
