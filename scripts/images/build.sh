#!/usr/bin/env bash
# Builds taskq's container images with buildah, without any container registry:
#
#   scripts/images/build.sh               full multi-stage build of the api, worker and
#                                         controller images from the Dockerfile, then the
#                                         local infrastructure images (--infra)
#   scripts/images/build.sh --prebuilt    the same three images from the release binaries
#                                         in target/release (run `cargo build --release
#                                         --locked -p taskq-api -p taskq-worker -p
#                                         taskq-controller` first) through the Dockerfile's
#                                         runtime stage only (--target prebuilt; the
#                                         binaries lose their debug info first, as in
#                                         the builder stage): the fast path for CI
#   scripts/images/build.sh --infra       only the infrastructure images
#
# Other flags (combine freely):
#   --no-infra        skip the infrastructure images
#   --bins LIST       comma-separated subset of api,worker,controller (default: all three)
#   --cold            full build with an empty cargo cache and no cached layers (removes
#                     buildah's cache mounts and passes --no-cache), to measure a cold build
#   --rebase          re-create the local base images (debootstrap runs again only when its
#                     cached tarball is missing)
#
# Images (tag = appVersion of charts/taskq/Chart.yaml, so the chart finds them as-is):
#   ghcr.io/taskq-dev/taskq-{api,worker,controller}:<appVersion>
#   localhost/taskq-local/redis:<Debian redis version>  Debian's redis-server + redis-cli, uid 999
#   localhost/taskq-local/mongo:test      mongo-java-server on a JRE 17 with `mongod` and
#                                         `mongosh` shims (in memory, no authentication)
#   localhost/taskq-local/curl:bookworm   minimal Debian + curl + sh, for `helm test`
# Local stand-ins, made only where the registry cannot be reached (the script says so):
#   docker.io/library/rust:1.95-slim-bookworm   debootstrap'd bookworm + this machine's Rust
#                                               toolchain (same ENV as the official image)
#   gcr.io/distroless/cc-debian12:nonroot       FROM scratch: glibc, libgcc-s1, CA
#                                               certificates, tzdata, passwd/group with
#                                               nonroot 65532; no shell, no package manager
#   localhost/taskq-local/debian:bookworm       debootstrap --variant=minbase, the base of
#                                               the stand-ins and the infrastructure images
# The debootstrap tarball and a copy of the toolchain are cached outside the repository in
# ${TASKQ_IMAGES_CACHE:-~/.cache/taskq/images}; the images live in buildah's storage
# (/var/lib/containers/storage, shared with podman). scripts/images/test.sh runs them.
#
# Images (measured here: 2 cores shared with other builds, load 4-17; Debian bookworm,
# buildah 1.28, Rust 1.95): api 32.5 MB, worker 30.4 MB, controller 30.5 MB (binaries
# without debug info on the 7.2 MB distroless stand-in); redis 91.8 MB, mongo 307 MB, curl
# 92.7 MB. Cold full build (empty cargo cache, no cached layers): 34m19s for the api image
# (cargo-chef install, `cargo chef cook` of every dependency, then the api); the worker and
# controller then reuse the dependency layer: 7m53s and 4m04s (measured with downloads
# cached; 32m45s for all three). Warm rebuild, nothing changed: 10 s for all three. After a
# source change each image recompiles the workspace crates and the dependencies whose
# features differ from the workspace-wide cook: 4-8 min per image. --prebuilt: 9-27 s for
# all three. --infra: 3m47s the first time (debootstrap ~1 min), 17 s with cached layers.
# Making the stand-ins the first time: rust ~1 min, distroless ~20 s.
#
# Needs root (buildah, debootstrap), buildah, podman (sizes), debootstrap, and for the
# mongo image Java 17 + Maven (scripts/lib.sh fetches the jars).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$HERE/../lib.sh"

