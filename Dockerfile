# syntax=docker/dockerfile:1
#
# One Dockerfile for every taskq binary; BIN picks which (api, worker or controller):
#
#   docker build --build-arg BIN=api        -t taskq-api .
#   docker build --build-arg BIN=worker     -t taskq-worker .
#   docker build --build-arg BIN=controller -t taskq-controller .
#
# Stages: `chef` (toolchain + cargo-chef) → `planner` (dependency recipe from the
# manifests) → `builder` (the dependencies of `taskq-${BIN}` compiled from the recipe in
# their own layer, one per BIN, rebuilt only when Cargo.toml/Cargo.lock change; then the
# one binary, `--locked`) → `runtime` (distroless cc: glibc, libgcc, CA certificates, no shell, no
# package manager, no build tools; numeric non-root user 65532).
#
# The runtime image is defined once (`runtime-base`) and finished two ways: `runtime`, the
# default target, copies the binary the `builder` stage compiled; `--target prebuilt` copies
# /out/taskq from the image PREBUILT_IMAGE names instead (a binary built outside, e.g. the
# host's `cargo build --release`; scripts/images/build.sh --prebuilt), so no Rust stage runs:
#
#   docker build --target prebuilt --build-arg BIN=api \
#     --build-arg PREBUILT_IMAGE=localhost/taskq-local/prebuilt-api -t taskq-api .
#
# The image carries the binary without its debug info (the release profile's line tables,
# ~100 MB): symbols stay, so backtraces still name functions. Strip a prebuilt binary the
# same way (`strip --strip-debug`) before putting it into PREBUILT_IMAGE.
#
# (A stage picked through an ARG in FROM, `FROM ${X} AS binary` with X=builder, would be
# shorter, but buildah/podman before 1.29 do not see that dependency and skip `builder`.)

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG PREBUILT_IMAGE=scratch

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
ARG BIN=api
# The dependencies of exactly the package the next RUN builds (`-p taskq-${BIN}`), release
# profile. The same package set means the same unified features, so the build below
# compiles only taskq's own crates; cooking `--workspace` instead unifies the features of
# every member, and the package build then recompiled every dependency whose features differ.
# One `sharing=locked` mount per RUN, and the last one: it serialises every RUN that uses
# these caches (the git cache included). Buildah before 1.29 releases only the lock of a
# RUN's last --mount; any earlier locked mount stays locked and the next RUN waits forever.
RUN --mount=type=cache,id=taskq-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=taskq-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    case "${BIN}" in api|worker|controller) ;; \
      *) echo "BIN must be api, worker or controller (got '${BIN}')" >&2; exit 1 ;; esac && \
    cargo chef cook --release --locked -p "taskq-${BIN}" --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,id=taskq-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=taskq-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked -p "taskq-${BIN}" --bin "taskq-${BIN}" && \
    install -D -m 0755 "target/release/taskq-${BIN}" /out/taskq && \
    strip --strip-debug /out/taskq

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime-base
ARG BIN=api
LABEL org.opencontainers.image.title="taskq-${BIN}" \
      org.opencontainers.image.description="taskq ${BIN}: Kubernetes-native distributed task queue" \
      org.opencontainers.image.source="https://github.com/taskq-dev/taskq" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532 is distroless's `nonroot`; the chart runs it with a read-only root file system.
USER 65532:65532
# The binaries bind 0.0.0.0 and read their settings from TASKQ_* variables.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/taskq"]

# --target prebuilt: the runtime with a binary from PREBUILT_IMAGE (at /out/taskq).
FROM ${PREBUILT_IMAGE} AS prebuilt-binary
FROM runtime-base AS prebuilt
COPY --from=prebuilt-binary /out/taskq /usr/local/bin/taskq

# The default target: the runtime with the binary built above.
FROM runtime-base AS runtime
COPY --from=builder /out/taskq /usr/local/bin/taskq
