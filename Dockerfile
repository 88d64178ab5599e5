# syntax=docker/dockerfile:1
# Sluice gateway image. Build from the repository root:
#   docker build -t sluice .
# or run the scale-out example: docker compose -f deploy/compose.yaml up --build

# --- build --------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build

# BoringSSL (pingora's boringssl feature) needs cmake, clang and go; pyo3 needs the
# Python 3.11 interpreter (PYO3_PYTHON) and libpython3.11-dev to link against.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake clang libclang-dev golang-go python3.11 libpython3.11-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

ENV PYO3_PYTHON=/usr/bin/python3.11
WORKDIR /src
COPY . .

# The target directory is a cache mount (kept between builds, not part of the image), so the
# binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice \
 && install -D -m 0755 target/release/sluice /out/sluice

# --- runtime ------------------------------------------------------------------------------
FROM debian:bookworm-slim

# The binary links libpython3.11 (Code Mode workers are this binary re-executed as
# `sluice code-worker`, embedding CPython; libpython3.11 brings the standard library they
# import). ca-certificates: the roots for HTTPS upstreams and LLM providers.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpython3.11 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sluice --create-home \
        --shell /usr/sbin/nologin sluice \
 && mkdir -p /etc/sluice

COPY --from=build /out/sluice /usr/local/bin/sluice

# Relative paths in the configuration (the defaults data/state.db, data/audit.jsonl) land here.
WORKDIR /var/lib/sluice
USER sluice
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--config", "/etc/sluice/sluice.yaml"]
