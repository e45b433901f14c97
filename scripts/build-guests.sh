#!/usr/bin/env bash
# Builds the example and test handlers for wasm32-wasip2 and copies the components to
# guest-examples/dist/, where the tests and the docs expect them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

ensure_wasm_target
step "Building the Rust guest components (wasm32-wasip2)"
cd "$root/guest-examples"
# Honour CARGO_TARGET_DIR (CI keeps one across runs); cargo keeps the two workspaces apart in it.
target_dir=${CARGO_TARGET_DIR:-$root/guest-examples/target}
cargo build --quiet --locked --release --target wasm32-wasip2 --target-dir "$target_dir"
mkdir -p dist
rm -f dist/*.wasm
for wasm in "$target_dir"/wasm32-wasip2/release/*.wasm; do
    name=$(basename "$wasm" .wasm)
    cp "$wasm" "dist/${name//_/-}.wasm"
done
step "Guests ready in guest-examples/dist/: $(cd dist && ls *.wasm | tr '\n' ' ')"
