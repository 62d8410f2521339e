#!/usr/bin/env bash
# The short benchmark CI runs (well under 2 minutes of runs on 2 cores, after
# the release build): market-spread throughput, then its open-loop latency at
# half the throughput just measured, with the histogram summary; then the
# ratio table against the naive single-thread loop. Reports land in
# target/bench/ (JSON, .hgrm). Figures are from this machine in this run
# only; nothing here fails on a timing.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${BENCH_EVENTS:-2000000}
cargo build --release --quiet -p verity -p verity-bench
verity=target/release/verity
out=target/bench
mkdir -p "$out"
json_field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" "$2"; }

echo "== throughput"
"$verity" bench market-spread --events "$events" --workers 2 --json "$out/market-spread-throughput.json"
rate=$(awk -v r="$(json_field events_per_s "$out/market-spread-throughput.json")" 'BEGIN { printf "%d", r / 2 }')

echo "== latency at half of that ($rate events/s), open loop"
"$verity" bench market-spread --events "$((events / 2))" --workers 2 --rate "$rate" \
    --json "$out/market-spread-latency.json" --hgrm "$out/market-spread-latency.hgrm"
echo "percentile distribution (ms), from $out/market-spread-latency.hgrm:"
awk 'NR <= 2 || /^#/ { print; next } { n++ } n % 8 == 1 { print }' "$out/market-spread-latency.hgrm"

echo "== against the naive single-thread loop (ratios of medians, taken in turns)"
target/release/verity-bench --records "$events" --repeat 3 | tee "$out/ratios.txt"

echo "== ratios against bench/reference-ratios.txt (a warning below 80% of a reference)"
# reference lines: `app | runner | ratio`; ratio rows: `app verity workers=N seconds records/s ratio`.
awk '
    NR == FNR {
        if ($0 !~ /^#/ && split($0, f, / [|] /) == 3) reference[f[1] "|" f[2]] = f[3]
        next
    }
    $2 == "verity" && (($1 "|" $2 " " $3) in reference) {
        want = reference[$1 "|" $2 " " $3]
        status = ($NF < 0.8 * want) ? "WARNING: regressed by more than 20%" : "ok"
        printf "%-14s %-18s ratio %5.2f  reference %5.2f  %s\n", $1, $2 " " $3, $NF, want, status
    }' bench/reference-ratios.txt "$out/ratios.txt"
