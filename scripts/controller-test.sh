#!/usr/bin/env bash
# A private kube-apiserver + etcd (envtest style) for taskq-controller's tests:
#
#   scripts/controller-test.sh [cargo test arguments...]   # run taskq-controller's tests
#   source scripts/controller-test.sh                       # only define the functions
#
# kube_test_env_start builds kube-apiserver and etcd when the cache lacks them
# (scripts/chart/kube-env.sh build: cached in ~/.cache/taskq/kube, a no-op once built;
# the first build takes about 10 minutes on 2 cores), starts them in a private state
# directory of their own (never the chart tests' one) and exports TASKQ_TEST_KUBECONFIG,
# which crates/taskq-controller/tests/it/envtest.rs reads. An already exported
# TASKQ_TEST_KUBECONFIG is used as it is. kube_test_env_stop stops what was started.
#
# Run directly, it also runs scripts/setup.sh (redis-server for the tests) and
# `cargo test -p taskq-controller --locked` with the given arguments, and stops the API
# server on exit whatever the outcome.

KUBE_TEST_STATE=""

kube_test_env_start() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -n "${TASKQ_TEST_KUBECONFIG:-}" ]; then
        printf '==> using TASKQ_TEST_KUBECONFIG=%s\n' "$TASKQ_TEST_KUBECONFIG" >&2
        return 0
    fi
    bash "$root/scripts/chart/kube-env.sh" build
    KUBE_TEST_STATE="$(mktemp -d "${TMPDIR:-/tmp}/taskq-kube-test.XXXXXX")"
    TASKQ_KUBE_STATE="$KUBE_TEST_STATE" bash "$root/scripts/chart/kube-env.sh" start
    export TASKQ_TEST_KUBECONFIG="$KUBE_TEST_STATE/kubeconfig"
}

kube_test_env_stop() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -n "$KUBE_TEST_STATE" ]; then
        TASKQ_KUBE_STATE="$KUBE_TEST_STATE" bash "$root/scripts/chart/kube-env.sh" stop >/dev/null 2>&1 || true
        KUBE_TEST_STATE=""
        unset TASKQ_TEST_KUBECONFIG
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    bash scripts/setup.sh
    trap kube_test_env_stop EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    kube_test_env_start
    cargo test -p taskq-controller --locked "$@"
fi
