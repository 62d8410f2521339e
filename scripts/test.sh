#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every crate's tests.
# This is what CI runs (.ci/run) and what the README tells a newcomer to run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace

# Same seed, same run: the simulator's trace hash must repeat exactly.
for app in market-spread seq-window; do
    for seed in 1 17 99; do
        first=$(target/debug/verity sim --app "$app" --seed "$seed" --trace | tail -n 1)
        second=$(target/debug/verity sim --app "$app" --seed "$seed" --trace | tail -n 1)
        if [ "$first" != "$second" ]; then
            echo "simulator not deterministic: $app seed $seed: $first vs $second" >&2
            exit 1
        fi
    done
done
echo "simulator determinism: trace hashes repeat for 6 seeds"
