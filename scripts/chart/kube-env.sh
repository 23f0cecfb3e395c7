#!/usr/bin/env bash
# A real Kubernetes API server for the chart tests, envtest style: etcd + kube-apiserver
# on loopback, no kubelet, no controller-manager. Objects are stored and validated exactly
# as on a cluster; pods never run.
#
#   scripts/chart/kube-env.sh build    # build kube-apiserver, the node components and etcd into the cache
#   scripts/chart/kube-env.sh start    # start etcd + kube-apiserver, write a kubeconfig
#   scripts/chart/kube-env.sh env      # print `export KUBECONFIG=...`
#   scripts/chart/kube-env.sh status   # exit 0 when the API server answers /readyz
#   scripts/chart/kube-env.sh stop     # stop both and remove their state
#
# Binaries are cached outside the repository, in $TASKQ_CACHE/kube/v$TASKQ_KUBE_VERSION
# (default ~/.cache/taskq/kube/v1.34.4). `k8s.io/kubernetes` cannot be `go install`ed as
# it is (its go.mod replaces the k8s.io/* staging modules with local paths), so `build`
# writes a small go.mod that requires it and replaces each staging module with its
# published v0.x release, then `go build`s cmd/kube-apiserver from the Go module proxy.
# etcd is built the same way from go.etcd.io/etcd/server/v3 at the version kubernetes
# itself requires; when that fails, Debian's `etcd-server` (/usr/bin/etcd) is used.
#
# State (data dir, certificates, tokens, logs, kubeconfig) lives in $TASKQ_KUBE_STATE
# (default /tmp/taskq-kube-env). Authentication is a static token file (one admin token
# in system:masters); authorization is RBAC, so the chart's Roles are checked for real.
set -euo pipefail

# log, die, free_port and TASKQ_CACHE_DIR come from the shared helpers.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
KUBE_VERSION="${TASKQ_KUBE_VERSION:-1.34.4}"
BIN_DIR="$TASKQ_CACHE_DIR/kube/v$KUBE_VERSION"
STATE="${TASKQ_KUBE_STATE:-/tmp/taskq-kube-env}"
APISERVER="$BIN_DIR/kube-apiserver"
ETCD_BIN="$BIN_DIR/etcd"
# Built together by `build`: the API server for the envtest-style tests, the rest for the
# single-node cluster of scripts/cluster/up.sh. TASKQ_KUBE_COMPONENTS narrows the list.
COMPONENTS="${TASKQ_KUBE_COMPONENTS:-kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy}"


how_to_build() {
  cat >&2 <<EOF
kube-env: kube-apiserver v$KUBE_VERSION is not built yet (looked for $APISERVER).
  Build it once (about 10 minutes on 2 cores, needs the Go module proxy):
      bash scripts/chart/kube-env.sh build
  or point TASKQ_CACHE at a cache that has kube/v$KUBE_VERSION/kube-apiserver.
EOF
}

