#!/usr/bin/env bash
# The chart on a real single-node cluster, from source to a passing end-to-end run:
#
#   scripts/cluster/test.sh          # release binaries → images → cluster → e2e → down
#
# 1. `cargo build --release --locked` of taskq-api, taskq-worker, taskq-controller and the
#    `taskq` CLI;
# 2. scripts/images/build.sh --prebuilt: the three images through the Dockerfile's runtime
#    stage from those binaries, plus the local Redis, mongo-java-server and curl images
#    (TASKQ_E2E_IMAGES=full runs the whole multi-stage build instead);
#    scripts/images/test.sh then runs each as the chart does (uid 65532, read-only root,
#    no capabilities) against a host Redis and mongo-java-server;
# 3. scripts/cluster/up.sh: the single-node Kubernetes (binaries built once and cached),
#    which imports the images into the node's containerd;
# 4. scripts/cluster/e2e.sh;
# 5. scripts/cluster/down.sh, whatever the outcome (TASKQ_CLUSTER_KEEP=1 leaves it up).
#
# A cluster that cannot start fails the run with the reason; nothing is skipped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$TASKQ_ROOT"

step_start=$SECONDS
timed() { # name command...: runs the command and prints how long it took
    local name="$1" t=$SECONDS
    shift
    log "cluster test: $name"
    "$@"
    log "cluster test: $name took $((SECONDS - t)) s"
}

cleanup() {
    local rc=$?
    if [ "${TASKQ_CLUSTER_KEEP:-0}" != 1 ]; then
        bash scripts/cluster/down.sh >/dev/null 2>&1 || warn "scripts/cluster/down.sh failed"
    fi
    exit "$rc"
}
trap cleanup EXIT

# What the image build and the end-to-end driver need (up.sh installs the node's own).
missing=()
# buildah runs its RUN steps with runc (podman alone brings crun).
for pair in buildah:buildah podman:podman runc:runc debootstrap:debootstrap jq:jq curl:curl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

timed "release binaries" cargo build --release --locked "${RELEASE_PACKAGES[@]}"
if [ "${TASKQ_E2E_IMAGES:-prebuilt}" = full ]; then
    timed "images (full multi-stage build)" bash scripts/images/build.sh
else
    timed "images (--prebuilt)" bash scripts/images/build.sh --prebuilt
fi
timed "images run as the chart runs them (scripts/images/test.sh)" bash scripts/images/test.sh
timed "cluster up" bash scripts/cluster/up.sh
timed "end-to-end" bash scripts/cluster/e2e.sh
log "cluster test: passed in $((SECONDS - step_start)) s"
