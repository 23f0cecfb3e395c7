#!/usr/bin/env bash
# Stops the single-node cluster of scripts/cluster/up.sh and removes what it made:
#
#   scripts/cluster/down.sh
#
# Order: kubelet first (so nothing restarts pods), then every pod sandbox through CRI
# (crictl rmp: containers stopped, CNI torn down, network namespaces removed), leftover
# containers, kube-proxy (and its iptables rules: kube-proxy --cleanup), containerd and its
# shims, the control plane, etcd. Then the bridge taskq0, the iptables chains kube-proxy,
# the kubelet and the CNI plugins made for this cluster (KUBE-* and the CNI-* chains of the
# network "taskq"; other rules are left alone), mounts under the state dir and the state
# dir itself. Caches (~/.cache/taskq) and images in containers-storage are kept.
# Safe to call twice, and after a crash.
set -euo pipefail
# shellcheck source=scripts/cluster/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ "$(id -u)" == 0 ]] || die "run as root"
start=$SECONDS

# Processes whose command line contains STRING (scanned in /proc, so only ours match).
pids_with_arg() {
  local p
  for p in /proc/[0-9]*; do
    [[ "$({ tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null)" == *"$1"* ]] && echo "${p#/proc/}"
  done
  return 0
}

remove_pods() {
  [[ -S "$CONTAINERD_SOCK" ]] && running containerd || return 0
  if [[ -x "$TOOLS_BIN/crictl" ]]; then
    local n
    n="$(crictl_ pods -q 2>/dev/null | wc -l)"
    if [[ "$n" -gt 0 ]]; then
      log "removing $n pod sandboxes through CRI"
      crictl_ rmp -a -f >/dev/null 2>&1 || log "warning: crictl rmp -a -f failed; removing containers with ctr"
    fi
  fi
  # Whatever CRI did not remove: kill the tasks and delete the containers.
  local c
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    ctr_ tasks rm -f "$c" >/dev/null 2>&1 || true
    ctr_ containers rm "$c" >/dev/null 2>&1 || true
  done
}

stop_runtime() {
  stop containerd 20
  # Shims outlive containerd by design; those of this containerd name its socket.
  local p
  for p in $(pids_with_arg "-address $CONTAINERD_SOCK"); do
    log "killing containerd shim $p"
    kill -9 "$p" 2>/dev/null || true
  done
  local root="$STATE/containerd/runc/k8s.io" id
  if [[ -d "$root" ]]; then
    for id in $(runc --root "$root" list -q 2>/dev/null); do
      runc --root "$root" delete --force "$id" >/dev/null 2>&1 || true
    done
  fi
}

unmount_state() {
  local m n=0
  # Deepest first; mountinfo's 5th field is the mount point.
  for m in $(awk -v s="$STATE" '$5 == s || index($5, s "/") == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
    n=$((n + 1))
  done
  [[ $n == 0 ]] || log "unmounted $n mounts under $STATE"
}

remove_netns() {
  # containerd's CRI names pod network namespaces cni-<uuid>; remove those no process uses.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && ip netns delete "$ns" 2>/dev/null || true
  done
}

# clean_iptables IPTABLES: removes chains named KUBE-* and the CNI-* chains of the taskq
# network (rules commented name: "taskq"), and every rule that jumps to them or carries
# that comment. Rules of anybody else stay.
clean_iptables() {
  local ipt="$1" table rules chains chain rule
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    rules="$("$ipt" -w 5 -t "$table" -S 2>/dev/null)" || continue
    chains="$( {
      sed -nE 's/^-N (KUBE-[^ ]+)$/\1/p' <<<"$rules"
      { grep -F 'name: \"'"$CNI_NET_NAME"'\"' <<<"$rules" || true; } | sed -nE 's/.* -j (CNI-[^ ]+).*/\1/p'
    } | sort -u)"
    local n=0
    # Rules that jump to one of those chains, or that the taskq network made.
    while IFS= read -r rule; do
      [[ "$rule" == "-A "* ]] || continue
      chain="$(awk '{print $2}' <<<"$rule")"
      grep -qxF -- "$chain" <<<"$chains" && continue   # flushed with its chain below
      local target
      target="$(sed -nE 's/.* -j ([^ ]+).*/\1/p' <<<"$rule")"
      if { [[ -n "$target" ]] && grep -qxF -- "$target" <<<"$chains"; } ||
         grep -qF 'name: \"'"$CNI_NET_NAME"'\"' <<<"$rule"; then
        eval "\"$ipt\" -w 5 -t $table -D ${rule#-A }" 2>/dev/null && n=$((n + 1)) || true
      fi
    done <<<"$rules"
    for chain in $chains; do "$ipt" -w 5 -t "$table" -F "$chain" 2>/dev/null || true; done
    for chain in $chains; do "$ipt" -w 5 -t "$table" -X "$chain" 2>/dev/null && n=$((n + 1)) || true; done
    [[ $n == 0 ]] || log "$ipt -t $table: removed $n rules and chains"
  done
}

if [[ -d "$STATE" ]]; then
  stop kubelet 30
  remove_pods
  stop kube-proxy 10
  stop_runtime
  stop kube-scheduler 10
  stop kube-controller-manager 10
  stop kube-apiserver 20
  stop etcd 20
fi
# (Output captured before matching: with pipefail, `| grep -q` can fail on SIGPIPE.)
if [[ -x "$KUBE_BIN/kube-proxy" ]] && [[ "$(iptables -w 5 -t nat -S 2>/dev/null)" == *"-N KUBE-"* ]]; then
  "$KUBE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
fi
clean_iptables iptables
clean_iptables ip6tables
remove_netns
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link delete "$BRIDGE" && log "removed bridge $BRIDGE"
fi
if [[ -d "$STATE" ]]; then
  unmount_state
  rm -rf --one-file-system "$STATE" || die "could not remove $STATE (a mount is still busy: see mount | grep $STATE)"
  log "down in $((SECONDS - start))s ($STATE removed; caches in $CACHE kept)"
else
  log "not running ($STATE does not exist)"
fi