etcd_path() {
  if [[ -x "$ETCD_BIN" ]]; then echo "$ETCD_BIN"
  elif command -v etcd >/dev/null 2>&1; then command -v etcd
  else return 1
  fi
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed"
  mkdir -p "$BIN_DIR"
  local mod="$TASKQ_CACHE_DIR/kube/build-v$KUBE_VERSION"
  mkdir -p "$mod"
  local start=$SECONDS
  local missing=() c
  for c in $COMPONENTS; do [[ -x "$BIN_DIR/$c" ]] || missing+=("$c"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "downloading k8s.io/kubernetes@v$KUBE_VERSION"
    local gomod
    gomod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    local staging_minor="0.${KUBE_VERSION#1.}"
    {
      echo "module taskq.dev/kube-env"
      echo
      echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
      echo
      echo "require k8s.io/kubernetes v$KUBE_VERSION"
      echo
      # Every staging module kubernetes replaces with ./staging/src/... gets its release.
      sed -nE 's#^[[:space:]]*(k8s\.io/[a-z0-9-]+)[[:space:]]+=>[[:space:]]+\./staging/.*#replace \1 => \1 v'"$staging_minor"'#p' "$gomod"
    } > "$mod/go.mod"
    {
      echo '//go:build tools'
      echo
      echo 'package tools'
      echo
      echo 'import ('
      for c in $COMPONENTS; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
      echo ')'
    } > "$mod/tools.go"
    log "resolving modules"
    # -e: tidy may complain about test-only imports of the staging modules; the build decides.
    if ! (cd "$mod" && GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1); then log "go mod tidy reported problems; building anyway"; fi
    (cd "$mod" && GOFLAGS=-mod=mod go get "k8s.io/kubernetes@v$KUBE_VERSION" >/dev/null)
    # One `go build` for every component, so the packages they share compile once.
    log "building ${missing[*]} v$KUBE_VERSION in one go build (10-20 minutes on 2 cores)"
    local out="$BIN_DIR/.build" pkgs=()
    rm -rf "$out"; mkdir -p "$out"
    for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    (cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
        -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=${KUBE_VERSION#1.}" \
        -o "$out/" "${pkgs[@]}")
    for c in "${missing[@]}"; do mv "$out/$c" "$BIN_DIR/$c"; done
    rm -rf "$out"
    log "${missing[*]} built in $((SECONDS - start))s"
  fi
  if [[ ! -x "$ETCD_BIN" ]]; then
    local t=$SECONDS
    log "building etcd at the version kubernetes requires"
    if (cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
          -o "$ETCD_BIN.tmp" go.etcd.io/etcd/server/v3 2>"$mod/etcd-build.log"); then
      mv "$ETCD_BIN.tmp" "$ETCD_BIN"
      log "etcd built in $((SECONDS - t))s"
    else
      log "building etcd failed (see $mod/etcd-build.log); falling back to Debian's etcd-server"
      command -v etcd >/dev/null || { apt-get install -y etcd-server >/dev/null 2>&1 || die "install etcd-server (apt-get install etcd-server)"; }
    fi
  fi
  log "ready: $APISERVER, $(etcd_path) (total $((SECONDS - start))s)"
}

kubeconfig() { echo "$STATE/kubeconfig"; }

cmd_status() {
  [[ -f "$STATE/port" ]] || return 1
  curl -fsSk --max-time 2 -H "Authorization: Bearer $(cat "$STATE/token")" \
    "https://127.0.0.1:$(cat "$STATE/port")/readyz" >/dev/null 2>&1
}

cmd_start() {
  [[ -x "$APISERVER" ]] || { how_to_build; exit 1; }
  local etcd
  etcd="$(etcd_path)" || { how_to_build; die "no etcd: run build, or apt-get install etcd-server"; }
  if cmd_status; then log "already running ($(kubeconfig))"; return 0; fi
  cmd_stop >/dev/null 2>&1 || true
  mkdir -p "$STATE/etcd" "$STATE/certs"
  chmod 700 "$STATE/etcd"

  local etcd_client etcd_peer port
  etcd_client="$(free_port)"; etcd_peer="$(free_port)"; port="$(free_port)"
  echo "$port" > "$STATE/port"

  # Service-account signing key and one admin token.
  openssl genrsa -out "$STATE/sa.key" 2048 2>/dev/null
  openssl rsa -in "$STATE/sa.key" -pubout -out "$STATE/sa.pub" 2>/dev/null
  local token
  token="$(openssl rand -hex 24)"
  echo "$token" > "$STATE/token"
  echo "$token,taskq-admin,taskq-admin,system:masters" > "$STATE/tokens.csv"

  local flags
  mapfile -t flags < <(etcd_flags taskq-test "$STATE/etcd" "$etcd_client" "$etcd_peer")
  ETCD_UNSUPPORTED_ARCH="" "$etcd" "${flags[@]}" >"$STATE/etcd.log" 2>&1 &
  echo $! > "$STATE/etcd.pid"

  local i
  for i in $(seq 1 100); do
    curl -fsS --max-time 1 "http://127.0.0.1:$etcd_client/health" >/dev/null 2>&1 && break
    kill -0 "$(cat "$STATE/etcd.pid")" 2>/dev/null || { tail -20 "$STATE/etcd.log" >&2; die "etcd exited"; }
    sleep 0.2
  done

  "$APISERVER" \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" \
    --cert-dir "$STATE/certs" \
    --token-auth-file "$STATE/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$STATE/sa.pub" \
    --service-account-signing-key-file "$STATE/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=false \
    --enable-priority-and-fairness=false \
    --endpoint-reconciler-type none \
    >"$STATE/apiserver.log" 2>&1 &
  echo $! > "$STATE/apiserver.pid"

  cat > "$(kubeconfig)" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: taskq-test
  cluster:
    server: https://127.0.0.1:$port
    insecure-skip-tls-verify: true
users:
- name: taskq-admin
  user:
    token: $token
contexts:
- name: taskq-test
  context: {cluster: taskq-test, user: taskq-admin}
current-context: taskq-test
EOF
  chmod 600 "$(kubeconfig)"

  for i in $(seq 1 300); do
    if cmd_status; then
      log "kube-apiserver ready on https://127.0.0.1:$port after $((i / 5))s (KUBECONFIG=$(kubeconfig))"
      return 0
    fi
    kill -0 "$(cat "$STATE/apiserver.pid")" 2>/dev/null || { tail -30 "$STATE/apiserver.log" >&2; die "kube-apiserver exited"; }
    sleep 0.2
  done
  tail -30 "$STATE/apiserver.log" >&2
  die "kube-apiserver did not become ready in 60s"
}

cmd_stop() {
  local f pid
  for f in apiserver etcd; do
    if [[ -f "$STATE/$f.pid" ]]; then
      pid="$(cat "$STATE/$f.pid")"
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
      fi
      rm -f "$STATE/$f.pid"
    fi
  done
  rm -rf "$STATE"
  log "stopped"
}

case "${1:-}" in
  build) cmd_build ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export KUBECONFIG=$(kubeconfig)" ;;
  paths) echo "$APISERVER"; etcd_path || true ;;
  *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
