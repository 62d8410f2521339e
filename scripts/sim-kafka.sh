#!/usr/bin/env bash
# The simulator with the Kafka sink's transaction protocol over a simulated
# broker: process 0's sink alone (`verity sim --sink txn-log`), then every
# process's own (`--sink txn-log-per-process`, P=3): 200 seeds per app each
# with all faults, crashes included, then the planted bugs a seed must catch.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
verity=target/release/verity
seeds=${SEEDS:-0..200}
for sink in txn-log txn-log-per-process; do
    for app in doubler wordcount market-spread seq-window; do
        "$verity" sim --sink "$sink" --processes 3 --app "$app" --seeds "$seeds"
    done
done
caught() { # SINK BUG SEED
    if "$verity" sim --sink "$1" --processes 3 --app seq-window --seed "$3" --faults crash \
        --plant-bug "$2" >/dev/null 2>&1; then
        echo "planted $2 was not caught at seed $3" >&2
        exit 1
    fi
    echo "planted $2 caught at seed $3"
}
caught txn-log kafka-commit-at-barrier 6
caught txn-log-per-process member-commit-before-manifest 6
caught txn-log-per-process complete-without-a-member-mark 0