CACHE="${TASKQ_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskq/images}"
DEBIAN_BASE=localhost/taskq-local/debian:bookworm
REDIS_REPO=localhost/taskq-local/redis
MONGO_IMAGE=localhost/taskq-local/mongo:test
CURL_IMAGE=localhost/taskq-local/curl:bookworm
DEBIAN_MIRROR="${TASKQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

say() { printf 'images: %s\n' "$*" >&2; }
fail() {
    printf 'images: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# arguments

mode=full
infra=yes
bins=api,worker,controller
cold=no
rebase=no
while [ "$#" -gt 0 ]; do
    case "$1" in
        --prebuilt) mode=prebuilt ;;
        --infra) mode=none; infra=yes ;;
        --no-infra) infra=no ;;
        --bins) bins="$2"; shift ;;
        --bins=*) bins="${1#*=}" ;;
        --cold) cold=yes ;;
        --rebase) rebase=yes ;;
        -h | --help) usage; exit 0 ;;
        *) fail "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
image_bins "$bins"

[ "$(id -u)" -eq 0 ] || fail "run as root (buildah's storage and debootstrap need it)"
need buildah podman runc

# Arguments every buildah build gets: this machine's runc, its network for apt and cargo,
# and never a registry pull (every base image is present or made locally first).
BUD=(buildah bud --runtime runc --network host --pull=never --layers)

START=$SECONDS
declare -a REPORT=()

# The chart's appVersion: the tag the chart pulls when image.tag is empty.
APP_VERSION="$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}.*/\1/p' \
    "$TASKQ_ROOT/charts/taskq/Chart.yaml")"
[ -n "$APP_VERSION" ] || fail "no appVersion in charts/taskq/Chart.yaml"

# A Dockerfile ARG's default value.
dockerfile_arg() {
    sed -n "s/^ARG $1=\(.*\)$/\1/p" "$TASKQ_ROOT/Dockerfile" | head -n1
}
RUST_VERSION="$(dockerfile_arg RUST_VERSION)"
DEBIAN_RELEASE="$(dockerfile_arg DEBIAN_RELEASE)"
RUST_IMAGE="docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}"
RUNTIME_IMAGE="$(sed -n 's/^FROM \([^ ]*\) AS runtime-base$/\1/p' "$TASKQ_ROOT/Dockerfile")"
if [ -z "$RUST_VERSION" ] || [ -z "$RUNTIME_IMAGE" ]; then
    fail "cannot read the base images from the Dockerfile"
fi
[ "$DEBIAN_RELEASE" = bookworm ] || fail "the local stand-ins are made for bookworm, the Dockerfile asks for $DEBIAN_RELEASE"

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }
image_label() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }
image_mb() {
    local bytes
    bytes="$(podman image inspect --format '{{.Size}}' "$1")"
    awk -v b="$bytes" 'BEGIN { printf "%.1f MB", b / 1000000 }'
}
elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# try_pull IMAGE: whether IMAGE is in the local storage, pulling it when a registry answers.
# Prints why a pull failed on stderr.
try_pull() {
    local img="$1" out
    image_exists "$img" && return 0
    if out="$(timeout 120 buildah pull --quiet "$img" 2>&1)"; then
        say "pulled $img"
        return 0
    fi
    say "cannot pull $img: $(printf '%s' "$out" | grep -m1 -i error || printf '%s' "$out" | tail -n1)"
    return 1
}

# ---------------------------------------------------------------------------------------
# localhost/taskq-local/debian:bookworm: debootstrap --variant=minbase, slimmed like the
# official debian:bookworm-slim (no docs, man pages or locales; apt without recommends).

