#!/usr/bin/env bash
# The cost of exactly-once: APP on RECORDS generated records into a file,
# without checkpoints and with them (every 1000 ms, the default, and every
# 100 ms), the runners taking turns, median of REPEAT each; then the size of
# one checkpoint and how long a recovery takes from its start until the
# restored shards process again.
# Usage: bench/checkpoints.sh [APP] [RECORDS] [REPEAT]
set -euo pipefail
app=${1:-seq-window}
records=${2:-20000000}
repeat=${3:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p verity
verity=$PWD/target/release/verity
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$verity" generate "$app" --count "$records" --output "$work/in.txt"

# Prints the wall seconds of one run, from its summary line.
wall() {
    rm -rf "$work/state"
    "$verity" run "$app" --input "$work/in.txt" --output "$work/out.txt" --workers 2 "$@" 2>&1 >/dev/null |
        sed -n 's/.* in \([0-9.]*\) s (.*/\1/p'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

off=() on1000=() on100=()
for _ in $(seq "$repeat"); do
    off+=("$(wall)")
    on1000+=("$(wall --state-dir "$work/state")")
    on100+=("$(wall --state-dir "$work/state" --checkpoint-interval-ms 100)")
done
off_s=$(printf '%s\n' "${off[@]}" | median)
echo "# $app, $records generated records, file sink, 2 workers, median of $repeat interleaved runs"
printf '%-34s %9s %14s %8s\n' runner seconds records/s ratio
row() { awk -v name="$1" -v s="$2" -v n="$records" -v base="$off_s" \
    'BEGIN { printf "%-34s %9.3f %14.0f %8.2f\n", name, s, n / s, base / s }'; }
row "no checkpoints" "$off_s"
row "checkpoints every 1000 ms" "$(printf '%s\n' "${on1000[@]}" | median)"
row "checkpoints every 100 ms" "$(printf '%s\n' "${on100[@]}" | median)"

# One checkpoint's size (the newest complete one of a finished run).
rm -rf "$work/state"
"$verity" run "$app" --input "$work/in.txt" --output "$work/out.txt" --workers 2 \
    --state-dir "$work/state" --checkpoint-interval-ms 100 2>/dev/null
newest=$(ls "$work/state"/*.manifest | sort | tail -n 1)
id=$(basename "$newest" .manifest)
bytes=$(cat "$work/state/$id"* | wc -c)
echo "checkpoint size: $bytes bytes ($(ls "$work/state/$id"* | wc -l) files)"

# Recovery: from the start of `--recover` to the log line that says the
# restored shards go on (reading and checking the checkpoint, restoring).
start=$(date +%s%N)
"$verity" run "$app" --input "$work/in.txt" --output "$work/out.txt" --workers 2 \
    --state-dir "$work/state" --recover 2>&1 >/dev/null | while read -r line; do
    case "$line" in
    *"continuing from checkpoint"*)
        echo "recovery until processing again: $((($(date +%s%N) - start) / 1000000)) ms"
        ;;
    esac
done
