#!/usr/bin/env bash
# The newcomer's demo: build verity, run market-spread on generated data on all
# cores, verify the output against the oracle, and print the throughput.
# Usage: scripts/demo.sh [RECORDS] [SEED]
set -euo pipefail
records=${1:-5000000}
seed=${2:-42}
cd "$(dirname "$0")/.."
cargo build --release --quiet
verity=target/release/verity
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== generating $records market-spread records (seed $seed)"
"$verity" generate market-spread --count "$records" --seed "$seed" --output "$work/input.txt"
echo "== running market-spread on all cores"
"$verity" run market-spread --input "$work/input.txt" --output "$work/output.txt"
echo "== verifying the output and the dead letters (the generator plants malformed lines) against the market-spread oracle"
"$verity" verify market-spread --input "$work/input.txt" --output "$work/output.txt" \
    --dead-letter "$work/output.txt.dead-letter"
