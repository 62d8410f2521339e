#!/usr/bin/env bash
# Real-process fault injection on one machine: a 3-process cluster on
# loopback, fed by `verity send` and drained by `verity receive`, with
# `verity proxy` cutting, delaying and corrupting the connections into
# processes 0 and 1, and worker processes paused (SIGSTOP/SIGCONT) at seeded
# times. The output is then checked against the oracle.
# Usage: scripts/chaos.sh [SEED] [RECORDS] [APP]
#        scripts/chaos.sh --kill [APP] [RECORDS] [KILLS] [SEED] [--no-kill-all]
# --kill: the kill -9 soak of a checkpointed 3-process cluster instead
# (scripts/cluster-crash-recover.sh): random workers killed KILLS times, then
# every process at once, the newest checkpoint corrupted, --recover, verify.
set -euo pipefail
if [ "${1:-}" = "--kill" ]; then
    shift
    exec "$(dirname "$0")/cluster-crash-recover.sh" "$@"
fi
seed=${1:-1}
records=${2:-200000}
app=${3:-seq-window}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p verity
verity=$PWD/target/release/verity
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
RANDOM=$seed
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
p0=$(port); p1=$(port); p2=$(port); proxy0=$(port); proxy1=$(port); source_port=$(port); sink_port=$(port)
export VERITY_CLUSTER_SECRET="chaos-secret-$seed-$(date +%s%N)"
cat > "$work/cluster.toml" <<TOML
cluster_id = "chaos-$seed"

[[process]]
address = "127.0.0.1:$proxy0"
listen = "127.0.0.1:$p0"
workers = 1

[[process]]
address = "127.0.0.1:$proxy1"
listen = "127.0.0.1:$p1"
workers = 1

[[process]]
address = "127.0.0.1:$p2"
workers = 1
TOML

echo "== chaos seed $seed: $records $app records, 3 processes, proxies on the links into processes 0 and 1"
"$verity" generate "$app" --count "$records" --seed "$seed" --output "$work/input.txt"
proxy_faults=(--seed "$seed" --drop-conn-every-ms 400 --delay-ms 1 --corrupt-rate 0.002)
"$verity" proxy --listen "127.0.0.1:$proxy0" --to "127.0.0.1:$p0" "${proxy_faults[@]}" 2>"$work/proxy0.log" & pids+=($!)
"$verity" proxy --listen "127.0.0.1:$proxy1" --to "127.0.0.1:$p1" "${proxy_faults[@]}" 2>"$work/proxy1.log" & pids+=($!)
"$verity" receive --listen "127.0.0.1:$sink_port" --output "$work/output.txt" --expect "$(wc -l < "$work/input.txt")" \
    --timeout-s 60 & receiver=$!
"$verity" worker --cluster "$work/cluster.toml" --id 1 --no-pin --peer-timeout-ms 1000 & worker1=$!; pids+=($worker1)
"$verity" worker --cluster "$work/cluster.toml" --id 2 --no-pin --peer-timeout-ms 1000 & worker2=$!; pids+=($worker2)
sleep 0.3
"$verity" run "$app" --cluster "$work/cluster.toml" --no-pin --peer-timeout-ms 1000 --batch-max 64 \
    --input "tcp:127.0.0.1:$source_port" --output "tcp:127.0.0.1:$sink_port" & leader=$!; pids+=($leader)
"$verity" send --to "127.0.0.1:$source_port" --input "$work/input.txt" --rate $((records / 4)) & sender=$!

# Pause workers at seeded times while the input streams (about 4 s).
for _ in 1 2 3; do
    sleep "0.$((RANDOM % 9 + 1))"
    victim=$([ $((RANDOM % 2)) -eq 0 ] && echo "$worker1" || echo "$worker2")
    echo "== pausing worker pid $victim for 0.5 s"
    kill -STOP "$victim" 2>/dev/null || true
    sleep 0.5
    kill -CONT "$victim" 2>/dev/null || true
done

wait "$sender"
wait "$leader"
wait "$receiver"
echo "== proxy faults: $(grep -c cut "$work/proxy0.log" "$work/proxy1.log" | tr '\n' ' ')"
echo "== verifying"
"$verity" verify "$app" --input "$work/input.txt" --output "$work/output.txt"
