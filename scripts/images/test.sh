#!/usr/bin/env bash
# Runs the images scripts/images/build.sh made, with podman, the way the chart runs them,
# and fails loudly (with the reason and the container's log) when one does not work:
#
#   scripts/images/test.sh                 every image
#   scripts/images/test.sh --bins api      a subset of api,worker,controller
#   scripts/images/test.sh --no-infra      only the taskq images
#   scripts/images/test.sh --infra         only the redis, mongo and curl images
#
# taskq images: numeric user 65532, --read-only (no tmpfs either: the chart mounts none),
# --cap-drop ALL, no-new-privileges, entrypoint only (no shell), against a redis-server and
# a mongo-java-server started on the host (scripts/lib.sh; --network host):
#   - `--version` prints the chart's appVersion;
#   - api (TASKQ_LISTEN port 8080 in the chart) and worker (8081) answer /livez and /readyz;
#   - controller: /livez and /readyz when scripts/chart/kube-env.sh's API server runs
#     (its kubeconfig is mounted); otherwise the check is that it starts and stops with its
#     "connecting to the Kubernetes API" error, and the script says /livez was not checked.
# Infrastructure images, as the chart's StatefulSets and `helm test` run them (uid 999 /
# 65532, read-only root, writable /data and /tmp, all capabilities dropped):
#   - redis: `redis-server --port 6379 --dir /data --appendonly yes ...`, then the chart's
#     probe `redis-cli -h 127.0.0.1 -p 6379 ping` inside the container answers PONG;
#   - mongo: `mongod --bind_ip_all --dbpath /data/db --wiredTigerCacheSizeGB 0.25`, then the
#     chart's probe `mongosh --quiet --norc --eval "db.adminCommand('ping').ok"` prints 1;
#     and the api image reaches /readyz against it (the Rust driver over a real connection);
#   - curl: sh, curl and the tools the helm test script uses; curl reaches the api's /livez.
# Image sizes are printed. Needs root, podman, curl, redis-server, Java (scripts/setup.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../lib.sh"

say() { printf 'images: %s\n' "$*" >&2; }
fail() {
    printf 'images: FAILED: %s\n' "$*" >&2
    exit 1
}

bins=api,worker,controller
taskq=yes
infra=yes
while [ "$#" -gt 0 ]; do
    case "$1" in
        --bins) bins="$2"; shift ;;
        --bins=*) bins="${1#*=}" ;;
        --no-infra) infra=no ;;
        --infra) taskq=no ;;
        -h | --help) usage; exit 0 ;;
        *) fail "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
image_bins "$bins"

[ "$(id -u)" -eq 0 ] || fail "run as root (podman uses the root storage build.sh wrote)"
need podman runc curl

APP_VERSION="$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}.*/\1/p' \
    "$TASKQ_ROOT/charts/taskq/Chart.yaml")"
REDIS_IMAGE="${TASKQ_REDIS_IMAGE:-localhost/taskq-local/redis:7.0.15}"
MONGO_IMAGE=localhost/taskq-local/mongo:test
CURL_IMAGE=localhost/taskq-local/curl:bookworm
SUFFIX="imgtest-$$"

