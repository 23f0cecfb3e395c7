#!/usr/bin/env bash
# Starts and stops mongo-java-server, the in-memory MongoDB wire-protocol server that
# taskq's tests and local demo use.
#
#   scripts/mongo.sh start [PORT]   start on PORT (default: a free port); prints the URI
#   scripts/mongo.sh stop [PORT]    stop the server on PORT (default: every one started)
#   scripts/mongo.sh status         list the servers started from this checkout
#
# `start` prints only the URI on stdout, so it can be captured:
#
#   export TASKQ_TEST_MONGODB_URI="$(scripts/mongo.sh start)"
#
# The server keeps running in the background (pid file and log in .tmp/) until stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

case "${1:-}" in
start)
    [ "$#" -le 2 ] || usage
    mongo_jars_ready || bash "$TASKQ_ROOT/scripts/setup.sh"
    mongo_start "${2:-}"
    echo "$MONGO_URI"
    ;;
stop)
    [ "$#" -le 2 ] || usage
    if [ -n "${2:-}" ]; then
        mongo_stop "$2"
    else
        for port in $(mongo_started_ports); do
            mongo_stop "$port"
            log "stopped mongo-java-server on port $port"
        done
    fi
    ;;
status)
    for port in $(mongo_started_ports); do
        pid="$(cat "$(mongo_pidfile "$port")")"
        if pid_alive "$pid" MongoTestServer; then
            echo "running: mongodb://127.0.0.1:$port (pid $pid)"
        else
            echo "stale pid file for port $port (pid $pid not running)"
        fi
    done
    ;;
*) usage ;;
esac
