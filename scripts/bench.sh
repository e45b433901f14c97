#!/usr/bin/env bash
# keyhole's end-to-end benchmark (docs/performance.md): builds the release binary and the echo
# handler, installs what the benchmark drives (tansu; nginx with the echo module and wrk from
# Debian; confluent-kafka in a virtualenv; all cached), then runs scripts/bench.py.
#
#   scripts/bench.sh                      # instant owner (replies on and off), 5 ms owner
#   scripts/bench.sh backlog-10k backlog-100k backlog-1m --runs 3
#   scripts/bench.sh instant --runs 1 --keep
#   scripts/bench.sh instant instant-native     # the sandbox's cost per event
#   scripts/bench.sh instant-batched            # batched resolution against the owner's batched capacity
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null \
    || [ ! -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] \
    || [ ! -e /usr/lib/nginx/modules/ngx_http_js_module.so ]; then
    step "Installing nginx (with the echo and njs modules) and wrk from Debian"
    sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends \
        nginx-light libnginx-mod-http-echo libnginx-mod-http-js wrk >/dev/null
fi
# The tests' confluent-kafka (scripts/lib.sh): one virtualenv for both.
ensure_python_kafka
python=$KEYHOLE_TEST_PYTHON_KAFKA
ensure_tansu
"$root/scripts/build-guests.sh"
cd "$root"
target=$(cargo metadata --format-version 1 --no-deps | "$python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
native=()
if printf '%s\n' "$@" | grep -qx -- 'instant-native\|all'; then
    # The native stand-in for the echo handler (runtime/src/sandbox/native.rs): only keyhole's
    # own crate is built again with the feature; cargo keeps both builds.
    step "Building keyhole (release, with the native echo stand-in)"
    cargo build --release --locked -p keyhole --features bench-native-handler
    cp "$target/release/keyhole" "$target/release/keyhole-bench-native"
    native=(--keyhole-native "$target/release/keyhole-bench-native")
fi
step "Building keyhole (release)"
cargo build --release --locked -p keyhole
exec "$python" "$root/scripts/bench.py" --tansu "$TANSU_BIN" --keyhole "$target/release/keyhole" "${native[@]}" "$@"
