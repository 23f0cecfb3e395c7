# shellcheck shell=bash
# Shared settings and helpers of scripts/cluster/*.sh. Source it; do not run it.
#
# Layout (everything the cluster writes at run time is under $STATE; everything built
# once is under $CACHE, outside the repository):
#   $CACHE/kube/v$KUBE_VERSION/   kube-apiserver, -controller-manager, -scheduler, kubelet,
#                                 kube-proxy, etcd (scripts/chart/kube-env.sh build)
#   $CACHE/cluster/bin/           coredns, local-path-provisioner, crictl, pause (build.sh)
#   $STATE/                       pki/, kubeconfigs, etcd/, containerd/, kubelet/, cni/,
#                                 logs/<component>.log, pids/<component>.pid, local-path/
#
# Addresses (chosen not to collide with kube-env.sh's envtest API server, which listens on
# random loopback ports with service range 10.96.0.0/16, nor with podman's 10.88.0.0/16):
#   node IP      the source address of the default route (TASKQ_CLUSTER_NODE_IP overrides)
#   API server   https://$NODE_IP:6443          etcd  http://127.0.0.1:12379
#   pod CIDR     10.244.0.0/16 (this node: 10.244.0.0/24 on bridge taskq0)
#   services     10.97.0.0/16; kubernetes = 10.97.0.1, kube-dns = 10.97.0.10

# The shared helpers (etcd_flags, TASKQ_CACHE_DIR); log and die are redefined below with
# this script family's prefix.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
CLUSTER_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_SCRIPTS/../.." && pwd)"
KUBE_VERSION="${TASKQ_KUBE_VERSION:-1.34.4}"
CACHE="$TASKQ_CACHE_DIR"
KUBE_BIN="$CACHE/kube/v$KUBE_VERSION"
TOOLS="$CACHE/cluster"
TOOLS_BIN="$TOOLS/bin"
STATE="${TASKQ_CLUSTER_STATE:-/tmp/taskq-cluster}"

NODE_NAME="${TASKQ_CLUSTER_NODE_NAME:-taskq-node}"
API_PORT="${TASKQ_CLUSTER_API_PORT:-6443}"
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
NODE_POD_GW=10.244.0.1
SERVICE_CIDR=10.97.0.0/16
KUBERNETES_SVC_IP=10.97.0.1
DNS_SVC_IP=10.97.0.10
CLUSTER_DOMAIN=cluster.local
BRIDGE=taskq0
CNI_NET_NAME=taskq

# Versions of the infrastructure built by build.sh from the Go module proxy.
COREDNS_VERSION=v1.12.4
LPP_VERSION=v0.0.30
CRICTL_VERSION=v1.34.0

# Infrastructure images, built FROM scratch by build.sh into containers-storage and
# imported into the cluster's containerd by load-images.sh.
PAUSE_IMAGE=localhost/taskq-cluster/pause:3.10
COREDNS_IMAGE="localhost/taskq-cluster/coredns:$COREDNS_VERSION"
LPP_IMAGE="localhost/taskq-cluster/local-path-provisioner:$LPP_VERSION"
BUSYBOX_IMAGE=localhost/taskq-cluster/busybox:1.35
INFRA_IMAGES=("$PAUSE_IMAGE" "$COREDNS_IMAGE" "$LPP_IMAGE" "$BUSYBOX_IMAGE")
# Images made by scripts/images/ that up.sh imports when they exist.
TASKQ_IMAGES=(
  ghcr.io/taskq-dev/taskq-api:0.1.0
  ghcr.io/taskq-dev/taskq-worker:0.1.0
  ghcr.io/taskq-dev/taskq-controller:0.1.0
  localhost/taskq-local/redis:7.0.15
  localhost/taskq-local/mongo:test
  localhost/taskq-local/curl:bookworm
)

CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
KUBECONFIG_ADMIN="$STATE/kubeconfig"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

# node_ip: the address the node registers with and the API server listens on.
node_ip() {
  if [[ -n "${TASKQ_CLUSTER_NODE_IP:-}" ]]; then echo "$TASKQ_CLUSTER_NODE_IP"; return; fi
  if [[ -f "$STATE/node-ip" ]]; then cat "$STATE/node-ip"; return; fi
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -nE 's/.* src ([0-9.]+).*/\1/p' | head -1)"
  [[ -n "$ip" ]] || ip="$(ip -4 -o addr show scope global | awk '{split($4,a,"/"); print a[1]; exit}')"
  [[ -n "$ip" ]] || die "no global IPv4 address on this machine; set TASKQ_CLUSTER_NODE_IP"
  echo "$ip"
}

etcd_bin() {
  if [[ -x "$KUBE_BIN/etcd" ]]; then echo "$KUBE_BIN/etcd"
  elif command -v etcd >/dev/null 2>&1; then command -v etcd
  else return 1
  fi
}

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
crictl_() { "$TOOLS_BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s "$@"; }
kubectl_() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

pidfile() { echo "$STATE/pids/$1.pid"; }
logfile() { echo "$STATE/logs/$1.log"; }

# running NAME: whether the process recorded for component NAME is alive and still runs
# the binary it was started with (the pid file holds "PID BINARY").
running() {
  local f pid bin
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  read -r pid bin < "$f" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ -z "$bin" ]] || [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$bin"* ]]
}

# stop NAME [SECONDS]: SIGTERM the recorded process, SIGKILL after SECONDS (default 15).
stop() {
  local name="$1" wait="${2:-15}" pid bin f
  f="$(pidfile "$name")"
  if running "$name"; then
    read -r pid bin < "$f"
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < wait * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in ${wait}s; killing it"; kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

# tail_log NAME [LINES]: the end of a component's log, indented, on stderr.
tail_log() {
  local f
  f="$(logfile "$1")"
  if [[ -s "$f" ]]; then
    printf 'cluster: --- last %s lines of %s ---\n' "${2:-30}" "$f" >&2
    tail -n "${2:-30}" "$f" | sed 's/^/    /' >&2
  fi
}
