#!/usr/bin/env bash
# The cost of the audit log: market-spread on RECORDS generated records (two
# streams, quotes and orders, so every decision is on the interleaving the
# log records), without the audit log and with it (fsync every 10 ms, the
# default; and every batch), the runners taking turns, median of REPEAT
# each; then the audit bytes per input record and whether a replay of the
# audited run is byte-identical.
# Usage: bench/audit.sh [RECORDS] [REPEAT]
set -euo pipefail
records=${1:-5000000}
repeat=${2:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p verity
verity=${VERITY_BIN:-$PWD/target/release/verity}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$verity" generate market-spread --count "$records" --seed 7 \
    --quotes-output "$work/q.txt" --orders-output "$work/o.txt"

# Prints the wall seconds of one run, from its summary line.
wall() {
    rm -rf "$work/audit"
    "$verity" run market-spread --quotes "$work/q.txt" --orders "$work/o.txt" --output "$work/out.txt" \
        --workers 2 "$@" 2>&1 >/dev/null | sed -n 's/.* in \([0-9.]*\) s (.*/\1/p'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

off=() on10=() every=()
for _ in $(seq "$repeat"); do
    off+=("$(wall)")
    on10+=("$(wall --audit "$work/audit")")
    every+=("$(wall --audit "$work/audit" --audit-fsync every-batch)")
done
off_s=$(printf '%s\n' "${off[@]}" | median)
echo "# market-spread (two streams), $records generated records, file sink, 2 workers, median of $repeat interleaved runs"
printf '%-34s %9s %14s %8s\n' runner seconds records/s ratio
row() { awk -v name="$1" -v s="$2" -v n="$records" -v base="$off_s" \
    'BEGIN { printf "%-34s %9.3f %14.0f %8.2f\n", name, s, n / s, base / s }'; }
row "no audit log" "$off_s"
row "audit, fsync every 10 ms" "$(printf '%s\n' "${on10[@]}" | median)"
row "audit, fsync every batch" "$(printf '%s\n' "${every[@]}" | median)"

rm -rf "$work/audit"
"$verity" run market-spread --quotes "$work/q.txt" --orders "$work/o.txt" --output "$work/out.txt" \
    --workers 2 --audit "$work/audit" 2>/dev/null
bytes=$(cat "$work/audit"/*.seg | wc -c)
awk -v b="$bytes" -v n="$records" 'BEGIN { printf "audit log: %d bytes, %.1f bytes per input record\n", b, b / n }'
"$verity" audit summary "$work/audit" | sed -n '/records by kind/,/processes/p'
"$verity" audit replay "$work/audit" --output "$work/replayed.txt" 2>&1
cmp -s "$work/out.txt" "$work/replayed.txt" && echo "replayed output: byte-identical to the run's"
