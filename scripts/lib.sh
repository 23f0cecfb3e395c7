# shellcheck shell=bash
# Shared helpers for taskq's scripts. Source it; do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# What it owns:
# - TASKQ_ROOT (the repository root) and TASKQ_TMP (its gitignored .tmp/ directory, where
#   pid files and service logs live);
# - MONGO_CACHE: where mongo-java-server's jars are cached, outside the repository
#   (${TASKQ_MONGO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskq/mongo-test-server});
# - starting and stopping mongo-java-server and a development redis-server in the
#   background, each with a pid file .tmp/<service>-<port>.pid and a log
#   .tmp/<service>-<port>.log (the mongo log is removed when the server is stopped, since
#   test runs use a new port each time). A pid file is only ever used to stop the process it names
#   after checking that the process is still the service we started.

TASKQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TASKQ_TMP="$TASKQ_ROOT/.tmp"
MONGO_CACHE="${TASKQ_MONGO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskq/mongo-test-server}"
MONGO_LIB="$MONGO_CACHE/lib"
MONGO_POM="$TASKQ_ROOT/scripts/mongo-test-server/pom.xml"
MONGO_LAUNCHER="$TASKQ_ROOT/scripts/mongo-test-server/MongoTestServer.java"
# Where built tools and downloads are cached between runs, outside the repository.
# shellcheck disable=SC2034 # used by the scripts that source this file
TASKQ_CACHE_DIR="${TASKQ_CACHE:-$HOME/.cache/taskq}"
# The JVM options of mongo-java-server. ZGC, because the JVM's default collector (G1,
# aiming at 200 ms pauses) stopped the server for 60-130 ms about once a second under
# taskq-bench's write rate: a raw insert_one's p99 at 2,000/s was 65-133 ms with G1 and
# 2.3-5.0 ms with ZGC (README, Benchmark). A real MongoDB has no such pauses, so they
# would only hide taskq's own latency. The heap bound keeps several servers side by side.
MONGO_JAVA_OPTS="${TASKQ_MONGO_JAVA_OPTS:--XX:+UseZGC -Xmx4g}"
# Seconds a service may take to answer after it was started.
SERVICE_TIMEOUT="${TASKQ_SERVICE_TIMEOUT:-60}"

# Rust installed by rustup but not on PATH (fresh shells on CI machines).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

log() { printf '==> %s\n' "$*" >&2; }
# The calling script's usage: its header comment, from line 2 to `set -euo pipefail`.
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
# etcd_flags NAME DATA_DIR CLIENT_PORT PEER_PORT: the flags of a one-member etcd on
# loopback without fsync (the test API server's and the single-node cluster's), one a line.
etcd_flags() {
    local name="$1" dir="$2" client="http://127.0.0.1:$3" peer="http://127.0.0.1:$4"
    printf '%s\n' --name "$name" --data-dir "$dir" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$name=$peer" --unsafe-no-fsync
}
warn() { printf 'warning: %s\n' "$*" >&2; }
# image_bins LIST: the comma-separated subset LIST of api,worker,controller (the images
# of scripts/images/) as the array BINS; dies naming an entry that is none of them.
image_bins() {
    local b
    IFS=, read -r -a BINS <<<"$1"
    for b in "${BINS[@]}"; do
        case "$b" in api | worker | controller) ;; *) die "--bins: '$b' is not api, worker or controller" ;; esac
    done
}
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
# The release binaries, built in one `cargo build --release --locked "${RELEASE_PACKAGES[@]}"`
# by every script that needs any of them (dev.sh, cluster/test.sh): cargo unifies the
# features of shared crates over the packages of one build, so a build of a smaller set
# would compile those crates again instead of reusing the artefacts.
RELEASE_PACKAGES=(-p taskq-api -p taskq-worker -p taskq-controller -p taskq-cli)
# need COMMAND[:PACKAGE]...: dies naming the first COMMAND not on PATH and the Debian
# package that has it (PACKAGE, or COMMAND itself when no package is named).
need() {
    local tool
    for tool in "$@"; do
        command -v "${tool%%:*}" >/dev/null ||
            die "${tool%%:*} not found (apt-get install ${tool#*:})"
    done
}

