#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the wasm32-wasip2
# target, the tansu broker; cached under ~/.cache/keyhole), builds the guest components, starts
# a broker on a free loopback port, then runs every test against it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

# The benchmark's driver is not run here (docs/performance.md), but it must stay valid Python.
python3 -m py_compile "$root/scripts/bench.py"
"$root/scripts/build-guests.sh"
ensure_tansu
step "Building keyhole and its tests"
cd "$root"
cargo test --workspace --locked --no-run
start_tansu
trap 'kill "$TANSU_PID" 2>/dev/null || true' EXIT
step "Running the tests (broker $KEYHOLE_TEST_BROKER)"
cargo test --workspace --locked "$@"
