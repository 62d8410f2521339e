#!/usr/bin/env bash
# Nexmark q3, q5 and q8 in the simulator: SEEDS seeds per query (200 unless
# set), each with all faults (reordering, drops, duplicates, partitions,
# crashes and recoveries), checked by the reference models.
set -euo pipefail
cd "$(dirname "$0")/.."
NEXMARK_SIM_SEEDS=${SEEDS:-200} cargo test -p verity-verify --test sim_nexmark -- --ignored --nocapture
