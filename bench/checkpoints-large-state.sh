#!/usr/bin/env bash
# Checkpoints of a large state: seq-window over KEYS distinct keys, 2
# workers, file sink. The first round gives every key a record; the other
# ROUNDS-1 rounds' KEYS records each go, key after key, over the first HOT
# keys only (HOT = KEYS, the default: every key changes all the time; a
# small HOT: a large cold state and a hot set, where incremental snapshots
# write only what changed).
# 1. Throughput without checkpoints and with them every 1000 ms (the
#    default), the runners taking turns, median of REPEAT; the output
#    thread's own figures of the checkpointed runs: size, request to durable
#    (alignment + snapshots + writing), writing alone, and each shard's
#    stall (the step that took its snapshot).
# 2. Recovery of a 3-process cluster: a worker is killed with SIGKILL once a
#    checkpoint of the whole state exists; the time from the kill until every
#    process restored its shards and processes again.
# Usage: bench/checkpoints-large-state.sh [KEYS] [ROUNDS] [REPEAT] [HOT]
# VERITY_BIN=path runs another build (e.g. an older one, for a comparison).
set -euo pipefail
keys=${1:-1000000}
rounds=${2:-6}
repeat=${3:-3}
hot=${4:-$keys}
cd "$(dirname "$0")/.."
if [ -z "${VERITY_BIN:-}" ]; then
    cargo build --release --quiet -p verity
fi
verity=${VERITY_BIN:-$PWD/target/release/verity}
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
awk -v keys="$keys" -v rounds="$rounds" -v hot="$hot" 'BEGIN {
    for (k = 0; k < keys; k++) print "key" k, 1
    for (j = 0; j < (rounds - 1) * keys; j++) print "key" (j % hot), 2 + int(j / hot)
}' > "$work/in.txt"
records=$((keys * rounds))

run() {
    rm -rf "$work/state"
    "$verity" run seq-window --input "$work/in.txt" --output "$work/out.txt" --workers 2 "$@" 2>"$work/log" >/dev/null
    sed -n 's/.* in \([0-9.]*\) s (.*/\1/p' "$work/log"
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
off=() on=()
for _ in $(seq "$repeat"); do
    off+=("$(run)")
    on+=("$(run --state-dir "$work/state")")
    grep -E "checkpoints:|checkpoint stall" "$work/log" >> "$work/checkpoint-lines" || true
done
off_s=$(printf '%s\n' "${off[@]}" | median)
on_s=$(printf '%s\n' "${on[@]}" | median)
echo "# seq-window, $keys keys x $rounds rounds = $records records (after the first round over $hot hot keys), 2 workers, file sink, median of $repeat interleaved runs"
printf '%-34s %9s %14s %8s\n' runner seconds records/s ratio
row() { awk -v name="$1" -v s="$2" -v n="$records" -v base="$off_s" \
    'BEGIN { printf "%-34s %9.3f %14.0f %8.2f\n", name, s, n / s, base / s }'; }
row "no checkpoints" "$off_s"
row "checkpoints every 1000 ms" "$on_s"
echo "the output thread's figures, per checkpointed run:"
sed 's/^verity: /  /' "$work/checkpoint-lines"

# Recovery of a cluster from a kill -9, with the whole state checkpointed.
rm -rf "$work/state"
"$verity" run seq-window --input "$work/in.txt" --output "$work/out.txt" --processes 3 --workers 1 --no-pin \
    --state-dir "$work/state" 2>"$work/cluster-log" >/dev/null &
leader=$!
# Wait (bounded) for a checkpoint taken after the first round: every key in it.
for _ in $(seq 6000); do
    newest=$(ls "$work/state" 2>/dev/null | sed -n 's/^ckpt-0*\([0-9][0-9]*\)\.manifest$/\1/p' | sort -n | tail -n 1 || true)
    [ "${newest:-0}" -ge 2 ] && break
    kill -0 "$leader" 2>/dev/null || break
    sleep 0.02
done
victim=$(pgrep -P "$leader" | head -n 1 || true)
if [ -z "$victim" ] || [ "${newest:-0}" -lt 2 ]; then
    echo "recovery: the run ended before a checkpoint of the whole state; use more ROUNDS"
    exit 0
fi
before=$(grep -c "continuing from checkpoint" "$work/cluster-log" || true)
killed=$(date +%s%N)
kill -9 "$victim"
restored=
for _ in $(seq 30000); do
    now=$(grep -c "continuing from checkpoint" "$work/cluster-log" || true)
    if [ "$now" -ge $((before + 3)) ]; then restored=$(date +%s%N); break; fi
    kill -0 "$leader" 2>/dev/null || break
    sleep 0.002
done
bytes=$(grep "checkpoints:" "$work/log" | tail -n 1 | sed -n 's/.*the last \([0-9]*\) bytes.*/\1/p')
if [ -n "$restored" ]; then
    echo "recovery of 3 processes from kill -9 of a worker to every shard restored: $(((restored - killed) / 1000000)) ms (state of $keys keys, a checkpoint of about ${bytes:-?} bytes)"
else
    echo "recovery: the restarted processes did not report within 60 s"
    tail -n 5 "$work/cluster-log"
fi
wait "$leader" || true
leader=
"$verity" verify seq-window --input "$work/in.txt" --output "$work/out.txt" --dead-letter "$work/out.txt.dead-letter"
