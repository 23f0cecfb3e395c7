#!/usr/bin/env bash
# Runs taskq locally and proves it works end to end:
#
#   scripts/dev.sh [--demo-only]
#
# 1. scripts/setup.sh;
# 2. redis-server on 127.0.0.1:${TASKQ_DEV_REDIS_PORT:-6379} and mongo-java-server on
#    127.0.0.1:${TASKQ_DEV_MONGO_PORT:-27017}, unless something already listens there
#    (then that server is used and left alone);
# 3. cargo build --release of taskq-api and taskq-worker, with the controller and the CLI
#    (lib.sh's RELEASE_PACKAGES: the set scripts/cluster/test.sh builds, so either
#    script reuses the other's build);
# 4. taskq-api on ${TASKQ_DEV_API_LISTEN:-127.0.0.1:8080} and taskq-worker (health on
#    ${TASKQ_DEV_WORKER_LISTEN:-127.0.0.1:8081}, queue "default"), logs in
#    .tmp/dev-api.log and .tmp/dev-worker.log;
# 5. waits for GET /readyz, submits an `echo` task, polls it until it has succeeded
#    and prints its record.
#
# Then it keeps running, following both logs, until Ctrl-C (or SIGTERM), which stops
# everything it started. With --demo-only it stops everything right after the demo and
# exits 0 (non-zero if any step failed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TASKQ_ROOT"

demo_only=0
for arg in "$@"; do
    case "$arg" in
    --demo-only) demo_only=1 ;;
    -h | --help)
        sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown argument: $arg (usage: scripts/dev.sh [--demo-only])" ;;
    esac
done

redis_port="${TASKQ_DEV_REDIS_PORT:-6379}"
mongo_port="${TASKQ_DEV_MONGO_PORT:-27017}"
api_listen="${TASKQ_DEV_API_LISTEN:-127.0.0.1:8080}"
worker_listen="${TASKQ_DEV_WORKER_LISTEN:-127.0.0.1:8081}"
api_url="http://$api_listen"
api_log="$TASKQ_TMP/dev-api.log"
worker_log="$TASKQ_TMP/dev-worker.log"

started_redis=""
started_mongo=""
api_pid=""
worker_pid=""
tail_pid=""

# shellcheck disable=SC2317 # invoked through the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
    [ -z "$worker_pid" ] || stop_pid "$worker_pid" taskq-worker taskq-worker
    [ -z "$api_pid" ] || stop_pid "$api_pid" taskq-api taskq-api
    [ -z "$started_mongo" ] || mongo_stop "$started_mongo"
    [ -z "$started_redis" ] || redis_stop "$started_redis"
    if [ -n "$api_pid$worker_pid$started_mongo$started_redis" ]; then
        log "stopped everything dev.sh started"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fail MESSAGE: prints MESSAGE and the tails of both service logs, then exits 1.
fail() {
    printf 'error: %s\n' "$1" >&2
    for f in "$api_log" "$worker_log"; do
        if [ -s "$f" ]; then
            printf -- '--- %s ---\n' "$f" >&2
            log_tail "$f"
        fi
    done
    exit 1
}

bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with rustup (https://rustup.rs)"
mkdir -p "$TASKQ_TMP"

if port_open 127.0.0.1 "$redis_port"; then
    log "using the server already listening on 127.0.0.1:$redis_port as Redis"
else
    redis_start "$redis_port"
    started_redis="$redis_port"
fi
if port_open 127.0.0.1 "$mongo_port"; then
    log "using the server already listening on 127.0.0.1:$mongo_port as MongoDB"
else
    mongo_start "$mongo_port"
    started_mongo="$mongo_port"
fi

log "cargo build --release --locked ${RELEASE_PACKAGES[*]}"
cargo build --release --locked "${RELEASE_PACKAGES[@]}"

for listen in "$api_listen" "$worker_listen"; do
    if port_open "${listen%:*}" "${listen##*:}"; then
        die "$listen is already in use (an earlier dev.sh?); stop what listens there first"
    fi
done

export TASKQ_REDIS_URL="redis://127.0.0.1:$redis_port"
export TASKQ_MONGODB_URI="mongodb://127.0.0.1:$mongo_port"
export TASKQ_MONGODB_DATABASE="taskq"

log "starting taskq-api on $api_listen (log $api_log)"
# A local demo on loopback runs without tokens; say so explicitly, as the api requires.
# Set TASKQ_TOKENS=admin:<token> (and TASKQ_AUTH=on) before running to try authentication.
TASKQ_AUTH="${TASKQ_AUTH:-off}" TASKQ_LISTEN="$api_listen" target/release/taskq-api </dev/null >"$api_log" 2>&1 &
api_pid=$!
log "starting taskq-worker on $worker_listen (log $worker_log)"
TASKQ_LISTEN="$worker_listen" TASKQ_QUEUES=default target/release/taskq-worker \
    </dev/null >"$worker_log" 2>&1 &
worker_pid=$!

log "waiting for $api_url/readyz"
deadline=$((SECONDS + SERVICE_TIMEOUT))
until curl -fsS -o /dev/null "$api_url/readyz" 2>/dev/null; do
    kill -0 "$api_pid" 2>/dev/null || fail "taskq-api exited during start-up"
    kill -0 "$worker_pid" 2>/dev/null || fail "taskq-worker exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || fail "taskq-api not ready within $SERVICE_TIMEOUT s"
    sleep 0.5
done

# json_field FIELD: reads a JSON object on stdin and prints its top-level string FIELD
# (python3 when available, else the first `"FIELD":"..."` in the text).
json_field() {
    local json value=""
    json="$(cat)"
    if command -v python3 >/dev/null 2>&1; then
        value="$(printf '%s' "$json" | python3 -c '
import json, sys
try:
    v = json.load(sys.stdin).get(sys.argv[1])
except Exception:
    v = None
print(v if isinstance(v, str) else "")' "$1")"
    fi
    if [ -z "$value" ]; then
        value="$(printf '%s' "$json" | grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" |
            head -n 1 | sed 's/.*:[[:space:]]*"\(.*\)"/\1/')" || true
    fi
    printf '%s' "$value"
}

log "submitting a demo task: POST $api_url/v1/tasks"
response="$(curl -fsS -X POST "$api_url/v1/tasks" -H 'content-type: application/json' \
    -d '{"type":"echo","payload":{"hello":"world"}}')" || fail "submitting the demo task failed"
task_id="$(printf '%s' "$response" | json_field id)" || true
[ -n "$task_id" ] || fail "no task id in the submit response: $response"
log "accepted task $task_id; waiting for it to succeed"

deadline=$((SECONDS + 30))
while :; do
    record="$(curl -fsS "$api_url/v1/tasks/$task_id")" || fail "GET /v1/tasks/$task_id failed"
    status="$(printf '%s' "$record" | json_field status)" || true
    case "$status" in
    succeeded) break ;;
    dead | cancelled) fail "demo task ended as $status: $record" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || fail "demo task still '$status' after 30 s: $record"
    sleep 0.5
done

log "demo task succeeded:"
if command -v python3 >/dev/null 2>&1; then
    printf '%s' "$record" | python3 -m json.tool
else
    printf '%s\n' "$record"
fi

if [ "$demo_only" -eq 1 ]; then
    log "demo finished (--demo-only); stopping"
    exit 0
fi

log "taskq is running: api $api_url, worker $worker_listen, Redis $TASKQ_REDIS_URL, MongoDB $TASKQ_MONGODB_URI"
log "press Ctrl-C to stop everything; following the logs:"
tail -n +1 -F "$api_log" "$worker_log" &
tail_pid=$!
# Returns when either service exits (or a signal runs the traps).
set +e
wait -n "$api_pid" "$worker_pid"
rc=$?
set -e
fail "a taskq process exited unexpectedly (status $rc)"
