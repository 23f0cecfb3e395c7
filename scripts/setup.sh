#!/usr/bin/env bash
# Installs what taskq's tests and local demo need, and nothing that is already there:
#
# - redis-server and redis-cli (Debian packages redis-server, redis-tools);
# - a JDK and Maven, only if missing (they run mongo-java-server, the MongoDB
#   wire-protocol server used by the tests and the demo);
# - curl, used by scripts/dev.sh;
# - promtool (Debian package prometheus), which checks and unit-tests the chart's alerts
#   (scripts/chart/alerts_test.py);
# - chromium and chromium-driver (Debian), the headless browser the dashboard tests drive
#   over WebDriver (about 32 s to install on a machine that has neither);
# - mongo-java-server's jars, fetched by Maven into the cache directory
#   ${TASKQ_MONGO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskq/mongo-test-server}/lib
#   (outside the repository; refetched when scripts/mongo-test-server/pom.xml changes).
#
# Idempotent and fast when everything is present: it only checks commands and a stamp
# file. Uses apt-get (as root, or through sudo when not root).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
command -v curl >/dev/null 2>&1 || packages+=(curl)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
# A Chrome that is already there (GitHub's Ubuntu runners ship google-chrome and
# chromedriver; Ubuntu's own chromium package is a snap stub) is used as it is.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 &&
    ! command -v google-chrome >/dev/null 2>&1; then
    packages+=(chromium)
fi
if ! command -v chromedriver >/dev/null 2>&1 && [ ! -x "${CHROMEWEBDRIVER:-/nonexistent}/chromedriver" ]; then
    packages+=(chromium-driver)
fi
# The single-file launcher compiles MongoTestServer.java, so a JRE is not enough.
if ! command -v java >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then
    packages+=(default-jdk-headless)
fi
if ! mongo_jars_ready && ! command -v mvn >/dev/null 2>&1; then
    packages+=(maven)
fi

if [ "${#packages[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${packages[*]} and apt-get is not available; install them by hand"
    log "installing ${packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null
fi

if ! mongo_jars_ready; then
    log "fetching mongo-java-server into $MONGO_LIB"
    mongo_fetch_jars
fi

if ! command -v cargo >/dev/null 2>&1; then
    warn "cargo not found: install Rust with rustup (https://rustup.rs) to build and test taskq"
fi

log "setup complete: redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), mongo-java-server jars in $MONGO_LIB"
