#!/bin/sh
# Entry point of localhost/taskq-local/mongo:test, shaped like the official mongo image's:
# the container's arguments are the command (`mongod ...` by default); arguments that start
# with a dash are mongod flags. MONGO_INITDB_ROOT_USERNAME/PASSWORD are accepted but do not
# create a user: mongo-java-server has no authentication, so clients connect without
# credentials.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- mongod "$@"
fi
if [ "$1" = mongod ] && [ -n "${MONGO_INITDB_ROOT_USERNAME:-}" ]; then
    echo "docker-entrypoint: MONGO_INITDB_ROOT_USERNAME is set, but mongo-java-server has no authentication: connect without credentials" >&2
fi
exec "$@"
