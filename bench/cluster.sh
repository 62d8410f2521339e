#!/usr/bin/env bash
# market-spread as a 2-process cluster (P=2, W=1) against one process with two
# workers (W=2), same generated input, null sink, measured in one run.
# Usage: bench/cluster.sh [RECORDS] [REPEAT]
set -euo pipefail
records=${1:-10000000}
repeat=${2:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p verity
verity=target/release/verity

# Prints the wall seconds of one run, from its summary line.
wall() {
    "$verity" run market-spread --generate "$records" --seed 42 --output null "$@" 2>&1 >/dev/null |
        sed -n 's/.* in \([0-9.]*\) s (.*/\1/p'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# The two runners take turns, so a noisy spell on a shared machine hits both.
local_runs=()
cluster_runs=()
for _ in $(seq "$repeat"); do
    local_runs+=("$(wall --workers 2)")
    cluster_runs+=("$(wall --processes 2 --workers 1)")
done
local_s=$(printf '%s\n' "${local_runs[@]}" | median)
cluster_s=$(printf '%s\n' "${cluster_runs[@]}" | median)
echo "# market-spread, $records generated records, null sink, median of $repeat interleaved runs"
printf '%-28s %10s %14s %8s\n' runner seconds records/s ratio
row() { awk -v name="$1" -v s="$2" -v n="$records" -v base="$local_s" \
    'BEGIN { printf "%-28s %10.3f %14.0f %8.2f\n", name, s, n / s, base / s }'; }
row "1 process, W=2" "$local_s"
row "2 processes, W=1 each" "$cluster_s"
