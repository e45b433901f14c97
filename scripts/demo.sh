#!/usr/bin/env bash
# keyhole's main job with nothing else running: builds the example handler, then runs the
# reference pipeline on an in-process Kafka cluster and sample data owner and prints what the
# handler received for each event, or why it never did.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

"$root/scripts/build-guests.sh" --rust-only
cd "$root"
step "Building keyhole"
cargo build --quiet --locked -p keyhole
exec "${CARGO_TARGET_DIR:-$root/target}/debug/keyhole" demo "$@"
