#!/usr/bin/env bash
# Fuzzes a live taskq-api against its own OpenAPI document with schemathesis:
#
#   scripts/schemathesis.sh [extra `schemathesis run` arguments...]
#
# e.g. `scripts/schemathesis.sh`, `scripts/schemathesis.sh --seed 7`,
# `scripts/schemathesis.sh --include-path /v1/tasks`.
#
# 1. installs schemathesis $SCHEMATHESIS_VERSION into a virtualenv at
#    ${TASKQ_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/taskq/venv} (python3-venv from apt if
#    `python3 -m venv` is missing); reused while its version matches;
# 2. starts redis-server on a free port, and mongo-java-server on a free port unless
#    TASKQ_TEST_MONGODB_URI is set (then a new database on that server is used);
# 3. cargo build -p taskq-api --locked, then starts target/debug/taskq-api with
#    TASKQ_AUTH=on and a random admin token, and waits for /readyz;
# 4. runs `schemathesis run http://127.0.0.1:PORT/openapi.json` with every check (the
#    default of schemathesis 4; `--checks all` would override the per-operation
#    exceptions), the token and the per-operation settings of
#    scripts/schemathesis.toml, with at most
#    TASKQ_SCHEMATHESIS_MAX_EXAMPLES (50) examples per operation and phase, for
#    TASKQ_SCHEMATHESIS_MAX_TIME seconds (120; fuzzing and stateful testing repeat until
#    it is spent; 0 runs each phase once, about 15 s), with a fixed seed
#    (TASKQ_SCHEMATHESIS_SEED) so a CI failure reproduces locally.
#
# Exits non-zero when schemathesis reports any failure: a 5xx, a status code, content
# type, header or body the document does not declare, schema-valid input refused or
# schema-invalid input accepted, a request without a valid token accepted. Everything
# started here is stopped on exit, whatever the outcome; the api log stays in
# .tmp/schemathesis-api.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TASKQ_ROOT"

SCHEMATHESIS_VERSION=4.32.5
venv="${TASKQ_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/taskq/venv}"
max_examples="${TASKQ_SCHEMATHESIS_MAX_EXAMPLES:-50}"
max_time="${TASKQ_SCHEMATHESIS_MAX_TIME:-120}"
seed="${TASKQ_SCHEMATHESIS_SEED:-20240601}"

bash scripts/setup.sh
command -v python3 >/dev/null 2>&1 || die "python3 not found"

# --- schemathesis in its own virtualenv ------------------------------------------------
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null || true)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "python3's venv module is missing; install python3-venv"
        pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        log "installing python3-venv"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-venv >/dev/null ||
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "python$pyver-venv" >/dev/null
    fi
    log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$venv/bin/schemathesis" --version

# --- services ------------------------------------------------------------------------
redis_port=""
started_mongo_port=""
api_pid=""
api_log="$TASKQ_TMP/schemathesis-api.log"

# shellcheck disable=SC2317 # invoked through the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -z "$api_pid" ] || stop_pid "$api_pid" taskq-api taskq-api
    [ -z "$started_mongo_port" ] || mongo_stop "$started_mongo_port"
    [ -z "$redis_port" ] || redis_stop "$redis_port"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

redis_port="$(free_port)"
redis_start "$redis_port"

if [ -n "${TASKQ_TEST_MONGODB_URI:-}" ]; then
    mongo_uri="$TASKQ_TEST_MONGODB_URI"
    log "using TASKQ_TEST_MONGODB_URI=$mongo_uri"
else
    mongo_start ""
    started_mongo_port="$MONGO_PORT"
    mongo_uri="$MONGO_URI"
fi

log "cargo build -p taskq-api --locked"
cargo build -p taskq-api --locked

api_port="$(free_port)"
token="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)"
[ "${#token}" -eq 32 ] || die "could not make a random token"
mkdir -p "$TASKQ_TMP"
# The token goes through the environment only (never the command line or the log).
TASKQ_LISTEN="127.0.0.1:$api_port" \
    TASKQ_REDIS_URL="redis://127.0.0.1:$redis_port" \
    TASKQ_MONGODB_URI="$mongo_uri" \
    TASKQ_MONGODB_DATABASE="taskq_schemathesis_$$_$(date +%s)" \
    TASKQ_AUTH=on \
    TASKQ_TOKENS="admin:$token" \
    TASKQ_REQUEST_TIMEOUT_MS=20000 \
    RUST_LOG="${RUST_LOG:-warn}" \
    target/debug/taskq-api </dev/null >"$api_log" 2>&1 &
api_pid=$!
wait_for_port taskq-api "$api_port" "$api_pid" "$api_log"
api_url="http://127.0.0.1:$api_port"
deadline=$((SECONDS + SERVICE_TIMEOUT))
until curl -fsS "$api_url/readyz" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$api_pid" 2>/dev/null; then
        log_tail "$api_log"
        die "taskq-api did not become ready at $api_url/readyz"
    fi
    sleep 0.2
done
log "taskq-api ready at $api_url (pid $api_pid, log $api_log)"

# --- the run ---------------------------------------------------------------------------
log "schemathesis run $api_url/openapi.json (max $max_examples examples per operation, $max_time s, seed $seed)"
bounds=(--max-examples "$max_examples")
# 0: no time budget (each phase runs once); otherwise fuzzing and stateful testing repeat
# until the budget is spent.
[ "$max_time" = 0 ] || bounds+=(--max-time "$max_time")
started=$SECONDS
set +e
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$api_url/openapi.json" \
    --header "Authorization: Bearer $token" \
    "${bounds[@]}" \
    --seed "$seed" \
    --request-timeout 30 \
    --generation-database none \
    --no-color \
    "$@"
rc=$?
set -e
log "schemathesis finished in $((SECONDS - started)) s with exit status $rc"
if ! kill -0 "$api_pid" 2>/dev/null; then
    log_tail "$api_log"
    die "taskq-api exited during the run"
fi
if [ "$rc" -ne 0 ]; then
    warn "schemathesis found problems (above); the api's log is $api_log"
fi
exit "$rc"
