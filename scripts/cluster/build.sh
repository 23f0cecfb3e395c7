#!/usr/bin/env bash
# Builds what the single-node cluster needs besides the Kubernetes binaries, once, into
# the cache outside the repository (up.sh calls it; it is a no-op when all is there):
#
#   scripts/cluster/build.sh            # binaries + images
#   scripts/cluster/build.sh binaries   # only the Go binaries
#   scripts/cluster/build.sh images     # only the images (needs the binaries)
#
# Binaries ($TASKQ_CACHE/cluster/bin, default ~/.cache/taskq/cluster/bin), all from the Go
# module proxy in one `go build` so shared packages compile once:
#   coredns                 github.com/coredns/coredns (only the plugins the Corefile uses,
#                           see tools/coredns/main.go)
#   local-path-provisioner  github.com/rancher/local-path-provisioner (the PVC provisioner)
#   crictl                  sigs.k8s.io/cri-tools (down.sh removes pods through CRI with it)
#   pause                   tools/pause/main.go (the pod sandbox process)
# Images (containers-storage, built FROM scratch with buildah; no registry is needed):
#   localhost/taskq-cluster/pause, coredns, local-path-provisioner, and busybox (Debian's
#   busybox-static; the provisioner's helper pods and up.sh's check pods run it).
set -euo pipefail
# shellcheck source=scripts/cluster/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# gomod DIR REQUIRE...: writes DIR/go.mod requiring the given "module version" lines.
gomod() {
  local dir="$1"; shift
  mkdir -p "$dir"
  {
    echo "module taskq.dev/cluster-tools"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require ("
    printf '\t%s\n' "$@"
    echo ")"
  } > "$dir/go.mod"
}

# gobuild DIR BINARY... -- PACKAGE...: one `go build` of PACKAGEs in module DIR, the
# resulting BINARYs moved into $TOOLS_BIN.
gobuild() {
  local dir="$1"; shift
  local bins=() pkgs=()
  while [[ $# -gt 0 && "$1" != -- ]]; do bins+=("$1"); shift; done
  shift
  pkgs=("$@")
  log "resolving modules for ${bins[*]}"
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy -e >"$dir/tidy.log" 2>&1) ||
    log "go mod tidy reported problems (see $dir/tidy.log); building anyway"
  local out="$dir/.out" t=$SECONDS
  rm -rf "$out"; mkdir -p "$out"
  log "building ${bins[*]} in one go build"
  if ! (cd "$dir" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
        -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION \
        -X main.VERSION=$LPP_VERSION \
        -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
        -o "$out/" "${pkgs[@]}" >"$dir/build.log" 2>&1); then
    tail -n 40 "$dir/build.log" | sed 's/^/    /' >&2
    die "go build of ${bins[*]} failed (log: $dir/build.log)"
  fi
  local b
  for b in "${bins[@]}"; do mv "$out/$b" "$TOOLS_BIN/$b"; done
  rm -rf "$out"
  log "built ${bins[*]} in $((SECONDS - t))s"
}

build_binaries() {
  local start=$SECONDS built=0
  mkdir -p "$TOOLS_BIN"
  if [[ ! -x "$TOOLS_BIN/coredns" || ! -x "$TOOLS_BIN/crictl" || ! -x "$TOOLS_BIN/pause" ]]; then
    command -v go >/dev/null || die "go is not installed (needed to build coredns, crictl, pause)"
    # coredns and crictl share the Kubernetes client libraries: pin them to the release
    # the kube binaries were built from.
    local mod="$TOOLS/build/main"
    gomod "$mod" "github.com/coredns/coredns $COREDNS_VERSION" "sigs.k8s.io/cri-tools $CRICTL_VERSION" \
      "k8s.io/api v0.${KUBE_VERSION#1.}" "k8s.io/apimachinery v0.${KUBE_VERSION#1.}" "k8s.io/client-go v0.${KUBE_VERSION#1.}"
    mkdir -p "$mod/coredns" "$mod/pause"
    cp "$CLUSTER_SCRIPTS/tools/coredns/main.go" "$mod/coredns/main.go"
    cp "$CLUSTER_SCRIPTS/tools/pause/main.go" "$mod/pause/main.go"
    printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/cri-tools/cmd/crictl"\n' > "$mod/tools.go"
    gobuild "$mod" coredns crictl pause -- ./coredns ./pause sigs.k8s.io/cri-tools/cmd/crictl
    built=1
  fi
  if [[ ! -x "$TOOLS_BIN/local-path-provisioner" ]]; then
    command -v go >/dev/null || die "go is not installed (needed to build local-path-provisioner)"
    # A module of its own: one of its dependencies still imports github.com/Sirupsen/logrus,
    # which collides with crictl's github.com/sirupsen/logrus in one build.
    local mod="$TOOLS/build/local-path-provisioner"
    gomod "$mod" "github.com/rancher/local-path-provisioner $LPP_VERSION"
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/rancher/local-path-provisioner"\n' > "$mod/tools.go"
    gobuild "$mod" local-path-provisioner -- github.com/rancher/local-path-provisioner
    built=1
  fi
  [[ $built == 0 ]] || log "cluster binaries built in $((SECONDS - start))s"
}

# image_source IMAGE: the label recording what an infra image was built from ("" if none).
image_source() {
  podman image inspect --format '{{index .Labels "dev.taskq.cluster.source"}}' "$1" 2>/dev/null || true
}

# Bumped when the way an image is made changes, so cached images are rebuilt.
IMAGE_RECIPE=2

# build_image IMAGE SOURCE_ID ROOTFS_TAR USER ENTRYPOINT_JSON [CMD_JSON]: FROM scratch +
# the tar, labelled with what it was made from.
build_image() {
  local image="$1" source="$IMAGE_RECIPE:$2" tarball="$3" user="$4" entrypoint="$5" cmd="${6:-}"
  if [[ "$(image_source "$image")" == "$source" ]]; then return 0; fi
  log "building image $image"
  local c
  c="$(buildah from scratch)"
  buildah add --quiet "$c" "$tarball" / >/dev/null
  buildah config --user "$user" --entrypoint "$entrypoint" --cmd "$cmd" \
    --label "dev.taskq.cluster.source=$source" --os linux --arch amd64 "$c"
  buildah commit --quiet --rm "$c" "$image" >/dev/null
}

build_images() {
  need buildah
  local tmp b
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  for b in pause coredns local-path-provisioner; do
    [[ -x "$TOOLS_BIN/$b" ]] || die "$TOOLS_BIN/$b is missing: run scripts/cluster/build.sh binaries"
  done
  local busybox=/bin/busybox
  [[ -x "$busybox" ]] && file_is_static "$busybox" || busybox=/usr/bin/busybox
  [[ -x "$busybox" ]] || die "busybox-static is not installed (apt-get install busybox-static)"

  # pause: uid 65535 like upstream's image.
  mkdir -p "$tmp/pause"; cp "$TOOLS_BIN/pause" "$tmp/pause/pause"
  tar -C "$tmp/pause" -cf "$tmp/pause.tar" --owner=0 --group=0 .
  build_image "$PAUSE_IMAGE" "$(sha256sum < "$TOOLS_BIN/pause" | cut -c1-16)" "$tmp/pause.tar" 65535:65535 '["/pause"]'

  # coredns: non-root; the cluster's Corefile listens on 1053 (the Service maps 53 to it),
  # so the pod needs no NET_BIND_SERVICE.
  mkdir -p "$tmp/coredns/etc/coredns"; cp "$TOOLS_BIN/coredns" "$tmp/coredns/coredns"
  tar -C "$tmp/coredns" -cf "$tmp/coredns.tar" --owner=0 --group=0 .
  build_image "$COREDNS_IMAGE" "$(sha256sum < "$TOOLS_BIN/coredns" | cut -c1-16)" "$tmp/coredns.tar" 65532:65532 '["/coredns"]'

  mkdir -p "$tmp/lpp"; cp "$TOOLS_BIN/local-path-provisioner" "$tmp/lpp/local-path-provisioner"
  tar -C "$tmp/lpp" -cf "$tmp/lpp.tar" --owner=0 --group=0 .
  build_image "$LPP_IMAGE" "$(sha256sum < "$TOOLS_BIN/local-path-provisioner" | cut -c1-16)" "$tmp/lpp.tar" 65532:65532 '["/local-path-provisioner"]'

  # busybox: /bin/busybox plus one symlink per applet, /tmp, and a passwd naming 65532.
  local root="$tmp/busybox" applet
  mkdir -p "$root/bin" "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/tmp:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  tar -C "$root" -cf "$tmp/busybox.tar" --owner=0 --group=0 .
  # Like Docker Hub's busybox: no entrypoint, `sh` by default (`kubectl run -- nslookup x` works).
  build_image "$BUSYBOX_IMAGE" "$(sha256sum < "$busybox" | cut -c1-16)" "$tmp/busybox.tar" 0:0 '[]' '["sh"]'
}

file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

case "${1:-all}" in
  binaries) build_binaries ;;
  images) build_images ;;
  all) build_binaries; build_images ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
