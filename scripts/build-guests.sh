#!/usr/bin/env bash
# Builds the example and test handlers and puts the components in guest-examples/dist/, where
# the tests and the docs expect them: the Rust ones (wasm32-wasip2), then the Python and
# JavaScript echo handlers. `--rust-only` skips the last two.
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
for wasm in "$target_dir"/wasm32-wasip2/release/*.wasm; do
    name=$(basename "$wasm" .wasm)
    cp "$wasm" "dist/${name//_/-}.wasm"
done

if [ "${1:-}" = "--rust-only" ]; then
    step "Guests ready in guest-examples/dist/: $(cd dist && ls *.wasm | tr '\n' ' ')"
    exit 0
fi

# Python: componentize-py from PyPI, in a virtualenv under the cache. --stub-wasi replaces the
# interpreter's filesystem and socket imports (which keyhole refuses) with trapping stubs.
ensure_componentize_py
# Rebuilt only when its source or the contract changed (it takes about 20 s).
if [ ! dist/echo-py.wasm -nt python/echo/app.py ] || [ ! dist/echo-py.wasm -nt "$root/wit/handler.wit" ]; then
    step "Building the Python echo handler (componentize-py $COMPONENTIZE_PY_VERSION)"
    "$PY_VENV/bin/componentize-py" -d "$root/wit" -w handler componentize app \
        -p "$root/guest-examples/python/echo" --stub-wasi -o dist/echo-py.wasm >/dev/null
fi

# JavaScript: componentize-js (StarlingMonkey) from npm, under the cache. All optional WASI
# features are disabled, so the component imports only keyhole's contract.
ensure_componentize_js
if [ ! dist/echo-js.wasm -nt js/echo/echo.js ] || [ ! dist/echo-js.wasm -nt "$root/wit/handler.wit" ]; then
    step "Building the JavaScript echo handler (componentize-js $COMPONENTIZE_JS_VERSION)"
    "$NODE_TOOLS/node_modules/.bin/componentize-js" --wit "$root/wit" --world-name handler \
        --disable stdio random clocks http fetch-event -o dist/echo-js.wasm "$root/guest-examples/js/echo/echo.js" >/dev/null
fi

step "Guests ready in guest-examples/dist/: $(cd dist && ls *.wasm | tr '\n' ' ')"