# podman on this machine: runc, and rlimits below the host's (runc refuses the defaults).
RUN=(podman run --runtime runc --pull never --ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
# The chart's securityContext, as podman flags.
LOCKED=(--read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges)

declare -a CONTAINERS=() REDIS_PORTS=() MONGO_PORTS=() REPORT=()
DIRS="$(mktemp -d /tmp/taskq-images-test.XXXXXX)"
cleanup() {
    local c p
    for c in "${CONTAINERS[@]}"; do podman rm -f -t 2 "$c" >/dev/null 2>&1 || true; done
    rm -rf "$DIRS"
    for p in "${REDIS_PORTS[@]}"; do redis_stop "$p"; done
    for p in "${MONGO_PORTS[@]}"; do mongo_stop "$p"; done
}
trap cleanup EXIT

image_mb() {
    awk -v b="$(podman image inspect --format '{{.Size}}' "$1")" 'BEGIN { printf "%.1f MB", b / 1000000 }'
}
# volume_dir NAME UID: an empty directory owned by UID, standing in for a PVC/emptyDir.
volume_dir() {
    mkdir -p "$DIRS/$1"
    chown "$2:$2" "$DIRS/$1"
    echo "$DIRS/$1"
}
need_image() {
    podman image exists "$1" || fail "image $1 not found: run scripts/images/build.sh"
}
# container_log NAME: the container's output, indented, on stderr.
container_log() {
    printf 'images: log of %s:\n' "$1" >&2
    podman logs "$1" 2>&1 | tail -n 40 | sed 's/^/    /' >&2 || true
}
# wait_http NAME URL: waits up to 60 s for URL to answer 200; fails with the container log.
wait_http() {
    local name="$1" url="$2" code="" deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
            container_log "$name"
            fail "$name exited before $url answered (exit code $(podman inspect --format '{{.State.ExitCode}}' "$name" 2>/dev/null))"
        fi
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
        [ "$code" = 200 ] && return 0
        sleep 0.5
    done
    container_log "$name"
    fail "$url did not answer 200 within 60 s (last status: ${code:-no answer})"
}
# wait_exec NAME EXPECTED CMD...: runs CMD in the container until it prints EXPECTED (60 s).
wait_exec() {
    local name="$1" expected="$2" out="" deadline=$((SECONDS + 60))
    shift 2
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
            container_log "$name"
            fail "$name exited while waiting for \`$*\` to print $expected"
        fi
        out="$(podman exec "$name" "$@" 2>&1 || true)"
        [ "$out" = "$expected" ] && return 0
        sleep 1
    done
    container_log "$name"
    fail "\`$*\` in $name did not print $expected within 60 s (last output: ${out:-none})"
}

# ---------------------------------------------------------------------------------------
# taskq images

test_taskq() {
    local b name version port ctr kubeconf=() kube_state
    redis_port="$(free_port)"
    redis_start "$redis_port" 2>/dev/null
    REDIS_PORTS+=("$redis_port")
    mongo_jars_ready || mongo_fetch_jars
    mongo_start "" 2>/dev/null
    MONGO_PORTS+=("$MONGO_PORT")
    say "host services: redis-server on 127.0.0.1:$redis_port, mongo-java-server on 127.0.0.1:$MONGO_PORT"
    for b in "${BINS[@]}"; do
        name="ghcr.io/taskq-dev/taskq-$b:$APP_VERSION"
        need_image "$name"
        version="$("${RUN[@]}" --rm --network none --user 65532:65532 "${LOCKED[@]}" "$name" --version 2>&1)" ||
            fail "$name --version failed: $version"
        case "$version" in
            *"$APP_VERSION"*) ;;
            *) fail "$name --version printed '$version', not the chart's appVersion $APP_VERSION" ;;
        esac
        say "$name: --version → $version"

        port="$(free_port)"
        ctr="taskq-$b-$SUFFIX"
        local env=(-e "TASKQ_LISTEN=127.0.0.1:$port" -e "TASKQ_REDIS_URL=redis://127.0.0.1:$redis_port"
            -e TASKQ_LOG_FORMAT=json -e RUST_LOG=info)
        case "$b" in
            api) env+=(-e "TASKQ_MONGODB_URI=$MONGO_URI" -e TASKQ_MONGODB_DATABASE="imgtest_$$" -e TASKQ_AUTH=off) ;;
            worker) env+=(-e "TASKQ_MONGODB_URI=$MONGO_URI" -e TASKQ_MONGODB_DATABASE="imgtest_$$" -e TASKQ_QUEUES=default) ;;
            controller)
                kube_state="${TASKQ_KUBE_STATE:-/tmp/taskq-kube-env}"
                if "$TASKQ_ROOT/scripts/chart/kube-env.sh" status >/dev/null 2>&1; then
                    local kc
                    kc="$("$TASKQ_ROOT/scripts/chart/kube-env.sh" env | sed -n 's/^export KUBECONFIG=//p' | tr -d "'\"")"
                    kubeconf=(-v "$kube_state:$kube_state:ro" -e "KUBECONFIG=$kc")
                    env+=(-e TASKQ_NAMESPACE=default -e TASKQ_IDENTITY="imgtest-$$" -e TASKQ_LEASE_NAME="taskq-imgtest-$$")
                fi ;;
        esac
        CONTAINERS+=("$ctr")
        "${RUN[@]}" -d --name "$ctr" --network host --user 65532:65532 "${LOCKED[@]}" \
            "${env[@]}" "${kubeconf[@]}" "$name" >/dev/null
        if [ "$b" = controller ] && [ "${#kubeconf[@]}" -eq 0 ]; then
            # No API server: the binary must start, then stop with the connection error.
            podman wait "$ctr" >/dev/null 2>&1 || true
            # Captured first: `grep -q` exiting early fails the pipeline with SIGPIPE.
            out="$(podman logs "$ctr" 2>&1 || true)"
            if grep -q 'connecting to the Kubernetes API' <<<"$out"; then
                say "$name: started and stopped with 'connecting to the Kubernetes API' (no API server: /livez and /readyz NOT checked; start scripts/chart/kube-env.sh to check them)"
            else
                container_log "$ctr"
                fail "$name did not report the missing Kubernetes API as expected"
            fi
        else
            wait_http "$ctr" "http://127.0.0.1:$port/livez"
            wait_http "$ctr" "http://127.0.0.1:$port/readyz"
            say "$name: /livez and /readyz answer 200 (uid 65532, read-only root, no capabilities)"
        fi
        if [ "$b" = api ]; then
            API_PORT="$port"
        fi
        REPORT+=("$name  $(image_mb "$name")")
    done
}

