#!/usr/bin/env bash
# Overload (issue 12): measures what `verity run APP` takes from a file
# (its capacity), then streams the same input with `verity send --rate` at
# FACTOR times that into a TCP source. A run that cannot keep up must slow
# the sender down (TCP backpressure: the reader stops reading when the
# shards' chunk queues are full), keep its memory bounded, and lose
# nothing. Reports the sender's achieved rate against the one asked for,
# the run's peak RSS (from /usr/bin/time, Debian's `time` package) against
# the input's size and against the file run's, the run's backpressure time
# (scraped from --metrics-addr just before the input ends), and checks the
# output with `verity verify`.
# Usage: scripts/overload.sh [APP] [RECORDS] [WORKERS] [FACTOR]
#   APP: a one-input app (doubler, wordcount, seq-window); default seq-window
set -euo pipefail
app=${1:-seq-window}
records=${2:-5000000}
workers=${3:-2}
factor=${4:-2}
for n in "$records" "$workers" "$factor"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "overload.sh: RECORDS, WORKERS and FACTOR must be positive integers" >&2; exit 2; }
done
case "$app" in
    doubler | wordcount | seq-window) ;;
    *) echo "overload.sh: $app: use a one-input app (doubler, wordcount, seq-window)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet -p verity
verity=$target/release/verity
if [ ! -x /usr/bin/time ]; then
    echo "overload.sh: /usr/bin/time is missing; installing Debian's time package" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -q time >/dev/null; else sudo apt-get install -y -q time >/dev/null; fi
fi
work=$(mktemp -d)
run_pid=
cleanup() {
    [ -n "$run_pid" ] && kill "$run_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Malformed lines too: their dead letters must survive the overload as well.
"$verity" generate "$app" --count "$records" --seed 1 --output "$work/in.txt"
input_bytes=$(stat -c %s "$work/in.txt")

# 1. Capacity: the same run from a file, as fast as it goes.
/usr/bin/time -f %M -o "$work/file.rss" "$verity" run "$app" --input "$work/in.txt" \
    --output "$work/file.out" --workers "$workers" --no-pin 2>"$work/file.log"
wall_s=$(sed -n 's/.* in \([0-9.]*\) s (.*/\1/p' "$work/file.log" | tail -1)
[ -n "$wall_s" ] || { echo "overload.sh: no summary from the file run:" >&2; cat "$work/file.log" >&2; exit 1; }
capacity=$(awk -v n="$records" -v s="$wall_s" 'BEGIN { printf "%d", n / (s > 0 ? s : 1e-3) }')
rate=$((capacity * factor))

# 2. Overload: the same input over TCP at FACTOR x capacity.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/time -f %M -o "$work/tcp.rss" "$verity" run "$app" --input "tcp:127.0.0.1:$port" \
    --output "$work/tcp.out" --workers "$workers" --no-pin \
    --metrics-addr "127.0.0.1:$metrics_port" 2>"$work/tcp.log" &
run_pid=$!
for _ in $(seq 100); do
    grep -q "listening on" "$work/tcp.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "listening on" "$work/tcp.log" || { echo "overload.sh: the run does not listen:" >&2; cat "$work/tcp.log" >&2; exit 1; }
# The sender's last scrape of the run's backpressure, while it still runs.
(
    while kill -0 "$run_pid" 2>/dev/null; do
        curl -s --max-time 1 "127.0.0.1:$metrics_port/metrics" >"$work/scrape.next" 2>/dev/null \
            && mv "$work/scrape.next" "$work/scrape"
        sleep 0.5
    done
) &
scraper=$!
"$verity" send --to "127.0.0.1:$port" --input "$work/in.txt" --rate "$rate" 2>"$work/send.log"
wait "$run_pid"
run_pid=
wait "$scraper" 2>/dev/null || true
achieved=$(sed -n 's/.*(\([0-9]*\) lines\/s).*/\1/p' "$work/send.log" | tail -1)
dead_letter="$work/tcp.out.dead-letter"
verified=$("$verity" verify "$app" --input "$work/in.txt" --output "$work/tcp.out" \
    --dead-letter "$dead_letter" --input-name "tcp:127.0.0.1:$port" || true)
backpressure=$(grep -h '^verity_source_backpressure_seconds_total' "$work/scrape" 2>/dev/null | awk '{ s += $2 } END { printf "%.2f", s }')

file_rss_kb=$(tail -1 "$work/file.rss")
tcp_rss_kb=$(tail -1 "$work/tcp.rss")
echo "overload: $app, $records records ($input_bytes bytes), $workers workers"
echo "  capacity (file input):       $capacity records/s; peak RSS $((file_rss_kb / 1024)) MiB"
echo "  sender asked for (x$factor):     $rate lines/s; achieved ${achieved:-?} lines/s (slowed by backpressure when below)"
echo "  TCP run peak RSS:            $((tcp_rss_kb / 1024)) MiB = $(awk -v r="$tcp_rss_kb" -v b="$input_bytes" 'BEGIN { printf "%.2f", r * 1024 / b }') x the input's size"
echo "  reader backpressure:         ${backpressure:-?} s (verity_source_backpressure_seconds_total, last scrape)"
echo "  verify (output, dead letters):"
sed 's/^/    /' <<<"$verified"
# Both reports must say OK (verify exits 1 otherwise, caught above).
[ "$(grep -c '^OK' <<<"$verified")" -eq 2 ] || exit 1
