#!/usr/bin/env bash
# A real single-node Kubernetes v1.34.4 on this machine, from real components:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (own config
# and state) + runc, kubelet, CNI bridge networking, kube-proxy (iptables), CoreDNS and
# rancher's local-path-provisioner (default StorageClass `local-path`).
#
#   scripts/cluster/up.sh          # start (or repair) the cluster and wait until it works
#   scripts/cluster/up.sh env      # print `export KUBECONFIG=...`
#   scripts/cluster/up.sh status   # exit 0 when every component runs and the node is Ready
#   scripts/cluster/down.sh        # stop everything and remove the state
#
# Needs root. Binaries: the Kubernetes components and etcd come from
# `scripts/chart/kube-env.sh build` (run here when missing); coredns,
# local-path-provisioner, crictl and pause from scripts/cluster/build.sh; all cached in
# ~/.cache/taskq (TASKQ_CACHE). Images are made locally (no registry is reachable) and
# imported into containerd: the infra images, and those of scripts/images/ that exist
# (scripts/cluster/load-images.sh IMAGE... imports more later). Pods must use
# imagePullPolicy IfNotPresent or Never.
#
# Idempotent: when the cluster is healthy, a second call only imports taskq images that
# changed. When some components still run, it restarts the others and keeps the state;
# when none does (state left by a run that was killed with its machine, or copied with
# it), that state is stale (pid files, containers, mounts of a boot that is gone): it is
# removed with down.sh and the cluster starts cold. Either way it waits until the node is Ready,
# CoreDNS is Ready, a restricted pod resolves kubernetes.default.svc.cluster.local and
# reaches a ClusterIP Service and writes to a PVC that binds; the host reaches the
# ClusterIPs too. When something cannot start it fails with the component's log tail.
#
# State: $TASKQ_CLUSTER_STATE (default /tmp/taskq-cluster); admin kubeconfig
# $STATE/kubeconfig; logs $STATE/logs/<component>.log. Addresses: see common.sh.
#
# Measured on the 2-core development machine (shared with other builds, load average
# 10-15 most of the time):
#   scripts/chart/kube-env.sh build, cold: 1271s for the five Kubernetes binaries in one
#     go build + 61s etcd (running at the same time as the next line)
#   scripts/cluster/build.sh binaries, cold: 860s wall (coredns + crictl + pause 447s,
#     local-path-provisioner 386s), nice 10, alongside the kube build and sharing its Go
#     build cache; again with an empty Go build cache: 1078s wall at nice 19 under load ~15,
#     6.4 CPU-minutes (5m15s user + 1m10s sys), so 3-4 minutes on two idle cores
#   build.sh images: 13s
#   up.sh from cache (binaries and images built, no state): 51s (65-70s under load 15), of
#     which ~5s importing the infra images; the taskq images (redis, mongo, curl: ~30s)
#     import in the background while the node starts
#   up.sh when healthy: 2.5s; repairing a killed kube-proxy: 20s; down.sh: 33s
set -euo pipefail
# shellcheck source=scripts/cluster/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PKI="$STATE/pki"
COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet kube-proxy)

# --- failure reporting -------------------------------------------------------------------

# fail COMPONENT REASON: the component's log tail, the reason, and how to clean up.
fail() {
  local component="$1"; shift
  [[ -z "$component" ]] || tail_log "$component" 40
  printf 'cluster: error: %s\n' "$*" >&2
  printf 'cluster: state and logs are in %s; scripts/cluster/down.sh removes them\n' "$STATE" >&2
  exit 1
}

# check_alive WHAT: fails with its log when a component this run started has exited.
check_alive() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if [[ -f "$(pidfile "$c")" ]] && ! running "$c"; then
      fail "$c" "$c exited while waiting for: $1"
    fi
  done
}

# wait_until COMPONENT SECONDS WHAT CMD...: polls CMD until it succeeds; fails when a
# component's process died, or with COMPONENT's log when the time is up.
wait_until() {
  local component="$1" timeout="$2" what="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    check_alive "$what"
    ((SECONDS < deadline)) || fail "$component" "timed out after ${timeout}s waiting for: $what"
    sleep 0.5
  done
}

# --- machine preparation -----------------------------------------------------------------