# ---------------------------------------------------------------------------------------
# infrastructure images

test_redis() {
    local ctr="taskq-redis-$SUFFIX"
    need_image "$REDIS_IMAGE"
    CONTAINERS+=("$ctr")
    # Its own network namespace, so the chart's fixed port and probe are used unchanged.
    "${RUN[@]}" -d --name "$ctr" --network none --user 999:999 "${LOCKED[@]}" \
        -v "$(volume_dir redis-data 999)":/data --tmpfs /tmp:rw,mode=1777 \
        "$REDIS_IMAGE" redis-server --port 6379 --dir /data --appendonly yes --appendfsync everysec \
        --maxmemory 200mb --maxmemory-policy noeviction --protected-mode no >/dev/null
    wait_exec "$ctr" PONG redis-cli -h 127.0.0.1 -p 6379 ping
    local set
    set="$(podman exec "$ctr" redis-cli -h 127.0.0.1 -p 6379 set imgtest ok)"
    [ "$set" = OK ] || fail "redis SET in $ctr answered '$set'"
    podman exec "$ctr" test -s /data/appendonlydir/appendonly.aof.1.incr.aof ||
        fail "redis in $ctr wrote no append-only file under /data"
    say "$REDIS_IMAGE: redis-server as uid 999, read-only root; the chart's probe answers PONG; AOF written to /data"
    REPORT+=("$REDIS_IMAGE  $(image_mb "$REDIS_IMAGE")")
}