# Runs a command as root: directly when we are root, through sudo when it exists.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# port_open HOST PORT: whether something accepts TCP connections on HOST:PORT.
port_open() {
    # shellcheck disable=SC2016 # $1 and $2 expand in the inner shell.
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# free_port: prints a TCP port on 127.0.0.1 that is free right now.
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 12000))
        if ! port_open 127.0.0.1 "$port"; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

# log_tail FILE: the last lines of a service log, indented, for error messages.
log_tail() {
    if [ -s "$1" ]; then
        tail -n 40 "$1" | sed 's/^/    /' >&2
    fi
}

# pid_alive PID [PATTERN]: whether PID runs and (if given) its command line contains PATTERN.
pid_alive() {
    local pid="$1" pattern="${2:-}"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ -z "$pattern" ] && return 0
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# stop_pid PID PATTERN NAME: SIGTERM, wait up to 10 s, then SIGKILL. Only acts when PID
# still is the process we started (its command line contains PATTERN).
stop_pid() {
    local pid="$1" pattern="$2" name="$3"
    pid_alive "$pid" "$pattern" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        pid_alive "$pid" "$pattern" || return 0
        sleep 0.1
    done
    warn "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# wait_for_port NAME PORT PID LOG: waits until 127.0.0.1:PORT answers, failing early if
# PID exits and after SERVICE_TIMEOUT seconds otherwise (with the log's tail).
wait_for_port() {
    local name="$1" port="$2" pid="$3" logfile="$4"
    local deadline=$((SECONDS + SERVICE_TIMEOUT))
    until port_open 127.0.0.1 "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            printf 'error: %s exited before listening on 127.0.0.1:%s; its log (%s):\n' \
                "$name" "$port" "$logfile" >&2
            log_tail "$logfile"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            printf 'error: %s did not listen on 127.0.0.1:%s within %s s; its log (%s):\n' \
                "$name" "$port" "$SERVICE_TIMEOUT" "$logfile" >&2
            log_tail "$logfile"
            return 1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------
# mongo-java-server

# mongo_jars_ready: whether the jar cache is complete for the current pom.xml.
mongo_jars_ready() {
    [ -f "$MONGO_LIB/.complete" ] &&
        [ "$(cat "$MONGO_LIB/.complete")" = "$(sha256sum <"$MONGO_POM" | cut -d' ' -f1)" ]
}

# mongo_fetch_jars: downloads mongo-java-server and its dependencies into MONGO_LIB (via a
# temporary directory, so an interrupted download never leaves a half-filled cache).
mongo_fetch_jars() {
    command -v mvn >/dev/null 2>&1 || die "mvn not found; run scripts/setup.sh"
    mkdir -p "$MONGO_CACHE"
    local staging
    staging="$(mktemp -d "$MONGO_CACHE/lib.tmp.XXXXXX")"
    if ! mvn -B -q -Dstyle.color=never -f "$MONGO_POM" dependency:copy-dependencies \
        -DoutputDirectory="$staging" >"$staging/.mvn.log" 2>&1; then
        cat "$staging/.mvn.log" >&2
        rm -rf "$staging"
        die "maven could not fetch mongo-java-server (its output is above)"
    fi
    rm -f "$staging/.mvn.log"
    sha256sum <"$MONGO_POM" | cut -d' ' -f1 >"$staging/.complete"
    rm -rf "$MONGO_LIB"
    mv "$staging" "$MONGO_LIB"
}

mongo_pidfile() { echo "$TASKQ_TMP/mongo-$1.pid"; }
mongo_logfile() { echo "$TASKQ_TMP/mongo-$1.log"; }

# mongo_start [PORT]: starts mongo-java-server on PORT (a free port when omitted) in the
# background, waits until it answers, and sets MONGO_PORT and MONGO_URI. The server keeps
# running after the calling script exits; stop it with mongo_stop PORT.
mongo_start() {
    local port="${1:-}"
    mongo_jars_ready || die "mongo-java-server jars missing in $MONGO_LIB; run scripts/setup.sh"
    command -v java >/dev/null 2>&1 || die "java not found; run scripts/setup.sh"
    [ -n "$port" ] || port="$(free_port)"
    if port_open 127.0.0.1 "$port"; then
        die "port $port is already in use; stop what listens there or choose another port"
    fi
    mkdir -p "$TASKQ_TMP"
    local pidfile logfile pid
    pidfile="$(mongo_pidfile "$port")"
    logfile="$(mongo_logfile "$port")"
    # Run from the cache so the single-file launcher's compilation touches nothing in the
    # repository; stdin/stdout/stderr are detached so callers may capture our output.
    # shellcheck disable=SC2086 # MONGO_JAVA_OPTS holds several words
    (cd "$MONGO_CACHE" && exec nohup java $MONGO_JAVA_OPTS -cp "$MONGO_LIB/*" "$MONGO_LAUNCHER" "$port") \
        </dev/null >"$logfile" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    if ! wait_for_port "mongo-java-server" "$port" "$pid" "$logfile"; then
        stop_pid "$pid" MongoTestServer mongo-java-server
        rm -f "$pidfile"
        return 1
    fi
    # shellcheck disable=SC2034 # results for the caller
    MONGO_PORT="$port"
    # shellcheck disable=SC2034
    MONGO_URI="mongodb://127.0.0.1:$port"
    log "mongo-java-server listening on 127.0.0.1:$port (pid $pid, log $logfile)"
}

# mongo_stop PORT: stops the mongo-java-server started on PORT by mongo_start.
mongo_stop() {
    local port="$1" pidfile
    pidfile="$(mongo_pidfile "$port")"
    [ -f "$pidfile" ] || return 0
    stop_pid "$(cat "$pidfile")" MongoTestServer "mongo-java-server on port $port"
    rm -f "$pidfile" "$(mongo_logfile "$port")"
}

# mongo_started_ports: ports of every mongo-java-server with a pid file.
mongo_started_ports() {
    local f
    for f in "$TASKQ_TMP"/mongo-*.pid; do
        [ -e "$f" ] || continue
        f="${f##*/mongo-}"
        echo "${f%.pid}"
    done
}

# ---------------------------------------------------------------------------------------
# redis-server for the local demo (tests start their own through taskq-testkit)

redis_pidfile() { echo "$TASKQ_TMP/redis-$1.pid"; }
redis_logfile() { echo "$TASKQ_TMP/redis-$1.log"; }

# redis_start PORT: starts an in-memory redis-server on 127.0.0.1:PORT in the background
# and waits until it answers PING.
redis_start() {
    local port="$1" pidfile logfile pid
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found; run scripts/setup.sh"
    mkdir -p "$TASKQ_TMP"
    pidfile="$(redis_pidfile "$port")"
    logfile="$(redis_logfile "$port")"
    nohup redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$TASKQ_TMP" </dev/null >"$logfile" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    if ! wait_for_port "redis-server" "$port" "$pid" "$logfile"; then
        stop_pid "$pid" redis-server redis-server
        rm -f "$pidfile"
        return 1
    fi
    local deadline=$((SECONDS + SERVICE_TIMEOUT))
    until [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "redis-server on port $port does not answer PING"
        sleep 0.1
    done
    log "redis-server listening on 127.0.0.1:$port (pid $pid, log $logfile)"
}

# redis_stop PORT: stops the redis-server started on PORT by redis_start.
redis_stop() {
    local port="$1" pidfile
    pidfile="$(redis_pidfile "$port")"
    [ -f "$pidfile" ] || return 0
    stop_pid "$(cat "$pidfile")" redis-server "redis-server on port $port"
    rm -f "$pidfile"
}
