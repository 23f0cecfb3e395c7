#!/usr/bin/env bash
# Runs taskq's whole test suite against real services:
#
#   scripts/test.sh [cargo test arguments...]
#
# e.g. `scripts/test.sh`, `scripts/test.sh lease_expiry`, `scripts/test.sh -- --nocapture`,
# `scripts/test.sh -p taskq-store`.
#
# 1. scripts/setup.sh (installs redis-server, redis-cli and mongo-java-server if missing);
# 2. unless TASKQ_TEST_MONGODB_URI is set (e.g. to a real MongoDB), starts
#    mongo-java-server on a free port and exports TASKQ_TEST_MONGODB_URI;
# 3. cargo build --workspace --bins --locked (tests spawn the built binaries);
# 4. cargo test --workspace --locked with the given arguments.
#
# Tests start their own redis-server processes (taskq-testkit). The mongo-java-server
# started here is stopped on exit, whatever the outcome.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TASKQ_ROOT"

bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with rustup (https://rustup.rs)"

started_mongo_port=""
cleanup() {
    if [ -n "$started_mongo_port" ]; then
        mongo_stop "$started_mongo_port"
    fi
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

log "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked
log "cargo test ${scope[*]:+${scope[*]} }--locked $*"
cargo test "${scope[@]}" --locked "$@"
