#!/usr/bin/env bash
# Builds keyhole's image from the Dockerfile with podman (target runtime-prebuilt: the binary
# the test suite built, so no network is needed) and runs it as operators do — read-only root,
# every capability dropped, no-new-privileges, a tmpfs for /var/lib/keyhole — against the tansu
# broker and a data owner on the host: a reference event in, the handler's reply out, its audit
# record on the audit topic (as the shipped configuration does), a healthy health check, its spans
# at an OTLP collector named by OTEL_EXPORTER_OTLP_ENDPOINT, exit 0 on SIGTERM. Then removes the
# container and the image.
#
# Called by scripts/test.sh after the tests (it uses their broker and binary); on its own:
#   KEYHOLE_TEST_BROKER=127.0.0.1:9092 scripts/container-smoke.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
binary=${KEYHOLE_BIN:-$target_dir/debug/keyhole}
broker=${KEYHOLE_TEST_BROKER:?start the tansu broker first (scripts/test.sh does)}

ensure_podman
ensure_base_image

step "Building the image (podman, --target runtime-prebuilt)"
mkdir -p target/container
# Debug symbols are most of a debug binary's size; the image needs none of them.
strip -o target/container/keyhole "$binary"
tag="localhost/keyhole-smoke:$$"
# Docker format keeps the HEALTHCHECK (OCI images have no such field).
image=$(podman build -q --pull=never --format docker --target runtime-prebuilt -t "$tag" .)
work=$(mktemp -d)
container=""
cleanup() {
    [ -n "$container" ] && podman rm -f "$container" >/dev/null 2>&1 || true
    podman rmi -f "$image" >/dev/null 2>&1 || true
    [ -n "${owner_pid:-}" ] && kill "$owner_pid" 2>/dev/null || true
    [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step "Starting a data owner and the topics on the host"
owner_token="smoke-owner-token-$$"
# The reference data owner with a table of its own: customer 7 consents to this purpose, and
# the handler version the container runs is approved.
cat > "$work/owner-table.json" <<'JSON'
{"customers": {"7": {"name": "Ada 7", "birthdate": "1990-05-01", "country": "DE"}},
 "consent": [["7", "acme", "container smoke test"]],
 "fields": {"container smoke test": ["name", "birthdate", "country"]}}
JSON
echo_version="sha256:$(sha256sum "$root/guest-examples/dist/echo.wasm" | cut -d' ' -f1)"
python3 examples/data-owner/owner.py --token "$owner_token" --port 0 --table "$work/owner-table.json" \
    --approve "acme/echo=$echo_version" > "$work/owner.port" 2> "$work/owner.log" &
owner_pid=$!
for _ in $(seq 1 50); do [ -s "$work/owner.port" ] && break; sleep 0.1; done
owner_port=$(head -1 "$work/owner.port")
python3 scripts/otlp_sink.py > "$work/otlp.log" &
sink_pid=$!
for _ in $(seq 1 50); do [ -s "$work/otlp.log" ] && break; sleep 0.1; done
sink_port=$(head -1 "$work/otlp.log")
suffix="$$-$RANDOM"
refs="smoke-refs-$suffix" replies="smoke-replies-$suffix" audit="smoke-audit-$suffix"
for topic in "$refs" "$replies" "$audit" "smoke-$suffix.acme.echo.dlq"; do
    "$TANSU_BIN" topic create "$topic" --broker "tcp://$broker" --partitions 1 >/dev/null
done
admin_port=$(free_port)
monitoring_port=$(free_port)
cat > "$work/keyhole.toml" <<TOML
[kafka]
bootstrap_servers = "$broker"
group_id = "smoke-$suffix"
properties = { "fetch.wait.max.ms" = "10" }

[audit]
sink = "kafka"
topic = "$audit"

[receipts]
path = "/var/lib/keyhole/receipts.jsonl"

[shutdown]
drain_timeout_ms = 5000

[admin]
listen = "127.0.0.1:$admin_port"
monitoring_listen = "127.0.0.1:$monitoring_port"
operator_token = { env = "KEYHOLE_OPERATOR_TOKEN" }
state_dir = "/var/lib/keyhole/state"

[[data_source]]
name = "owner"
base_url = "http://127.0.0.1:$owner_port/api/"
identity = { bearer_token = { file = "/run/secrets/owner-token" } }

[[handler]]
name = "echo"
tenant = "acme"
component = "/etc/keyhole/echo.wasm"
topics = ["$refs"]
data_source = "owner"
purpose = "container smoke test"
reply_topic = "$replies"
TOML
printf '%s\n' "$owner_token" > "$work/owner-token"
chmod 0644 "$work/keyhole.toml" "$work/owner-token"

step "Running it hardened: --read-only --cap-drop=ALL --security-opt no-new-privileges"
container=$(podman run -d --network host \
    --read-only --cap-drop=ALL --security-opt no-new-privileges \
    --tmpfs /var/lib/keyhole:U \
    -e KEYHOLE_OPERATOR_TOKEN="smoke-operator-token-$$" \
    -e OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" -e OTEL_SERVICE_NAME=keyhole-smoke \
    -v "$work/keyhole.toml:/etc/keyhole/keyhole.toml:ro" \
    -v "$work/owner-token:/run/secrets/owner-token:ro" \
    -v "$root/guest-examples/dist/echo.wasm:/etc/keyhole/echo.wasm:ro" \
    "$image" 2>"$work/podman-run.err") || { cat "$work/podman-run.err" >&2; exit 1; }
# (Without systemd, podman says it cannot schedule the health check itself: it is run below.)
healthy=""
for _ in $(seq 1 60); do
    if podman healthcheck run "$container" >/dev/null 2>&1; then healthy=yes; break; fi
    if [ "$(podman inspect -f '{{.State.Running}}' "$container")" != "true" ]; then break; fi
    sleep 1
done
if [ -z "$healthy" ]; then
    echo "the container never became healthy; its log:" >&2
    podman logs "$container" >&2 || true
    exit 1
fi

step "A reference event in, the handler's reply out"
reply=$("$binary" request --bootstrap-servers "$broker" --topic "$refs" --dataref customers/7 \
    --reply-topic "$replies" --timeout 60s --json)
echo "$reply"
if ! grep -q 'Ada 7' <<<"$reply"; then
    echo "the reply does not carry what the owner released; the container's log:" >&2
    podman logs "$container" >&2 || true
    exit 1
fi

step "The event's audit record is on the audit topic"
audited=""
for _ in $(seq 1 20); do
    if "$TANSU_BIN" cat consume "$audit" --broker "tcp://$broker" --max-wait-time-ms 500 2>/dev/null \
        | grep -q '"decision":"delivered"'; then
        audited=yes
        break
    fi
    sleep 0.5
done
if [ -z "$audited" ]; then
    echo "no audit record on $audit; the container's log:" >&2
    podman logs "$container" >&2 || true
    exit 1
fi

step "SIGTERM: keyhole (PID 1) drains and exits 0"
podman kill --signal TERM "$container" >/dev/null
status=$(podman wait "$container")
if [ "$status" != "0" ]; then
    echo "exit status $status after SIGTERM; the container's log:" >&2
    podman logs "$container" >&2 || true
    exit 1
fi
step "Its spans reached the collector OTEL_EXPORTER_OTLP_ENDPOINT names (flushed at SIGTERM)"
if ! tail -n +2 "$work/otlp.log" | grep -q '^application/x-protobuf [1-9]'; then
    echo "no span export reached the collector; the container's log:" >&2
    podman logs "$container" >&2 || true
    exit 1
fi
tail -n +2 "$work/otlp.log" | sed 's/^/    export: /'
step "Container smoke test passed"
