# keyhole's container image.
#
#   docker build -t keyhole .                      # builds the release binary (needs network)
#   podman build --target runtime-prebuilt ...     # copies target/container/keyhole instead
#
# Stages are ordered so that `--target runtime-prebuilt` never reaches the build stage, on
# podman/buildah, the legacy builder and BuildKit alike; no `# syntax=` line and no
# `COPY --chmod`, which need BuildKit. See docs/deploy.md.

# --- runtime-base: what the binary needs, and nothing else ---------------------------------
FROM debian:bookworm-slim AS runtime-base
# The binary links libssl3 and libz (`ldd keyhole`), both in bookworm-slim's libssl3 and base;
# ca-certificates for TLS to brokers and data owners. Installed only when missing, so that a
# base image that already has them (the locally made one of scripts/container-smoke.sh) needs no
# network.
# DL3008 (pin apt package versions) is ignored: these are bookworm's security-maintained
# packages, and a pinned version disappears from the mirror at the next point release, breaking
# every later build.
# hadolint ignore=DL3008
RUN if ! dpkg -s ca-certificates libssl3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ca-certificates libssl3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 10001 --user-group --no-create-home --no-log-init --home-dir /var/lib/keyhole --shell /usr/sbin/nologin keyhole \
    && mkdir -p /var/lib/keyhole /etc/keyhole \
    && chown 10001:10001 /var/lib/keyhole
COPY deploy/container/keyhole.toml /etc/keyhole/keyhole.toml
# The registry's local cache, the audit and receipt files: the only place keyhole writes, so the
# root filesystem can be read-only.
VOLUME ["/var/lib/keyhole"]
WORKDIR /var/lib/keyhole
USER 10001:10001
# 9090: the admin API (tenants and the operator); 9091: /healthz, /readyz and /metrics, apart, so
# that a flood of the API cannot blind the probes.
EXPOSE 9090 9091
# The slim image has no curl: keyhole asks its own /readyz, on the monitoring port its
# configuration sets (admin.monitoring_listen).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["keyhole", "health", "--config", "/etc/keyhole/keyhole.toml"]
# keyhole is PID 1: it handles SIGTERM itself (drains, commits, exits 0).
ENTRYPOINT ["keyhole"]
CMD ["run", "--config", "/etc/keyhole/keyhole.toml"]

# --- runtime-prebuilt: a binary built on the host (no network needed) ----------------------
FROM runtime-base AS runtime-prebuilt
COPY target/container/keyhole /usr/local/bin/keyhole

# --- build: the release binary with the pinned toolchain ------------------------------------
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY rust-toolchain.toml Cargo.toml Cargo.lock ./
COPY runtime ./runtime
COPY tests ./tests
COPY wit ./wit
COPY examples/conformance ./examples/conformance
RUN cargo build --release --locked -p keyhole --bin keyhole \
    && cp target/release/keyhole /usr/local/bin/keyhole

# --- runtime (the default): the release binary from the build stage -------------------------
FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/keyhole /usr/local/bin/keyhole