install_packages() {
  local pkgs=() pair cmd pkg
  for pair in containerd:containerd runc:runc iptables:iptables conntrack:conntrack \
              socat:socat buildah:buildah podman:podman openssl:openssl curl:curl ip:iproute2 \
              nsenter:util-linux mount:mount; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || pkgs+=("$pkg")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap && -x /usr/lib/cni/loopback ]] ||
    pkgs+=(containernetworking-plugins)
  [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || pkgs+=(busybox-static)
  if [[ ${#pkgs[@]} -gt 0 ]]; then
    log "installing Debian packages: ${pkgs[*]}"
    apt-get update -qq >/dev/null || fail "" "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null ||
      fail "" "apt-get install ${pkgs[*]} failed"
  fi
  if ! command -v kubectl >/dev/null 2>&1; then
    log "no kubectl on PATH: installing it with scripts/chart/install-tools.sh"
    bash "$REPO_ROOT/scripts/chart/install-tools.sh" >/dev/null
    PATH="$CACHE/bin:$PATH"
  fi
}

prepare_kernel() {
  modprobe overlay 2>/dev/null || true
  modprobe br_netfilter 2>/dev/null || true
  grep -qw overlay /proc/filesystems || fail "" "the kernel has no overlay file system (containerd's overlayfs snapshotter needs it)"
  # Pods reach Services through the bridge: routed (forwarding) and, between pods on the
  # bridge, through iptables (br_netfilter). Neither changes how the host itself routes.
  sysctl -qw net.ipv4.ip_forward=1
  if [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  else
    log "warning: br_netfilter is not available; pod-to-Service traffic between pods on the bridge may fail"
  fi
}

ensure_binaries() {
  local c missing=()
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [[ -x "$KUBE_BIN/$c" ]] || missing+=("$c")
  done
  if [[ ${#missing[@]} -gt 0 ]] || ! etcd_bin >/dev/null; then
    log "building the Kubernetes binaries (${missing[*]:-etcd}) with scripts/chart/kube-env.sh build"
    bash "$REPO_ROOT/scripts/chart/kube-env.sh" build
  fi
  bash "$CLUSTER_SCRIPTS/build.sh" all
}

# --- PKI and kubeconfigs -----------------------------------------------------------------

# cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]: a key and a certificate signed
# by the cluster CA.
cert() {
  local name="$1" subject="$2" eku="$3" sans="${4:-}"
  openssl req -new -nodes -newkey rsa:2048 -keyout "$PKI/$name.key" -out "$PKI/$name.csr" \
    -subj "$subject" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -z "$sans" ]] || echo "subjectAltName=$sans"
  } > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig FILE CERT_NAME: a kubeconfig with the CA and the client certificate embedded.
kubeconfig() {
  local file="$1" name="$2"
  cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: taskq-cluster
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$name.crt")
    client-key-data: $(base64 -w0 < "$PKI/$name.key")
contexts:
- name: taskq-cluster
  context: {cluster: taskq-cluster, user: $name}
current-context: taskq-cluster
EOF
  chmod 600 "$file"
}

make_pki() {
  [[ -f "$PKI/.complete" ]] && return 0
  log "creating the cluster PKI in $PKI"
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 \
    -subj "/CN=taskq-cluster-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  cert kube-apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert admin "/O=system:masters/CN=taskq-admin" clientAuth
  cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
  cert kube-proxy "/CN=system:kube-proxy" clientAuth
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig "$KUBECONFIG_ADMIN" admin
  local c
  for c in kube-controller-manager kube-scheduler kube-proxy kubelet; do kubeconfig "$STATE/$c.kubeconfig" "$c"; done
  touch "$PKI/.complete"
}

# --- processes ---------------------------------------------------------------------------

# start NAME BINARY ARGS...: runs a component in its own session (so it outlives this
# script), appending to its log; a no-op when it already runs.
start() {
  local name="$1" bin="$2"; shift 2
  running "$name" && return 0
  log "starting $name"
  printf '\n=== %s started by up.sh\n' "$(date -u +%FT%TZ)" >> "$(logfile "$name")"
  setsid "$bin" "$@" >> "$(logfile "$name")" 2>&1 < /dev/null &
  echo "$! $(readlink -f "$bin")" > "$(pidfile "$name")"
}

# remove_stale_state: when the state dir exists but no component recorded in it runs,
# nothing in it can be repaired (its pid files would read as components that died while
# this run waited): down.sh removes it so that the start is cold.
remove_stale_state() {
  [[ -d "$STATE" ]] || return 0
  local c
  for c in "${COMPONENTS[@]}"; do
    running "$c" && return 0
  done
  log "no component of the cluster in $STATE runs: removing its stale state (down.sh)"
  bash "$(dirname "${BASH_SOURCE[0]}")/down.sh" || fail "" "down.sh could not remove the stale state in $STATE"
}

api_ready() { kubectl_ get --raw /readyz >/dev/null 2>&1; }

start_etcd() {
  local etcd
  etcd="$(etcd_bin)" || fail "" "no etcd: run scripts/chart/kube-env.sh build (or apt-get install etcd-server)"
  if ! running etcd && curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" >/dev/null 2>&1; then
    fail "" "port $ETCD_CLIENT_PORT already has an etcd that this cluster did not start"
  fi
  mkdir -p "$STATE/etcd"; chmod 700 "$STATE/etcd"
  local flags
  mapfile -t flags < <(etcd_flags taskq-cluster "$STATE/etcd" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT")
  start etcd "$etcd" "${flags[@]}"
  wait_until etcd 30 "etcd to answer /health on 127.0.0.1:$ETCD_CLIENT_PORT" \
    curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

start_apiserver() {
  if ! running kube-apiserver && (exec 3<>"/dev/tcp/$NODE_IP/$API_PORT") 2>/dev/null; then
    fail "" "port $NODE_IP:$API_PORT is taken by another process (TASKQ_CLUSTER_API_PORT picks another)"
  fi
  start kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --client-ca-file "$PKI/ca.crt" \
    --tls-cert-file "$PKI/kube-apiserver.crt" --tls-private-key-file "$PKI/kube-apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --profiling=false
  wait_until kube-apiserver 120 "kube-apiserver /readyz on https://$NODE_IP:$API_PORT" api_ready
}

start_containerd() {
  local d="$STATE/containerd"
  mkdir -p "$d" "$STATE/cni/net.d"
  cat > "$d/config.toml" <<EOF
# containerd of the taskq single-node cluster (scripts/cluster/up.sh): its own socket,
# root and state, so it never meets a system containerd.
version = 2
root = "$d/root"
state = "$d/state"

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # The pause image is made locally (scripts/cluster/build.sh); there is no registry.
  sandbox_image = "$PAUSE_IMAGE"
  # This machine forbids lowering oom_score_adj; without this sandboxes fail with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$d/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  # Bridge + host-local IPAM + portmap. containerd sets up each pod's loopback itself with
  # the loopback plugin from bin_dir.
  cat > "$STATE/cni/net.d/10-$CNI_NET_NAME.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  start containerd "$(command -v containerd)" --config "$d/config.toml"
  wait_until containerd 30 "containerd to answer on $CONTAINERD_SOCK" ctr_ version
}

# load_images: the infra images now (CoreDNS and the provisioner need them at once); the
# taskq images that exist in the background (LOAD_PID), while the node starts.
load_images() {
  bash "$CLUSTER_SCRIPTS/load-images.sh" "${INFRA_IMAGES[@]}" || fail "" "importing the infra images failed"
  local present=() img
  for img in "${TASKQ_IMAGES[@]}"; do
    if podman image exists "$img" 2>/dev/null; then present+=("$img"); else log "not built yet (skipped): $img"; fi
  done
  LOAD_PID=""
  [[ ${#present[@]} -gt 0 ]] || return 0
  bash "$CLUSTER_SCRIPTS/load-images.sh" "${present[@]}" > "$(logfile load-images)" 2>&1 &
  LOAD_PID=$!
}

wait_images() {
  [[ -n "${LOAD_PID:-}" ]] || return 0
  wait "$LOAD_PID" || fail load-images "importing the taskq images into containerd failed"
  sed -n 's/^cluster: //p' "$(logfile load-images)" | while read -r line; do log "$line"; done
}

start_controller_manager() {
  start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --cluster-cidr "$POD_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" \
    --controllers '*' \
    --profiling=false
}

start_scheduler() {
  start kube-scheduler "$KUBE_BIN/kube-scheduler" \
    --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 \
    --leader-elect=false \
    --profiling=false
}

start_kubelet() {
  mkdir -p "$STATE/kubelet"
  cat > "$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDNS: [$DNS_SVC_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: /etc/resolv.conf
# cgroups v1 without systemd; no per-QoS cgroups and no node-allocatable enforcement.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# In-place pod resize (beta, on by default) needs pod-level cgroups and a runtime that
# reports container resources: containerd 1.6 reports none, so the kubelet sees every pod
# as resized and, without per-QoS cgroups, dereferences a nil pod memory config in
# doPodResizeAction (kuberuntime_manager.go:839) and panics. Pods here are never resized.
featureGates:
  InPlacePodVerticalScaling: false
# No registry can give an image back: never garbage-collect images, and evict pods only
# when the disk is truly full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
serializeImagePulls: false
rotateCertificates: false
maxPods: 110
EOF
  start kubelet "$KUBE_BIN/kubelet" \
    --config "$STATE/kubelet-config.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" \
    --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP"
}

start_kube_proxy() {
  cat > "$STATE/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$NODE_IP/32]
iptables:
  # Do not set route_localnet on the host: NodePorts answer on the node IP only.
  localhostNodePorts: false
conntrack:
  # Leave the host's conntrack settings alone.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start kube-proxy "$KUBE_BIN/kube-proxy" --config "$STATE/kube-proxy-config.yaml"
}

# --- add-ons and checks ------------------------------------------------------------------

render() {
  sed -e "s#@CLUSTER_DOMAIN@#$CLUSTER_DOMAIN#g" -e "s#@DNS_SVC_IP@#$DNS_SVC_IP#g" \
      -e "s#@COREDNS_IMAGE@#$COREDNS_IMAGE#g" -e "s#@LPP_IMAGE@#$LPP_IMAGE#g" \
      -e "s#@BUSYBOX_IMAGE@#$BUSYBOX_IMAGE#g" -e "s#@LOCAL_PATH_DIR@#$STATE/local-path#g" "$1"
}

node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

deployment_ready() { # NAMESPACE NAME
  local ready
  ready="$(kubectl_ -n "$1" get deployment "$2" -o jsonpath='{.status.readyReplicas}' 2>/dev/null)"
  [[ "${ready:-0}" -ge 1 ]]
}

# pod_diagnostics NAMESPACE: what the pods there are doing, for an error message.
pod_diagnostics() {
  {
    echo "cluster: --- pods in $1 ---"
    kubectl_ -n "$1" get pods -o wide 2>&1
    echo "cluster: --- events in $1 ---"
    kubectl_ -n "$1" get events --sort-by=.lastTimestamp 2>&1 | tail -n 20
    local p
    for p in $(kubectl_ -n "$1" get pods -o name 2>/dev/null); do
      echo "cluster: --- logs of $p ---"
      kubectl_ -n "$1" logs "$p" --all-containers --tail 20 2>&1
    done
  } | sed 's/^/    /' >&2
}

apply_addons() {
  mkdir -p "$STATE/local-path"
  render "$CLUSTER_SCRIPTS/manifests/coredns.yaml" | kubectl_ apply -f - >/dev/null ||
    fail kube-apiserver "applying the CoreDNS manifest failed"
  render "$CLUSTER_SCRIPTS/manifests/local-path.yaml" | kubectl_ apply -f - >/dev/null ||
    fail kube-apiserver "applying the local-path-provisioner manifest failed"
}

wait_addons() {
  local deadline=$((SECONDS + 180))
  until deployment_ready kube-system coredns; do
    ((SECONDS < deadline)) || { pod_diagnostics kube-system; fail kubelet "CoreDNS did not become Ready in 180s"; }
    check_alive "CoreDNS to become Ready"
    sleep 1
  done
  until deployment_ready local-path-storage local-path-provisioner; do
    ((SECONDS < deadline)) || { pod_diagnostics local-path-storage; fail kubelet "local-path-provisioner did not become Ready in 180s"; }
    check_alive "local-path-provisioner to become Ready"
    sleep 1
  done
}

# check_workloads: a pod under the `restricted` Pod Security Standard resolves the API
# server's Service name through CoreDNS (the kube-dns ClusterIP, backed by a pod), connects
# through the `kubernetes` ClusterIP, fetches CoreDNS's metrics through the kube-dns
# ClusterIP, and writes to a PVC that binds; the host reaches both ClusterIPs.
check_workloads() {
  local ns=taskq-cluster-check
  kubectl_ delete namespace "$ns" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
  kubectl_ apply -f - >/dev/null <<EOF || fail kube-apiserver "creating the check pod failed"
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: check, namespace: $ns}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: check, namespace: $ns}
spec:
  restartPolicy: Never
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: check
      image: $BUSYBOX_IMAGE
      imagePullPolicy: Never
      command:
        - sh
        - -c
        - |
          set -e
          nslookup kubernetes.default.svc.$CLUSTER_DOMAIN | tee /tmp/dns
          grep -q "$KUBERNETES_SVC_IP" /tmp/dns
          # TCP through the kubernetes ClusterIP to the API server (busybox's TLS client
          # cannot talk to it), and HTTP through the kube-dns ClusterIP to CoreDNS.
          echo | nc -w 5 kubernetes.default.svc.$CLUSTER_DOMAIN 443 >/dev/null
          wget -q -O- http://kube-dns.kube-system.svc.$CLUSTER_DOMAIN:9153/metrics | grep -m1 '^coredns_build_info'
          echo written-by-check > /data/probe
          cat /data/probe
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: data, mountPath: /data}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: check}
    - name: tmp
      emptyDir: {}
EOF
  local deadline=$((SECONDS + 120)) phase=""
  while :; do
    phase="$(kubectl_ -n "$ns" get pod check -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    ((SECONDS < deadline)) || break
    check_alive "the check pod"
    sleep 1
  done
  if [[ "$phase" != Succeeded ]]; then
    kubectl_ -n "$ns" get pvc 2>&1 | sed 's/^/    /' >&2
    pod_diagnostics "$ns"
    pod_diagnostics local-path-storage
    fail kubelet "the check pod did not succeed (phase: ${phase:-none}): DNS, Service or PVC does not work"
  fi
  [[ "$(kubectl_ -n "$ns" get pvc check -o jsonpath='{.status.phase}')" == Bound ]] ||
    fail "" "the check PVC is not Bound"
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" "https://$KUBERNETES_SVC_IP/livez" >/dev/null ||
    fail kube-proxy "the host cannot reach the kubernetes Service at https://$KUBERNETES_SVC_IP"
  curl -fsS --max-time 5 "http://$DNS_SVC_IP:9153/metrics" >/dev/null ||
    fail kube-proxy "the host cannot reach the kube-dns Service at http://$DNS_SVC_IP:9153"
  [[ "$(busybox nslookup "kubernetes.default.svc.$CLUSTER_DOMAIN" "$DNS_SVC_IP" 2>&1)" == *"$KUBERNETES_SVC_IP"* ]] ||
    fail kube-proxy "the host cannot resolve through the kube-dns Service at $DNS_SVC_IP"
  log "checked: a restricted pod resolved kubernetes.default.svc.$CLUSTER_DOMAIN, reached the kubernetes and kube-dns ClusterIPs and wrote to a bound PVC; the host reaches both ClusterIPs"
  # The claim's directory is removed by a helper pod; nothing needs to wait for that.
  kubectl_ delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
}

# --- commands ----------------------------------------------------------------------------

healthy() {
  local c
  for c in "${COMPONENTS[@]}"; do running "$c" || return 1; done
  api_ready && node_ready && deployment_ready kube-system coredns
}

cmd_up() {
  local start=$SECONDS
  [[ "$(id -u)" == 0 ]] || die "run as root: the cluster starts containerd, kubelet and iptables rules"
  if [[ -f "$KUBECONFIG_ADMIN" ]] && command -v kubectl >/dev/null && healthy; then
    log "already up (KUBECONFIG=$KUBECONFIG_ADMIN)"
    load_images
    wait_images
    return 0
  fi
  remove_stale_state
  install_packages
  prepare_kernel
  ensure_binaries
  mkdir -p "$STATE/logs" "$STATE/pids"
  NODE_IP="$(node_ip)"
  echo "$NODE_IP" > "$STATE/node-ip"
  log "node $NODE_NAME, IP $NODE_IP, state $STATE"
  make_pki
  start_etcd
  start_apiserver
  start_containerd
  load_images
  start_controller_manager
  start_scheduler
  start_kubelet
  start_kube_proxy
  apply_addons
  wait_until kubelet 120 "node $NODE_NAME to be Ready" node_ready
  wait_addons
  check_workloads
  wait_images
  log "up in $((SECONDS - start))s; export KUBECONFIG=$KUBECONFIG_ADMIN"
}

case "${1:-up}" in
  up) cmd_up ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_ADMIN" ;;
  status) [[ -f "$KUBECONFIG_ADMIN" ]] && healthy ;;
  *) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
