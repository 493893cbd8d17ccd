# syntax=docker/dockerfile:1
# churnguard image: docker build -t churnguard:local .
# Used by docker-compose.yml for the service and for the simulator.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# librdkafka is built from source by rdkafka-sys (./configure + make, no cmake), with TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin churnguard \
 && cp target/release/churnguard /usr/local/bin/churnguard

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system churnguard \
 && useradd --system --gid churnguard --home-dir /app --shell /usr/sbin/nologin churnguard
COPY --from=builder /usr/local/bin/churnguard /usr/local/bin/churnguard
COPY models /app/models
COPY deploy/churnguard.toml /etc/churnguard/churnguard.toml
WORKDIR /app
USER churnguard
EXPOSE 9464
# No curl in slim: speak HTTP over bash's /dev/tcp and require "200" from /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["churnguard"]
CMD ["run", "--config", "/etc/churnguard/churnguard.toml"]
