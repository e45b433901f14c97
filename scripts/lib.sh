# Shared by the project's scripts. Everything installed goes under ~/.cache/keyhole (override
# with KEYHOLE_CACHE) so that a second run is fast.
KEYHOLE_CACHE=${KEYHOLE_CACHE:-$HOME/.cache/keyhole}
mkdir -p "$KEYHOLE_CACHE"

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        step "Adding the wasm32-wasip2 target to the pinned toolchain"
        rustup target add wasm32-wasip2
    fi
}
