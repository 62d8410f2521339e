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
    --json "$out/market-spread-latency.json" --hgrm "$out/market-spread-latency.hgrm" \
    --html "$out/market-spread-latency.html"
echo "percentile distribution (ms), from $out/market-spread-latency.hgrm:"
awk 'NR <= 2 || /^#/ { print; next } { n++ } n % 8 == 1 { print }' "$out/market-spread-latency.hgrm"

echo "== the HTML report in headless Chromium"
if ! command -v chromium >/dev/null 2>&1; then
    as_root=()
    [ "$(id -u)" -ne 0 ] && as_root=(sudo)
    echo "installing chromium from Debian's packages..."
    "${as_root[@]}" apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || echo "could not install chromium" >&2
fi
if command -v chromium >/dev/null 2>&1; then
    page="file://$PWD/$out/market-spread-latency.html"
    drawn=$(timeout 120 chromium --headless --no-sandbox --disable-gpu --dump-dom "$page" 2>/dev/null \
        | sed -n 's/.*<body data-plots="\([0-9]*\)".*/\1/p')
    timeout 120 chromium --headless --no-sandbox --disable-gpu --window-size=900,1400 \
        --screenshot="$out/market-spread-latency.png" "$page" >/dev/null 2>&1 || true
    if [ "${drawn:-0}" != 4 ]; then
        echo "the HTML report drew ${drawn:-no} plots of 4 in headless Chromium" >&2
        exit 1
    fi
    echo "headless Chromium drew all 4 plots of $out/market-spread-latency.html (screenshot: $out/market-spread-latency.png)"
elif [ "${CI:-}" = true ]; then
    echo "CI needs chromium to check the HTML report" >&2
    exit 1
else
    echo "chromium not installed: the HTML report was not rendered"
fi

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
