#!/usr/bin/env bash
# The long versions of the reliability campaigns (docs/reliability.md):
# power cuts (10,000 per layout), kill -9 (50 rounds per campaign), the
# swarm (30 minutes) and the fuzzers (30 minutes each). Several hours on
# a 2-core machine; set CUTS, KILL_ROUNDS, SWARM_SECS, FUZZ_SECS to change.
#
#   scripts/long-campaigns.sh [crash|kill|swarm|fuzz ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
CUTS=${CUTS:-10000}
KILL_ROUNDS=${KILL_ROUNDS:-50}
SWARM_SECS=${SWARM_SECS:-1800}
FUZZ_SECS=${FUZZ_SECS:-1800}
SEED=${SEED:-$(date +%s)}
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(crash kill swarm fuzz)

cargo build --release -p edgevol --quiet
for part in "${parts[@]}"; do
    echo "== $part ($(date -u +%FT%TZ))" >&2
    case $part in
    crash)
        for layout in single mirror parity1; do
            target/release/edgevol test crash --seed "$SEED" --cuts "$CUTS" --layout "$layout"
        done
        ;;
    kill)
        CRASH_ROUNDS=$KILL_ROUNDS cargo test --release -p edgevol --test crash -- --nocapture
        ;;
    swarm)
        EDGEVOL_SWARM_SECS=$SWARM_SECS cargo test --release -p edgevol --test swarm -- --nocapture
        ;;
    fuzz)
        scripts/fuzz.sh "$FUZZ_SECS"
        ;;
    *)
        echo "unknown part $part (crash, kill, swarm, fuzz)" >&2
        exit 2
        ;;
    esac
done
echo "== all long campaigns passed" >&2