test_mongo() {
    local ctr="taskq-mongo-$SUFFIX" out
    need_image "$MONGO_IMAGE"
    # shellcheck disable=SC2054 # the commas belong to --tmpfs options
    local mongo=(--user 999:999 "${LOCKED[@]}" --tmpfs /tmp:rw,mode=1777 -e HOME=/tmp
        -v "$(volume_dir mongo-db 999)":/data/db -v "$(volume_dir mongo-configdb 999)":/data/configdb
        -e MONGO_INITDB_ROOT_USERNAME=root -e MONGO_INITDB_ROOT_PASSWORD=imgtest --memory 512m)
    CONTAINERS+=("$ctr")
    "${RUN[@]}" -d --name "$ctr" --network none "${mongo[@]}" "$MONGO_IMAGE" \
        mongod --bind_ip_all --dbpath /data/db --wiredTigerCacheSizeGB 0.25 >/dev/null
    wait_exec "$ctr" 1 mongosh --quiet --norc --eval "db.adminCommand('ping').ok"
    out="$(podman exec "$ctr" mongosh --quiet --norc --eval 'db.getCollectionNames()' 2>&1)" &&
        fail "the mongosh shim accepted an expression it cannot evaluate: $out"
    say "$MONGO_IMAGE: mongod shim as uid 999, read-only root; the chart's probe prints 1"

    # The Rust driver (inside the api image) against the mongo image, over the host network.
    if [ "$taskq" = yes ] && podman image exists "ghcr.io/taskq-dev/taskq-api:$APP_VERSION"; then
        local mport api_port api="taskq-api-mongo-$SUFFIX" mctr="taskq-mongo-host-$SUFFIX"
        mport="$(free_port)"
        api_port="$(free_port)"
        CONTAINERS+=("$mctr" "$api")
        "${RUN[@]}" -d --name "$mctr" --network host "${mongo[@]}" "$MONGO_IMAGE" \
            mongod --bind_ip 127.0.0.1 --port "$mport" --dbpath /data/db >/dev/null
        wait_exec "$mctr" 1 mongosh --port "$mport" --quiet --norc --eval "db.adminCommand('ping').ok"
        "${RUN[@]}" -d --name "$api" --network host --user 65532:65532 "${LOCKED[@]}" \
            -e "TASKQ_LISTEN=127.0.0.1:$api_port" -e "TASKQ_REDIS_URL=redis://127.0.0.1:${REDIS_PORTS[0]}" \
            -e "TASKQ_MONGODB_URI=mongodb://127.0.0.1:$mport" -e TASKQ_AUTH=off \
            "ghcr.io/taskq-dev/taskq-api:$APP_VERSION" >/dev/null
        wait_http "$api" "http://127.0.0.1:$api_port/readyz"
        local resp
        resp="$(curl -fsS --max-time 10 -H 'content-type: application/json' \
            -d '{"type":"echo","queue":"imgtest","payload":{"from":"images/test.sh"}}' \
            "http://127.0.0.1:$api_port/v1/tasks")" || {
            container_log "$api"
            fail "submitting a task to the api backed by $MONGO_IMAGE failed"
        }
        say "$MONGO_IMAGE: the api image (Rust mongodb driver) is ready against it and a submit was accepted: ${resp:0:120}"
    fi
    REPORT+=("$MONGO_IMAGE  $(image_mb "$MONGO_IMAGE")")
}

test_curl() {
    local out
    need_image "$CURL_IMAGE"
    # shellcheck disable=SC2016 # $t expands in the container's shell
    out="$("${RUN[@]}" --rm --network none --user 65532:65532 "${LOCKED[@]}" "$CURL_IMAGE" \
        /bin/sh -ec 'for t in curl grep sed cut tr head date; do command -v "$t" >/dev/null || { echo "missing $t"; exit 1; }; done; curl --version | head -n1' 2>&1)" ||
        fail "$CURL_IMAGE: $out"
    say "$CURL_IMAGE: sh and the helm test's tools run as uid 65532 on a read-only root: $out"
    if [ -n "${API_PORT:-}" ]; then
        out="$("${RUN[@]}" --rm --network host --user 65532:65532 "${LOCKED[@]}" "$CURL_IMAGE" \
            curl -fsS --max-time 10 "http://127.0.0.1:$API_PORT/livez" 2>&1)" ||
            fail "$CURL_IMAGE could not reach the api's /livez: $out"
        say "$CURL_IMAGE: curl reached the api container's /livez: $out"
    fi
    REPORT+=("$CURL_IMAGE  $(image_mb "$CURL_IMAGE")")
}

START=$SECONDS
if [ "$taskq" = yes ]; then
    test_taskq
fi
if [ "$infra" = yes ]; then
    if [ "${#REDIS_PORTS[@]}" -eq 0 ]; then
        redis_port="$(free_port)"
        redis_start "$redis_port" 2>/dev/null
        REDIS_PORTS+=("$redis_port")
    fi
    test_redis
    test_mongo
    test_curl
fi
say "all checks passed in $((SECONDS - START)) s; image sizes:"
for line in "${REPORT[@]}"; do
    say "  $line"
done
