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

# Latency: `verity bench market-spread` (one stream) paced at half its
# measured maximum throughput, audit off and on (fsync every 10 ms), taking
# turns; p99 of each run, median of REPEAT.
lat_events=${LATENCY_EVENTS:-1000000}
json_field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" "$2"; }
"$verity" bench market-spread --events "$lat_events" --workers 2 --json "$work/max.json" >/dev/null
max_rate=$(json_field events_per_s "$work/max.json")
rate=$(awk -v r="$max_rate" 'BEGIN { printf "%d", r / 2 }')
p99_off=() p99_on=()
for _ in $(seq "$repeat"); do
    "$verity" bench market-spread --events "$lat_events" --workers 2 --rate "$rate" --json "$work/off.json" >/dev/null
    p99_off+=("$(json_field p99_us "$work/off.json")")
    rm -rf "$work/audit"
    "$verity" bench market-spread --events "$lat_events" --workers 2 --rate "$rate" --json "$work/on.json" \
        --audit "$work/audit" >/dev/null 2>&1
    p99_on+=("$(json_field p99_us "$work/on.json")")
done
off_p99=$(printf '%s\n' "${p99_off[@]}" | median)
on_p99=$(printf '%s\n' "${p99_on[@]}" | median)
echo "# latency: market-spread (one stream), $lat_events events at $rate/s (half of the measured $max_rate/s), 2 workers, median p99 of $repeat"
awk -v off="$off_p99" -v on="$on_p99" \
    'BEGIN { printf "p99 audit off %d us, on %d us: %+.0f%%\n", off, on, 100 * (on - off) / off }'
