#!/usr/bin/env bash
# A three-replica keyhole cluster on this machine from one command (docs/deploy.md): tansu, a
# sample data owner and three `keyhole run` replicas sharing a registry in Kafka; the echo handler
# deployed through replica 1; events until every replica has handled its share; the same
# registry on every admin API. Runs until Ctrl-C; `--once` stops after showing it.
#
#   scripts/local-cluster.sh [--once] [--replicas N] [--dir DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
cd "$root"
ensure_tansu
if [ ! -f guest-examples/dist/echo.wasm ]; then
    scripts/build-guests.sh
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
if [ -z "${KEYHOLE_BIN:-}" ]; then
    step "Building keyhole"
    cargo build --locked --quiet
fi
exec python3 scripts/local_cluster.py --keyhole "${KEYHOLE_BIN:-$target_dir/debug/keyhole}" --tansu "$TANSU_BIN" \
    --handler guest-examples/dist/echo.wasm "$@"
