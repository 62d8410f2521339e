#!/usr/bin/env bash
# kill -9 soak of a 3-process local cluster: runs APP on RECORDS generated
# records with checkpoints, kills a random worker process with SIGKILL KILLS
# times at seeded moments (each after a new checkpoint appeared, so every
# restart follows progress); process 0 restarts every process from the
# newest checkpoint by itself. Then, unless --no-kill-all: every process is
# killed at once, the newest checkpoint is corrupted, and the run is
# continued with --recover. Output and dead letters are checked with
# `verity verify`.
# Usage: scripts/cluster-crash-recover.sh [APP] [RECORDS] [KILLS] [SEED] [--no-kill-all]
set -euo pipefail
app=${1:-seq-window}
records=${2:-10000000}
kills=${3:-10}
seed=${4:-1}
kill_all=${5:-}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p verity
verity=$PWD/target/release/verity
work=$(mktemp -d)
leader=
cleanup() {
    if [ -n "$leader" ]; then
        pkill -9 -P "$leader" 2>/dev/null || true
        kill -9 "$leader" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
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
    --checkpoint-interval-ms 100 --processes 3 --workers 1 --no-pin)

newest() { ls "$work/state" 2>/dev/null | sed -n 's/^ckpt-0*\([0-9][0-9]*\)\.manifest$/\1/p' | sort -n | tail -n 1; }
# Waits (bounded) until a checkpoint newer than $1 exists and process 0 has
# two workers; fails if the run ended first.
wait_ready() {
    for _ in $(seq 6000); do
        kill -0 "$leader" 2>/dev/null || return 1
        local now
        now=$(newest)
        if [ "${now:-0}" -gt "$1" ] && [ "$(pgrep -c -P "$leader" || true)" -eq 2 ]; then return 0; fi
        sleep 0.02
    done
    echo "no progress within 120 s" >&2
    exit 1
}

started=$(date +%s.%N)
"${run[@]}" 2>"$work/log" &
leader=$!
hit=0
for ((kill = 0; kill < kills; kill++)); do
    wait_ready "$(newest || echo 0)" || break
    sleep "0.$(printf '%03d' $((RANDOM % 500)))"
    victim=$(pgrep -P "$leader" | sed -n "$((RANDOM % 2 + 1))p")
    if [ -n "$victim" ] && kill -9 "$victim" 2>/dev/null; then hit=$((hit + 1)); fi
done
if [ "$kill_all" != --no-kill-all ] && wait_ready "$(newest || echo 0)"; then
    pkill -9 -P "$leader" || true
    kill -9 "$leader" || true
    wait "$leader" 2>/dev/null || true
    newest_part=$(ls "$work/state"/*.bin | sort | tail -n 1)
    printf 'X' | dd of="$newest_part" bs=1 seek=40 conv=notrunc status=none
    echo "killed every process at once; corrupted $(basename "$newest_part")"
    "${run[@]}" --recover 2>>"$work/log" &
    leader=$!
fi
status=0
wait "$leader" || status=$?
leader=
ended=$(date +%s.%N)
restarts=$(grep -c "restarting every process" "$work/log" || true)
echo "$hit of $kills worker kills hit a running process; $restarts restarts; $(python3 -c "print(f'{$ended - $started:.1f}')") s in all"
grep -E "passed over|gave up" "$work/log" || true
if [ "$status" -ne 0 ]; then
    tail -n 20 "$work/log"
    echo "the run failed ($status)" >&2
    exit 1
fi
"$verity" verify "$app" "${input[@]}" --output "$work/out.txt" --dead-letter "$work/out.txt.dead-letter"
