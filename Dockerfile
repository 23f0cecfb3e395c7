# syntax=docker/dockerfile:1
#
# One Dockerfile for every taskq binary; BIN picks which (api, worker or controller):
#
#   docker build --build-arg BIN=api        -t taskq-api .
#   docker build --build-arg BIN=worker     -t taskq-worker .
#   docker build --build-arg BIN=controller -t taskq-controller .
#
# Stages: `chef` (toolchain + cargo-chef) → `planner` (dependency recipe from the
# manifests) → `builder` (dependencies compiled from the recipe in their own layer, shared
# by every BIN and rebuilt only when Cargo.toml/Cargo.lock change; then the one binary,
# `--locked`) → `runtime` (distroless cc: glibc, libgcc, CA certificates, no shell, no
# package manager, no build tools; numeric non-root user 65532).
#
# BINARY_FROM names what the runtime stage copies /out/taskq from: the `builder` stage by
# default, or an image that already holds a binary built elsewhere (then only the runtime
# stage runs; scripts/images/build.sh --prebuilt uses this for the host's release build):
#
#   docker build --build-arg BIN=api --build-arg BINARY_FROM=localhost/taskq-prebuilt-api -t taskq-api .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG BINARY_FROM=builder

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Every workspace dependency, release profile: the layer all three images share.
RUN --mount=type=cache,id=taskq-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=taskq-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked --workspace --recipe-path recipe.json
COPY . .
ARG BIN=api
RUN --mount=type=cache,id=taskq-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=taskq-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    case "${BIN}" in api|worker|controller) ;; \
      *) echo "BIN must be api, worker or controller (got '${BIN}')" >&2; exit 1 ;; esac && \
    cargo build --release --locked -p "taskq-${BIN}" --bin "taskq-${BIN}" && \
    install -D -m 0755 "target/release/taskq-${BIN}" /out/taskq

# The binary the runtime copies: built above, or taken from BINARY_FROM's image.
FROM ${BINARY_FROM} AS binary

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG BIN=api
LABEL org.opencontainers.image.title="taskq-${BIN}" \
      org.opencontainers.image.description="taskq ${BIN}: Kubernetes-native distributed task queue" \
      org.opencontainers.image.source="https://github.com/taskq-dev/taskq" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binary /out/taskq /usr/local/bin/taskq
# 65532 is distroless's `nonroot`; the chart runs it with a read-only root file system.
USER 65532:65532
# The binaries bind 0.0.0.0 and read their settings from TASKQ_* variables.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/taskq"]
