#!/usr/bin/env bash
# Imports images from containers-storage (where buildah and podman, run as root, keep them)
# into the single-node cluster's containerd, namespace k8s.io, so pods can run them with
# imagePullPolicy IfNotPresent or Never (no registry is reachable):
#
#   scripts/cluster/load-images.sh IMAGE...
#   scripts/cluster/load-images.sh ghcr.io/taskq-dev/taskq-api:0.1.0 localhost/taskq-local/redis:7.0.15
#
# The cluster must be up (scripts/cluster/up.sh). Each imported image is labelled with its
# containers-storage image id; an image whose id is already there is skipped, so calling it
# again after a rebuild imports only what changed.
set -euo pipefail
# shellcheck source=scripts/cluster/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -gt 0 ]] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ -S "$CONTAINERD_SOCK" ]] && ctr_ version >/dev/null 2>&1 ||
  die "the cluster's containerd is not running ($CONTAINERD_SOCK); start the cluster with scripts/cluster/up.sh"

loaded=0 skipped=0
for image in "$@"; do
  id="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null)" ||
    die "image $image is not in containers-storage (see \`podman images\`); build it first"
  # Captured first: with pipefail, `ctr ... | grep -q` can fail when grep exits early.
  listed="$(ctr_ images ls "name==$image" 2>/dev/null || true)"
  if [[ "$listed" == *"dev.taskq.image-id=$id"* ]]; then
    skipped=$((skipped + 1))
    continue
  fi
  t=$SECONDS
  # docker-archive keeps the full name (RepoTags), which `ctr import` uses as the image name.
  if ! podman save --format docker-archive "$image" 2>/dev/null | ctr_ images import - >/dev/null; then
    die "importing $image into containerd failed"
  fi
  ctr_ images label "$image" "dev.taskq.image-id=$id" >/dev/null
  loaded=$((loaded + 1))
  log "loaded $image (${id:0:12}) in $((SECONDS - t))s"
done
log "images: $loaded loaded, $skipped already present"
