#!/usr/bin/env bash
# The simulator with the Kafka sink's transaction protocol over a simulated
# broker (`verity sim --sink txn-log`): 200 seeds per app with all faults,
# crashes included, then the planted sink bug a seed must catch.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
verity=target/release/verity
seeds=${SEEDS:-0..200}
for app in doubler wordcount market-spread seq-window; do
    "$verity" sim --sink txn-log --app "$app" --seeds "$seeds"
done
if "$verity" sim --sink txn-log --app seq-window --seed 6 --faults crash \
    --plant-bug kafka-commit-at-barrier >/dev/null 2>&1; then
    echo "planted kafka-commit-at-barrier was not caught at seed 6" >&2
    exit 1
fi
echo "planted kafka-commit-at-barrier caught at seed 6"
