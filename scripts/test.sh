#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the wasm32-wasip2
# target, the tansu broker, noida-db, confluent-kafka for the data-owner examples, curl, stunnel
# for the TLS tests, podman and a local base image, hadolint, kubernetes-validate and promtool
# (Debian's prometheus); cached under ~/.cache/keyhole),
# builds the guest components, starts a broker on a free loopback port, runs every test against
# it, then the container smoke test and the local cluster.
#
# With arguments, it runs only the cargo tests they select (`scripts/test.sh --test it --
# crashes::`), not the deployment checks.
#
# It fails if anything it started is still running when it ends: it runs under
# scripts/leftovers.py, which lists and stops such processes, orphans included.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${KEYHOLE_LEFTOVERS_CHECKED:-}" ]; then
    export KEYHOLE_LEFTOVERS_CHECKED=1
    exec python3 "$root/scripts/leftovers.py" "$root/scripts/test.sh" "$@"
fi
. "$root/scripts/lib.sh"

# The benchmark's driver is not run here (docs/performance.md), but it must stay valid Python.
python3 -m py_compile "$root/scripts/bench.py"
"$root/scripts/build-guests.sh"
ensure_tansu
ensure_noida
ensure_python_kafka
ensure_curl
ensure_promtool
ensure_stunnel
step "Building keyhole and its tests"
cd "$root"
cargo test --workspace --locked --no-run
trap stop_tansu EXIT
start_tansu
step "Running the tests (broker $KEYHOLE_TEST_BROKER)"
cargo test --workspace --locked "$@"
if [ $# -gt 0 ]; then
    exit 0
fi
# What operators deploy: the Dockerfile and manifests linted, the image built and run hardened
# against the broker above, and the one-command local cluster of docs/deploy.md.
"$root/scripts/deploy-checks.sh"
"$root/scripts/container-smoke.sh"
KEYHOLE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/keyhole" "$root/scripts/local-cluster.sh" --once
