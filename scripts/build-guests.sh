#!/usr/bin/env bash
# Builds the example and test handlers for wasm32-wasip2 and copies the components to
# guest-examples/dist/, where the tests and the docs expect them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

ensure_wasm_target
step "Building the Rust guest components (wasm32-wasip2)"
cd "$root/guest-examples"
cargo build --quiet --locked --release --target wasm32-wasip2
mkdir -p dist
for wasm in target/wasm32-wasip2/release/*.wasm; do
    name=$(basename "$wasm" .wasm)
    cp "$wasm" "dist/${name//_/-}.wasm"
done
step "Guests ready in guest-examples/dist/: $(cd dist && ls *.wasm | tr '\n' ' ')"