debian_base() {
    local tarball="$CACHE/debian-bookworm-minbase.tar"
    if [ "$rebase" = no ] && image_exists "$DEBIAN_BASE"; then
        return
    fi
    mkdir -p "$CACHE"
    if [ ! -s "$tarball" ]; then
        need debootstrap
        local root="$CACHE/rootfs.tmp"
        rm -rf "$root"
        say "debootstrap --variant=minbase bookworm into $root (about a minute)"
        if ! debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
            tail -n 30 "$CACHE/debootstrap.log" >&2
            fail "debootstrap failed; its log: $CACHE/debootstrap.log"
        fi
        rm -f "$root/etc/apt/sources.list"
        cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        cat >"$root/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
# Like debian:bookworm-slim: no documentation, man pages or translations in images.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
        cat >"$root/etc/apt/apt.conf.d/docker" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
        printf '#!/bin/sh\n# No services start while images are built.\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
        chmod 0755 "$root/usr/sbin/policy-rc.d"
        find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
        find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
        [ -n "$root" ] || fail "empty rootfs path"
        rm -rf "${root:?}"/usr/share/{man,info,groff,lintian,linda}/* "$root"/var/lib/apt/lists/* \
            "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
            "${root:?}"/var/log/apt/* "${root:?}"/dev/* "${root:?}"/run/* "${root:?}"/tmp/* "${root:?}"/var/tmp/*
        find "$root/usr/share/locale" -mindepth 1 -not -name locale.alias -delete
        : >"$root/etc/resolv.conf"
        echo localhost >"$root/etc/hostname"
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
    fi
    say "making $DEBIAN_BASE from $tarball"
    local ctr
    ctr="$(buildah from --pull=never scratch)"
    buildah add --quiet "$ctr" "$tarball" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd '["bash"]' --label dev.taskq.local=debootstrap-minbase "$ctr"
    buildah commit --quiet --rm "$ctr" "$DEBIAN_BASE" >/dev/null
}

# ---------------------------------------------------------------------------------------
# docker.io/library/rust:<RUST_VERSION>-slim-bookworm: the Debian base + gcc and libc6-dev
# (as in the official slim image) + this machine's toolchain under /usr/local/rustup and
# /usr/local/cargo, with the official image's ENV.

rust_base() {
    local tdir rustc_version
    if ! command -v rustup >/dev/null || ! command -v rustc >/dev/null; then
        fail "no rustup toolchain on this machine (install Rust $RUST_VERSION with rustup)"
    fi
    # The toolchain rustc resolves to here (rustup's default or override).
    tdir="$(cd "$HERE" && rustc --print sysroot)"
    rustc_version="$("$tdir/bin/rustc" --version | cut -d' ' -f2)"
    case "$rustc_version" in
        "$RUST_VERSION" | "$RUST_VERSION".*) ;;
        *) fail "this machine's Rust is $rustc_version, the Dockerfile asks for $RUST_VERSION: install it (rustup toolchain install $RUST_VERSION && rustup default $RUST_VERSION) or pull $RUST_IMAGE" ;;
    esac
    # CA certificates this machine adds to Debian's (/usr/local/share/ca-certificates, e.g.
    # a TLS-inspecting egress proxy's): cargo inside the build needs them to reach crates.io.
    local extra_ca=() key
    mapfile -t extra_ca < <(find /usr/local/share/ca-certificates -name '*.crt' -type f 2>/dev/null | sort)
    key="rust-$rustc_version"
    if [ "${#extra_ca[@]}" -gt 0 ]; then
        key="$key+ca-$(cat "${extra_ca[@]}" | sha256sum | cut -c1-12)"
    fi
    if [ "$rebase" = no ] && image_exists "$RUST_IMAGE"; then
        local made
        made="$(image_label "$RUST_IMAGE" dev.taskq.local)"
        if [ -z "$made" ] || [ "$made" = "$key" ]; then
            [ -n "$made" ] && say "using the local stand-in $RUST_IMAGE (Rust $rustc_version)"
            return
        fi
    fi
    if [ "$rebase" = no ] && ! image_exists "$RUST_IMAGE" && try_pull "$RUST_IMAGE"; then
        return
    fi
    say "making a local stand-in for $RUST_IMAGE: $DEBIAN_BASE + gcc + libc6-dev + this machine's Rust $rustc_version"
    debian_base
    # The toolchain without its HTML docs (rust-docs, ~800 MB), as toolchain name
    # <version>-x86_64-unknown-linux-gnu like rustup's minimal profile in the official image.
    local name="$rustc_version-x86_64-unknown-linux-gnu"
    local tar="$CACHE/rust-$rustc_version.tar"
    if [ ! -s "$tar" ]; then
        say "copying the toolchain $tdir into $tar"
        local stage="$CACHE/rust.tmp"
        rm -rf "$stage"
        mkdir -p "$stage/rustup/toolchains" "$stage/cargo/bin"
        cp -a "$(readlink -f "$tdir")" "$stage/rustup/toolchains/$name"
        rm -rf "$stage/rustup/toolchains/$name/share/doc"
        sed -i '/^rust-docs-/d' "$stage/rustup/toolchains/$name/lib/rustlib/components"
        rm -f "$stage/rustup/toolchains/$name/lib/rustlib/manifest-rust-docs-"*
        printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" >"$stage/rustup/settings.toml"
        local rustup_bin
        rustup_bin="$(command -v rustup)"
        cp "$(readlink -f "$rustup_bin")" "$stage/cargo/bin/rustup"
        local p
        for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-gdbgui rust-lldb; do
            ln "$stage/cargo/bin/rustup" "$stage/cargo/bin/$p"
        done
        chmod -R a+w "$stage/rustup" "$stage/cargo"
        tar --numeric-owner --owner=0 --group=0 -C "$stage" -cf "$tar.tmp" rustup cargo
        mv "$tar.tmp" "$tar"
        rm -rf "$stage"
    fi
    local ctr
    ctr="$(buildah from --pull=never "$DEBIAN_BASE")"
    # shellcheck disable=SC2064 # remove this container if anything below fails
    trap "buildah rm $ctr >/dev/null 2>&1 || true" EXIT
    buildah run --runtime runc --network host "$ctr" -- sh -ec \
        'apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates gcc libc6-dev wget >/dev/null && rm -rf /var/lib/apt/lists/*'
    buildah add --quiet "$ctr" "$tar" /usr/local/ >/dev/null
    if [ "${#extra_ca[@]}" -gt 0 ]; then
        say "adding this machine's CA certificates (${extra_ca[*]}) to the stand-in, so cargo can reach crates.io as it does here"
        buildah copy --quiet "$ctr" "${extra_ca[@]}" /usr/local/share/ca-certificates/ >/dev/null
        buildah run --runtime runc "$ctr" -- update-ca-certificates >/dev/null
    fi
    buildah config \
        --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env RUST_VERSION="$rustc_version" \
        --label dev.taskq.local="$key" --cmd '["bash"]' "$ctr"
    buildah commit --quiet --rm "$ctr" "$RUST_IMAGE" >/dev/null
    trap - EXIT
    say "made $RUST_IMAGE ($(image_mb "$RUST_IMAGE"))"
}

# ---------------------------------------------------------------------------------------
# gcr.io/distroless/cc-debian12:nonroot, FROM scratch (scripts/images/runtime.Containerfile).

runtime_base() {
    if [ "$rebase" = no ] && image_exists "$RUNTIME_IMAGE" &&
        [ -z "$(image_label "$RUNTIME_IMAGE" dev.taskq.local)" ]; then
        return # the real one, pulled earlier
    fi
    if [ "$rebase" = no ] && ! image_exists "$RUNTIME_IMAGE" && try_pull "$RUNTIME_IMAGE"; then
        return
    fi
    debian_base
    say "making the local stand-in $RUNTIME_IMAGE (FROM scratch: glibc, libgcc-s1, CA certificates, tzdata; no shell; cached layers when unchanged)"
    "${BUD[@]}" --quiet -f "$HERE/runtime.Containerfile" --build-arg "DEBIAN_BASE=$DEBIAN_BASE" \
        -t "$RUNTIME_IMAGE" "$HERE" >/dev/null
    say "made $RUNTIME_IMAGE ($(image_mb "$RUNTIME_IMAGE"))"
}

# ---------------------------------------------------------------------------------------
# taskq images

image_name() { echo "ghcr.io/taskq-dev/taskq-$1:$APP_VERSION"; }

# snapshot_context: copies the build context (the repository without .git, target/ and
# .tmp/; the Dockerfile's .dockerignore still applies) to $CACHE/context and prints its
# path. Buildah reads the context at each COPY, not once at the start like docker: building
# from a snapshot keeps the planner's recipe, the builder's sources and all three images on
# the same tree while files in the repository change.
snapshot_context() {
    local ctx="$CACHE/context"
    rm -rf "$ctx.tmp"
    mkdir -p "$ctx.tmp"
    tar -C "$TASKQ_ROOT" --exclude=./.git --exclude=./target --exclude=./.tmp -cf - . |
        tar -C "$ctx.tmp" -xf -
    rm -rf "$ctx"
    mv "$ctx.tmp" "$ctx"
    echo "$ctx"
}

build_full() {
    rust_base
    runtime_base
    local ctx
    ctx="$(snapshot_context)"
    say "building from a snapshot of $TASKQ_ROOT in $ctx (git $(git -C "$TASKQ_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$TASKQ_ROOT" diff --quiet HEAD -- Cargo.toml Cargo.lock crates Dockerfile 2>/dev/null || echo ' + uncommitted changes'))"
    local extra=()
    if [ "$cold" = yes ]; then
        # Buildah keeps RUN --mount=type=cache directories here (1.28: buildah-cache; newer
        # releases add the uid).
        local cachedir="${TMPDIR:-/var/tmp}/buildah-cache"
        say "cold build: removing buildah's cache mounts ($cachedir) and building without cached layers"
        rm -rf "$cachedir" "$cachedir-$(id -u)"
        extra=(--no-cache)
    fi
    local b t0 name
    for b in "${BINS[@]}"; do
        name="$(image_name "$b")"
        t0=$SECONDS
        say "building $name (full multi-stage build, BIN=$b)"
        (cd "$ctx" && nice -n 10 "${BUD[@]}" "${extra[@]}" -f Dockerfile \
            --build-arg "BIN=$b" -t "$name" .)
        REPORT+=("$name  $(image_mb "$name")  built in $(elapsed $((SECONDS - t0)))")
        say "${REPORT[-1]}"
        # Only the first image is built cold: the others share its dependency layer.
        extra=()
    done
}

build_prebuilt() {
    runtime_base
    local b t0 name bin holder ctr
    for b in "${BINS[@]}"; do
        bin="$TASKQ_ROOT/target/release/taskq-$b"
        [ -x "$bin" ] || fail "$bin is missing: run cargo build --release --locked ${RELEASE_PACKAGES[*]}"
        if [ -n "$(find "$TASKQ_ROOT/crates" "$TASKQ_ROOT/Cargo.lock" -newer "$bin" -type f -print -quit)" ]; then
            say "warning: $bin is older than the sources; the image holds the old build"
        fi
        name="$(image_name "$b")"
        t0=$SECONDS
        # An image that holds only /out/taskq, which the Dockerfile's `prebuilt` target
        # copies (PREBUILT_IMAGE) onto the same runtime-base the full build uses.
        holder="localhost/taskq-local/prebuilt-$b:latest"
        # Without debug info, as the Dockerfile's builder stage leaves it.
        local stripped="$CACHE/prebuilt-taskq-$b"
        mkdir -p "$CACHE"
        strip --strip-debug -o "$stripped" "$bin"
        ctr="$(buildah from --pull=never scratch)"
        buildah copy --quiet --chmod 0755 "$ctr" "$stripped" /out/taskq >/dev/null
        rm -f "$stripped"
        buildah commit --quiet --rm "$ctr" "$holder" >/dev/null
        say "building $name from $bin (Dockerfile --target prebuilt, PREBUILT_IMAGE=$holder)"
        (cd "$TASKQ_ROOT" && "${BUD[@]}" --quiet -f Dockerfile --target prebuilt \
            --build-arg "BIN=$b" --build-arg "PREBUILT_IMAGE=$holder" -t "$name" . >/dev/null)
        # Buildah 1.28 leaves the working container of a FROM-only stage behind.
        buildah containers --quiet --filter "ancestor=$holder" | xargs -r buildah rm >/dev/null
        buildah rmi "$holder" >/dev/null
        REPORT+=("$name  $(image_mb "$name")  built in $(elapsed $((SECONDS - t0))) from target/release")
        say "${REPORT[-1]}"
    done
}

# ---------------------------------------------------------------------------------------
# infrastructure images for the chart's bundled StatefulSets and `helm test`

build_infra() {
    debian_base
    local t0 name version
    t0=$SECONDS
    say "building $REDIS_REPO (Debian's redis-server)"
    "${BUD[@]}" --quiet -f "$HERE/redis.Containerfile" --build-arg "DEBIAN_BASE=$DEBIAN_BASE" \
        -t "$REDIS_REPO:building" "$HERE" >/dev/null
    local ctr
    ctr="$(buildah from --pull=never "$REDIS_REPO:building")"
    version="$(buildah run --runtime runc "$ctr" -- redis-server --version | sed -n 's/.* v=\([0-9.]*\) .*/\1/p')"
    buildah rm "$ctr" >/dev/null
    [ -n "$version" ] || fail "redis-server --version in the new image printed no version"
    buildah tag "$REDIS_REPO:building" "$REDIS_REPO:$version"
    buildah rmi "$REDIS_REPO:building" >/dev/null
    REPORT+=("$REDIS_REPO:$version  $(image_mb "$REDIS_REPO:$version")  built in $(elapsed $((SECONDS - t0)))")
    say "${REPORT[-1]}"

    t0=$SECONDS
    say "building $MONGO_IMAGE (mongo-java-server on OpenJDK 17 JRE headless)"
    mongo_jars_ready || mongo_fetch_jars
    need javac:openjdk-17-jdk-headless
    local ctx="$CACHE/mongo-context"
    rm -rf "$ctx"
    mkdir -p "$ctx/classes"
    cp -a "$MONGO_LIB" "$ctx/lib"
    rm -f "$ctx/lib/.complete"
    javac -nowarn --release 17 -cp "$MONGO_LIB/*" -d "$ctx/classes" "$HERE/mongo/MongoTestServer.java"
    cp "$HERE/mongo/mongod" "$HERE/mongo/mongosh" "$HERE/mongo/docker-entrypoint.sh" "$ctx/"
    find "$MONGO_LIB" -name 'mongo-java-server-[0-9]*.jar' -printf '%f\n' |
        sed -n 's/^mongo-java-server-\([0-9.]*\)\.jar$/\1/p' >"$ctx/VERSION"
    "${BUD[@]}" --quiet -f "$HERE/mongo/Containerfile" --build-arg "DEBIAN_BASE=$DEBIAN_BASE" \
        -t "$MONGO_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
    REPORT+=("$MONGO_IMAGE  $(image_mb "$MONGO_IMAGE")  built in $(elapsed $((SECONDS - t0)))")
    say "${REPORT[-1]}"

    t0=$SECONDS
    say "building $CURL_IMAGE"
    "${BUD[@]}" --quiet -f "$HERE/curl.Containerfile" --build-arg "DEBIAN_BASE=$DEBIAN_BASE" \
        -t "$CURL_IMAGE" "$HERE" >/dev/null
    REPORT+=("$CURL_IMAGE  $(image_mb "$CURL_IMAGE")  built in $(elapsed $((SECONDS - t0)))")
    say "${REPORT[-1]}"
}

case "$mode" in
    full) build_full ;;
    prebuilt) build_prebuilt ;;
    none) ;;
esac
[ "$infra" = no ] || build_infra

say "done in $(elapsed $((SECONDS - START))):"
for line in "${REPORT[@]}"; do
    say "  $line"
done
