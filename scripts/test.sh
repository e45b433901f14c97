#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (cached under
# ~/.cache/keyhole), builds the guest components, then runs every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

"$root/scripts/build-guests.sh"
step "Running the tests"
cd "$root"
cargo test --workspace --locked "$@"
