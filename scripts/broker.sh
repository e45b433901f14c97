#!/usr/bin/env bash
# Runs a local Kafka-protocol broker (tansu, in-memory) for trying keyhole: installs it once
# (cached under ~/.cache/keyhole), creates the given topics, and stays in the foreground.
#   scripts/broker.sh [PORT] [TOPIC...]      e.g. scripts/broker.sh 9092 customer-references
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

port=${1:-9092}
shift || true
ensure_tansu
step "tansu listening on 127.0.0.1:$port (Ctrl-C stops it; storage is in memory)"
"$TANSU_BIN" broker --cluster-id keyhole-local --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
for topic in "$@"; do
    "$TANSU_BIN" topic create "$topic" --partitions 4 --broker "tcp://127.0.0.1:$port" >/dev/null
    step "Created topic $topic (4 partitions)"
done
wait $broker
