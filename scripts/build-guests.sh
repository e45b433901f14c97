#!/usr/bin/env bash
# Builds the example and test handlers and puts the components in guest-examples/dist/, where
# the tests and the docs expect them: the Rust ones (wasm32-wasip2), then the Python, JavaScript
# and C echo handlers. `--rust-only` skips the last three.
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

# C: wit-bindgen's C generator, Debian's clang for wasm32-wasi (a reactor: no main), and
# wasm-tools, which makes the component with the WASI preview 1 adapter.
ensure_c_toolchain
c_sources=("$root/guest-examples/c/echo/echo.c" "$root/guest-examples/c/echo/json.c" "$root/guest-examples/c/echo/json.h")
c_stale=""
for source in "${c_sources[@]}" "$root/wit/handler.wit"; do
    [ dist/echo-c.wasm -nt "$source" ] || c_stale=yes
done
if [ -n "$c_stale" ]; then
    step "Building the C echo handler (clang, wit-bindgen $WIT_BINDGEN_VERSION, wasm-tools $WASM_TOOLS_VERSION)"
    c_build=$(mktemp -d)
    if ! generated=$("$C_TOOLS/bin/wit-bindgen" c "$root/wit" --world handler --out-dir "$c_build" 2>&1); then
        echo "$generated" >&2
        exit 1
    fi
    clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Wextra -Werror \
        -I"$c_build" -I"$root/guest-examples/c/echo" -o "$c_build/echo-core.wasm" \
        "$root/guest-examples/c/echo/echo.c" "$root/guest-examples/c/echo/json.c" \
        "$c_build/handler.c" "$c_build/handler_component_type.o"
    "$C_TOOLS/bin/wasm-tools" component new "$c_build/echo-core.wasm" \
        --adapt "wasi_snapshot_preview1=$WASI_ADAPTER" -o dist/echo-c.wasm
    rm -rf "$c_build"
fi

step "Guests ready in guest-examples/dist/: $(cd dist && ls *.wasm | tr '\n' ' ')"
