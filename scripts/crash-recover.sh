#!/usr/bin/env bash
# kill -9 soak: runs APP on RECORDS generated records with checkpoints,
# kills the process with SIGKILL KILLS times at random moments (continuing
# with --recover after each), optionally corrupts the newest checkpoint
# before the last recovery, lets it finish, and checks output and dead
# letters with `verity verify`. Single-process runs (a multi-process cluster
# does not checkpoint yet).
# Usage: scripts/crash-recover.sh [APP] [RECORDS] [KILLS] [SEED] [--corrupt-newest]
set -euo pipefail
app=${1:-seq-window}
records=${2:-10000000}
kills=${3:-10}
seed=${4:-1}
corrupt=${5:-}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p verity
verity=$PWD/target/release/verity
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
RANDOM=$seed

if [ "$app" = market-spread ]; then
    "$verity" generate "$app" --count "$records" --seed "$seed" \
        --quotes-output "$work/quotes.txt" --orders-output "$work/orders.txt"
    input=(--quotes "$work/quotes.txt" --orders "$work/orders.txt")
else
    "$verity" generate "$app" --count "$records" --seed "$seed" --output "$work/in.txt"
    input=(--input "$work/in.txt")
fi
run=("$verity" run "$app" "${input[@]}" --output "$work/out.txt" --state-dir "$work/state"
    --checkpoint-interval-ms 100)

hit=0
for ((kill = 0; kill < kills; kill++)); do
    recover=()
    [ "$kill" -gt 0 ] && recover=(--recover)
    "${run[@]}" "${recover[@]}" 2>>"$work/log" &
    pid=$!
    # 50..800 ms: early kills land before the first checkpoint, late ones
    # after the run may have finished (then nothing is killed).
    sleep "0.$(printf '%03d' $((50 + RANDOM % 750)))"
    if kill -9 "$pid" 2>/dev/null; then hit=$((hit + 1)); fi
    wait "$pid" 2>/dev/null || true
done
if [ "$corrupt" = --corrupt-newest ]; then
    newest=$(ls "$work/state"/*.bin | sort | tail -n 1)
    printf 'X' | dd of="$newest" bs=1 seek=40 conv=notrunc status=none
    echo "corrupted $(basename "$newest")"
fi
"${run[@]}" --recover
echo "$hit of $kills kills hit a running process"
"$verity" verify "$app" "${input[@]}" --output "$work/out.txt" --dead-letter "$work/out.txt.dead-letter"
