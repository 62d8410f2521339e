#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every crate's tests.
# This is what CI runs (.ci/run) and what the README tells a newcomer to run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
