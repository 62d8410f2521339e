#!/usr/bin/env bash
# Long simulation soak: N seeds per reference app (all faults, P=3, W=2),
# starting at a random base (or $SEED_BASE), with a summary written to
# sim-soak-<time>.txt. Failing seeds are listed with their replay commands.
# Usage: scripts/sim-soak.sh N [APP ...]
set -uo pipefail
seeds=${1:?usage: scripts/sim-soak.sh N [APP ...]}
shift
apps=("$@")
[ ${#apps[@]} -gt 0 ] || apps=(doubler wordcount market-spread seq-window)
cd "$(dirname "$0")/.."
cargo build --release --quiet -p verity || exit 1
base=${SEED_BASE:-$(( (RANDOM << 15 | RANDOM) * 1000 ))}
summary="sim-soak-$(date +%Y%m%d-%H%M%S).txt"
status=0
echo "# simulation soak: $seeds seeds per app from seed $base, all faults, P=3 W=2" | tee "$summary"
for app in "${apps[@]}"; do
    if ! target/release/verity sim --app "$app" --seeds "$base..$((base + seeds))" 2>&1 | tee -a "$summary"; then
        status=1
    fi
done
echo "summary written to $summary"
exit $status
