#!/usr/bin/env bash
# A local Kafka-protocol broker for tests and the README: tansu 0.6 on
# 127.0.0.1, memory storage (its data dies with it).
#
#   scripts/kafka-broker.sh start    install tansu if missing, start it, wait
#                                    until it answers; prints its address
#   scripts/kafka-broker.sh stop     stop the broker this script started
#   scripts/kafka-broker.sh status   its address, or exit 1 if not running
#
# The address (127.0.0.1:PORT) is written to $dir/address; the tests read
# it from VERITY_KAFKA (`export VERITY_KAFKA=$(scripts/kafka-broker.sh start)`).
# KAFKA_PORT picks the port (default: 9092 if free, else any free one).
# tansu refuses transactions (EndTxnRequest); the transactional sink is
# tested against librdkafka's in-process mock cluster instead.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${VERITY_KAFKA_DIR:-$PWD/target/kafka-broker}
tansu_version=0.6.0
answer_wait_s=30

running_pid() {
    [ -f "$dir/pid" ] || return 1
    local pid
    pid=$(cat "$dir/pid")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

port_free() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

answers() {
    python3 - "$1" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

install_tansu() {
    if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$tansu_version"; then
        return
    fi
    echo "kafka-broker: installing tansu $tansu_version (cargo install, once per machine; takes minutes)..." >&2
    nice -n 10 cargo install tansu --version "$tansu_version" --features dynostore --quiet >&2
}

start() {
    if pid=$(running_pid); then
        cat "$dir/address"
        return
    fi
    install_tansu
    mkdir -p "$dir"
    local port=${KAFKA_PORT:-}
    if [ -z "$port" ]; then
        port=9092
        port_free "$port" || port=$(free_port)
    fi
    local url="tcp://127.0.0.1:$port"
    # Its own variables only: tansu reads settings from the environment.
    env -u CLUSTER_ID -u STORAGE_ENGINE -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        tansu broker --listener-url "$url" --advertised-listener-url "$url" --storage-engine memory://tansu/ \
        >"$dir/broker.log" 2>&1 &
    echo $! >"$dir/pid"
    local waited=0
    until answers "$port"; do
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "kafka-broker: tansu exited at start; its log:" >&2
            tail -n 20 "$dir/broker.log" >&2
            exit 1
        fi
        if [ "$waited" -ge $((answer_wait_s * 10)) ]; then
            echo "kafka-broker: tansu did not answer on 127.0.0.1:$port within ${answer_wait_s}s" >&2
            stop
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "127.0.0.1:$port" >"$dir/address"
    cat "$dir/address"
}

stop() {
    if pid=$(running_pid); then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid" "$dir/address"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if running_pid >/dev/null; then cat "$dir/address"; else
            echo "kafka-broker: not running" >&2
            exit 1
        fi
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
