#!/usr/bin/env bash
# Runs taskq's whole test suite against real services:
#
#   scripts/test.sh [cargo test arguments...]
#
# e.g. `scripts/test.sh`, `scripts/test.sh lease_expiry`, `scripts/test.sh -- --nocapture`,
# `scripts/test.sh -p taskq-store`.
#
# Without arguments it runs everything: the cargo tests, then the OpenAPI fuzzing
# (scripts/schemathesis.sh) and the Helm chart tests (scripts/chart/test.sh). With
# arguments it runs only `cargo test` with them.
#
# 1. scripts/setup.sh (installs redis-server, redis-cli and mongo-java-server if missing);
# 2. unless TASKQ_TEST_MONGODB_URI is set (e.g. to a real MongoDB), starts
#    mongo-java-server on a free port and exports TASKQ_TEST_MONGODB_URI;
# 3. when taskq-controller's tests are in the run (the whole workspace, or arguments that
#    name taskq-controller) and TASKQ_TEST_KUBECONFIG is not set: builds kube-apiserver
#    and etcd if the cache lacks them, starts a private pair and exports
#    TASKQ_TEST_KUBECONFIG (scripts/controller-test.sh);
# 4. cargo build --workspace --bins --locked (tests spawn the built binaries);
# 5. cargo test --workspace --locked with the given arguments;
# 6. without arguments: scripts/schemathesis.sh against the same MongoDB server, then
#    scripts/chart/test.sh (helm, kubeconform and a real kube-apiserver), then
#    scripts/cluster/test.sh (images built with buildah, a single-node Kubernetes from
#    real components, the chart installed and exercised end to end); on CI (CI=true)
#    the debug build is removed first, to leave the disk room for the release build
#    and the images.
#
# Tests start their own redis-server processes (taskq-testkit). The mongo-java-server
# and the kube-apiserver started here are stopped on exit, whatever the outcome.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/controller-test.sh"
cd "$TASKQ_ROOT"

bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with rustup (https://rustup.rs)"

started_mongo_port=""
cleanup() {
    if [ -n "$started_mongo_port" ]; then
        mongo_stop "$started_mongo_port"
    fi
    kube_test_env_stop
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${TASKQ_TEST_MONGODB_URI:-}" ]; then
    mongo_start "" # on a free port
    started_mongo_port="$MONGO_PORT"
    export TASKQ_TEST_MONGODB_URI="$MONGO_URI"
else
    log "using TASKQ_TEST_MONGODB_URI=$TASKQ_TEST_MONGODB_URI"
fi

# `-p/--package` narrows the run; otherwise test the whole workspace.
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in
    --) break ;;
    -p | --package | --package=* | -p?*) scope=() ;;
    esac
done

# taskq-controller's tests need a real API server (they fail without one).
if [ "${#scope[@]}" -gt 0 ] || [[ " $* " == *taskq-controller* ]]; then
    kube_test_env_start
fi

log "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked
log "cargo test ${scope[*]:+${scope[*]} }--locked $*"
cargo test "${scope[@]}" --locked "$@"

if [ "$#" -eq 0 ]; then
    log "OpenAPI fuzzing (scripts/schemathesis.sh)"
    bash scripts/schemathesis.sh
    # The chart tests start an API server of their own.
    kube_test_env_stop
    log "Helm chart (scripts/chart/test.sh)"
    bash scripts/chart/test.sh
    # A CI machine's disk is shared and can run short: the cargo tests' build (about
    # 4.5 GB) is not used by the cluster test, which builds release binaries and images.
    if [ "${CI:-}" = true ] && [ -d target/debug ]; then
        log "CI: removing target/debug ($(du -sh target/debug | cut -f1)) before the cluster test"
        rm -rf target/debug
    fi
    log "Helm chart on a real single-node cluster (scripts/cluster/test.sh)"
    bash scripts/cluster/test.sh
fi
