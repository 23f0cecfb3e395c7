#!/usr/bin/env bash
# Tests of the Helm chart (charts/taskq), the plain manifests (k8s/) and the dashboard:
#
#   scripts/chart/test.sh          # everything
#   scripts/chart/test.sh static   # lint, schema, template tests, manifests (no API server)
#   scripts/chart/test.sh kube     # only what needs the real API server
#
# Value sets: every charts/taskq/ci/*-values.yaml, and `dev` (k8s/dev/values.yaml +
# k8s/dev/local-images.yaml, what skaffold, kind users and the e2e workflow install).
#
# static: helm lint --strict of every value set; values.schema.json rejects unknown
#   keys and wrong types and validateValues catches what the schema cannot (two
#   autoscalers, Redis maxmemory against its limit, drain-blocking budgets...); `helm
#   template` of every value set; template tests over the output
#   (scripts/chart/check_rendered.py: probes, resources, hardened securityContext, token
#   mounts, RBAC, env names the binaries read (scripts/chart/env/), Redis auth and ACL
#   flags, store labels, PodDisruptionBudgets that cannot block a drain, extension
#   points, HTTPRoute, alerts...); the rendered Redis on a real redis-server
#   (scripts/chart/redis_auth_test.py); the store objects identical across taskq versions;
#   the alerts on promtool (scripts/chart/alerts_test.py); the CRD's defaults equal the
#   chart's; README.md is what helm-docs generates; Artifact Hub images match the render;
#   workflow actions pinned by SHA; the dashboard's queries use only taskq's metric names;
#   k8s/manifests is in sync with the chart and commits no Secret.
# kube: a real etcd + kube-apiserver (scripts/chart/kube-env.sh; build it once with
#   `scripts/chart/kube-env.sh build`, the test fails with that instruction otherwise).
#   Every rendered object is validated strictly twice: by kubeconform -strict against JSON
#   schemas generated from this API server's /openapi/v2 (custom resources included), and
#   by the API server itself (server-side dry run with --validate=strict, then `helm
#   install`, which Helm 4 does by server-side apply); the CRD's CEL rule rejects
#   minReplicas above maxReplicas. Then for every value set, in its own namespace (the
#   external set after its pre-step, scripts/chart/external-prestep.sh): helm install →
#   status deployed; the `helm test` pod accepted (dry run); the controller's real
#   permissions (kubectl auth can-i); helm upgrade keeps the generated Redis and MongoDB
#   passwords and API tokens; helm uninstall leaves only the kept store credentials and the
#   kept CRD, and a reinstall adopts them with the same passwords.
#   Pods never run (no kubelet): the point is that the API server accepts every object.
#
# Tools come from scripts/chart/install-tools.sh (cached in ~/.cache/taskq/bin). Output
# goes to $TASKQ_CHART_OUT (default .tmp/chart-test). Ends with `N passed, N failed`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CHART=charts/taskq
MODE="${1:-all}"
OUT="${TASKQ_CHART_OUT:-$ROOT/.tmp/chart-test}"
RELEASE=taskq
NS_RENDER=taskq-ci

case "$MODE" in all | static | kube) ;; *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;; esac

passed=0
failed=0
ok() { passed=$((passed + 1)); printf '  ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf '  FAIL %s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
# expect_ok DESCRIPTION CMD...: the command succeeds (its output is shown on failure).
expect_ok() {
  local what="$1"; shift
  local log
  if log="$("$@" 2>&1)"; then ok "$what"; else bad "$what"; printf '%s\n' "$log" | tail -n 20 | sed 's/^/       /'; fi
}
# expect_fail DESCRIPTION PATTERN CMD...: the command fails and says PATTERN.
expect_fail() {
  local what="$1" pattern="$2"; shift 2
  local log
  if log="$("$@" 2>&1)"; then
    bad "$what (it succeeded)"
  elif grep -qE -- "$pattern" <<<"$log"; then
    ok "$what"
  else
    bad "$what (failed without /$pattern/)"; printf '%s\n' "$log" | tail -n 10 | sed 's/^/       /'
  fi
}

step "tools"
BIN="$(bash scripts/chart/install-tools.sh)"
export PATH="$BIN:$PATH"
rm -rf "$OUT"
mkdir -p "$OUT/rendered"
# Every ci/ value set, plus `dev`: the development overlay of skaffold, kind and e2e.
value_sets=()
for f in "$CHART"/ci/*-values.yaml; do value_sets+=("$(basename "$f" -values.yaml)"); done
value_sets+=(dev)
echo "value sets: ${value_sets[*]}"

values_args() { # values_args NAME: the -f arguments of a value set
  if [[ "$1" == dev ]]; then echo "-f k8s/dev/values.yaml -f k8s/dev/local-images.yaml"
  else echo "-f $CHART/ci/$1-values.yaml"; fi
}

render() { # render NAME NAMESPACE > file
  # shellcheck disable=SC2046
  helm template "$RELEASE" "$CHART" --namespace "$2" --include-crds $(values_args "$1")
}

run_static() {
  step "helm lint --strict"
  for v in "${value_sets[@]}"; do
    # shellcheck disable=SC2046
    expect_ok "lint with $(values_args "$v")" helm lint --strict "$CHART" $(values_args "$v")
  done

  step "values.schema.json and validateValues reject bad values"
  expect_fail "unknown key api.replicaz" "additional properties 'replicaz' not allowed" \
    helm template t "$CHART" --set api.replicaz=1
  expect_fail "unknown top-level key" "additional properties 'workers' not allowed" \
    helm template t "$CHART" --set workers.concurrency=1
  expect_fail "string where an integer belongs" "want integer" \
    helm template t "$CHART" --set-string worker.concurrency=8
  expect_fail "out-of-range concurrency" "maximum" \
    helm template t "$CHART" --set worker.concurrency=20000
  expect_fail "a store probe timeout of 0" "api/storeProbe/timeoutMs.*minimum" \
    helm template t "$CHART" --set api.storeProbe.timeoutMs=0
  expect_ok "api.storeProbe reaches the api as TASKQ_STORE_PROBE_*" bash -c '
    helm template t "$1" --set api.storeProbe.intervalMs=250,api.storeProbe.timeoutMs=5000 --show-only templates/api/deployment.yaml |
      grep -A1 -E "name: TASKQ_STORE_PROBE_(INTERVAL|TIMEOUT)_MS" | grep -cE "value: \"(250|5000)\"" | grep -qx 2' _ "$CHART"
  expect_fail "unknown OTLP protocol" "otel/protocol" \
    helm template t "$CHART" --set otel.protocol=udp
  expect_fail "external Redis without a URL" "set redis.external.url" \
    helm template t "$CHART" --set redis.enabled=false
  expect_fail "external MongoDB without a URI" "set mongodb.external.uri" \
    helm template t "$CHART" --set mongodb.enabled=false
  expect_fail "worker grace not below the pod's termination grace" "shutdownGraceMs" \
    helm template t "$CHART" --set worker.shutdownGraceMs=30000
  expect_fail "scaler min above max" "minReplicas" \
    helm template t "$CHART" --set controller.enabled=true,controller.scaler.minReplicas=5,controller.scaler.maxReplicas=2
  expect_fail "both PDB budgets" "only one of minAvailable" \
    helm template t "$CHART" --set api.pdb.minAvailable=1
  expect_fail "no api PodDisruptionBudget that would block the drain of its only replica" "could not find template" \
    helm template t "$CHART" --set api.replicaCount=1,api.pdb.minAvailable=1,api.pdb.maxUnavailable=null --show-only templates/api/pdb.yaml
  expect_fail "no PodDisruptionBudget with maxUnavailable 0" "could not find template" \
    helm template t "$CHART" --set api.pdb.maxUnavailable=0 --show-only templates/api/pdb.yaml
  expect_fail "tokens as a value (they belong in a Secret)" "additional properties 'tokens' not allowed" \
    helm template t "$CHART" --set api.auth.tokens=admin:0123456789abcdef
  expect_fail "auth.enabled as a string" "api/auth/enabled" \
    helm template t "$CHART" --set-string api.auth.enabled=off
  expect_fail "an invalid existingSecret name" "api/auth/existingSecret" \
    helm template t "$CHART" --set api.auth.existingSecret=My_Tokens
  expect_fail "zero concurrent requests" "api/maxConcurrentRequests" \
    helm template t "$CHART" --set api.maxConcurrentRequests=0
  expect_fail "retention shorter than the idempotency window" "retentionSeconds must be 0" \
    helm template t "$CHART" --set api.config.retentionSeconds=60
  expect_fail "a periodic schedule without cron and task" "missing properties 'cron', 'task'" \
    helm template t "$CHART" --set 'api.periodic[0].name=x'
  expect_fail "a periodic schedule name with a space" "api/periodic/0/name" \
    helm template t "$CHART" --set 'api.periodic[0].name=a b' --set 'api.periodic[0].cron=0 * * * * *' \
      --set 'api.periodic[0].task.type=noop'

  step "helm template of every ci/ value set, and template tests"
  for v in "${value_sets[@]}"; do
    if render "$v" "$NS_RENDER" >"$OUT/rendered/$v.yaml" 2>"$OUT/rendered/$v.err"; then
      ok "template $v ($(grep -c '^kind:' "$OUT/rendered/$v.yaml") objects)"
    else
      bad "template $v"; sed 's/^/       /' "$OUT/rendered/$v.err"; continue
    fi
    if python3 scripts/chart/check_rendered.py "$v" "$OUT/rendered/$v.yaml" "$ROOT" >"$OUT/rendered/$v.check" 2>&1; then
      ok "$(tail -n1 "$OUT/rendered/$v.check")"
    else
      bad "$(tail -n1 "$OUT/rendered/$v.check")"; grep -v '^template tests' "$OUT/rendered/$v.check" | sed 's/^/       /'
    fi
  done

  step "bundled stores"
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    expect_ok "the rendered Redis on a real redis-server: auth, ACL, persistence (scripts/chart/redis_auth_test.py)" \
      python3 scripts/chart/redis_auth_test.py "$OUT/rendered/default.yaml"
  else
    bad "redis-server and redis-cli are needed for the Redis test (apt-get install redis-server)"
  fi
  # The stores' StatefulSets, Services and ConfigMaps are the same whatever taskq's version:
  # a taskq upgrade never restarts Redis or MongoDB.
  rm -rf "$OUT/other-version" && cp -r "$CHART" "$OUT/other-version"
  sed -i 's/^version: .*/version: 9.9.9/; s/^appVersion: .*/appVersion: "9.9.9"/' "$OUT/other-version/Chart.yaml"
  helm template "$RELEASE" "$OUT/other-version" --namespace "$NS_RENDER" >"$OUT/rendered/other-version.yaml"
  expect_ok "Redis and MongoDB objects do not change with taskq's chart or app version" \
    python3 - "$OUT/rendered/default.yaml" "$OUT/rendered/other-version.yaml" <<'PY'
import sys, yaml
def stores(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("StatefulSet", "Service", "ConfigMap")
            and d["metadata"]["labels"].get("app.kubernetes.io/component") in ("redis", "mongodb")}
a, b = stores(sys.argv[1]), stores(sys.argv[2])
assert len(a) >= 5 and a.keys() == b.keys(), sorted(a)
diff = [k for k in a if a[k] != b[k]]
assert not diff, f"changed with the taskq version: {diff}"
print(f"{len(a)} objects identical")
PY
  expect_ok "persistence.existingClaim mounts the given claims instead of claim templates" python3 - <<PY
import subprocess, yaml
out = subprocess.run(["helm", "template", "t", "$CHART", "--set", "redis.persistence.existingClaim=redis-data",
                      "--set", "mongodb.persistence.existingClaim=mongo-data"], capture_output=True, text=True, check=True).stdout
sts = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out) if d and d["kind"] == "StatefulSet"}
for name, claim in (("t-taskq-redis", "redis-data"), ("t-taskq-mongodb", "mongo-data")):
    spec = sts[name]["spec"]
    assert not spec.get("volumeClaimTemplates"), f"{name} still has claim templates"
    vols = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert vols["data"].get("persistentVolumeClaim", {}).get("claimName") == claim, vols["data"]
print("both stores mount their existing claims")
PY
  expect_fail "Redis maxmemory too close to the container limit" "80% of redis.resources.limits.memory" \
    helm template t "$CHART" --set redis.maxmemory=250mb
  expect_fail "Redis without a memory limit" "redis.resources.limits.memory must be set" \
    helm template t "$CHART" --set redis.resources.limits.memory=null
  expect_fail "the Redis application user named default" "redis/auth/username" \
    helm template t "$CHART" --set redis.auth.username=default

  step "alerts"
  if command -v promtool >/dev/null; then
    expect_ok "the PrometheusRule on promtool: valid, every alert fires on its series and none on healthy ones (scripts/chart/alerts_test.py)" \
      python3 scripts/chart/alerts_test.py "$OUT/rendered/observability.yaml" "$NS_RENDER"
  else
    bad "promtool is needed for the alert tests (apt-get install prometheus, or scripts/setup.sh)"
  fi

  step "TaskQueueScaler CRD"
  expect_ok "the CRD's defaults equal controller.scaler's values" python3 - "$CHART" <<'PY'
import sys, yaml
chart = sys.argv[1]
text = open(f"{chart}/templates/crds/taskqueuescalers.taskq.dev.yaml").read()
body = text[text.index("\napiVersion:") + 1 : text.rindex("{{- end }}")]
crd = yaml.safe_load(body)
props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
scaler = yaml.safe_load(open(f"{chart}/values.yaml"))["controller"]["scaler"]
checked = []
for key, prop in props.items():
    if "default" in prop:
        assert key in scaler, f"CRD default {key} has no controller.scaler value"
        assert scaler[key] == prop["default"], f"{key}: CRD default {prop['default']} != chart {scaler[key]}"
        checked.append(key)
assert len(checked) >= 5, checked
print("equal:", ", ".join(checked))
PY
  expect_fail "the CRD is not rendered without the controller" "could not find template" \
    helm template t "$CHART" --show-only templates/crds/taskqueuescalers.taskq.dev.yaml
  expect_fail "the CRD is not rendered with crds.install=false" "could not find template" \
    helm template t "$CHART" --set controller.enabled=true,crds.install=false --show-only templates/crds/taskqueuescalers.taskq.dev.yaml
  expect_fail "an HPA and the queue-depth scaler on the workers at once" "two autoscalers" \
    helm template t "$CHART" --set controller.enabled=true,worker.hpa.enabled=true

  step "chart README, Artifact Hub metadata, workflow pins"
  rm -rf "$OUT/docs" && cp -r "$CHART" "$OUT/docs"
  if helm-docs --chart-search-root "$OUT/docs" --skip-version-footer --log-level warning >"$OUT/docs.log" 2>&1 &&
     diff -u "$CHART/README.md" "$OUT/docs/README.md" >"$OUT/docs.diff"; then
    ok "charts/taskq/README.md is what helm-docs generates from README.md.gotmpl and values.yaml"
  else
    bad "charts/taskq/README.md is out of date: run helm-docs --chart-search-root charts --skip-version-footer"
    head -n 20 "$OUT/docs.diff" "$OUT/docs.log" | sed 's/^/       /'
  fi
  expect_ok "every value has a helm-docs description (# --)" python3 - "$CHART/values.yaml" "$CHART/README.md" <<'PY'
import re, sys, yaml
values = yaml.safe_load(open(sys.argv[1]))
documented = set(re.findall(r"^\| ([A-Za-z0-9_.\[\]-]+) \|", open(sys.argv[2]).read(), re.M))
def leaves(prefix, v):
    if isinstance(v, dict) and v:
        for k, x in v.items():
            yield from leaves(f"{prefix}.{k}" if prefix else k, x)
    else:
        yield prefix
missing = [k for k in leaves("", values) if k not in documented and not any(k.startswith(d + ".") for d in documented)]
assert not missing, f"values without a # -- description: {missing}"
print(f"{len(documented)} values documented")
PY
  expect_ok "artifacthub.io/images lists exactly the images of the default render" python3 - "$CHART/Chart.yaml" "$OUT/rendered/default.yaml" <<'PY'
import sys, yaml
chart = yaml.safe_load(open(sys.argv[1]))
listed = {i["image"] for i in yaml.safe_load(chart["annotations"]["artifacthub.io/images"])}
docs = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
rendered = set()
for d in docs:
    spec = d.get("spec", {})
    pod = spec if d["kind"] == "Pod" else spec.get("template", {}).get("spec", {})
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        rendered.add(c["image"])
assert listed == rendered, f"listed only: {sorted(listed - rendered)}; rendered only: {sorted(rendered - listed)}"
assert chart.get("icon", "").startswith("https://"), "Chart.yaml needs an icon URL"
print(f"{len(listed)} images")
PY
  expect_ok "every GitHub Action is pinned by a commit SHA with its version as a comment" python3 - .github/workflows <<'PY'
import pathlib, re, sys
bad = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.yml")):
    for n, line in enumerate(f.read_text().splitlines(), 1):
        m = re.match(r"\s*(?:-\s*)?uses:\s*(\S+)(.*)$", line)
        if m and not m.group(1).startswith("./") and not (re.search(r"@[0-9a-f]{40}$", m.group(1)) and re.match(r"\s+#\s+\S+", m.group(2))):
            bad.append(f"{f.name}:{n}: {m.group(1)}")
assert not bad, "unpinned actions: " + ", ".join(bad)
print("all pinned")
PY

  step "Grafana dashboard"
  # The metric names themselves are checked against the registry by taskq-telemetry's
  # `dashboard_queries_only_exported_metrics` test.
  expect_ok "dashboards/taskq.json has queries, unique panel ids and no overlapping panels" python3 - "$CHART/dashboards/taskq.json" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
used = {m for e in exprs for m in re.findall(r"\btaskq_[a-z_]+", e)}
assert exprs and used, "no queries"
ids = [p["id"] for p in d["panels"]]
assert len(ids) == len(set(ids)), "duplicate panel ids"
# Grafana's grid is 24 columns wide; two panels on the same cells hide each other.
cells = {}
for p in d["panels"]:
    g = p["gridPos"]
    assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"panel {p['id']} leaves the grid: {g}"
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap at column {x}, row {y}"
            cells[(x, y)] = p["id"]
print(f"{len(exprs)} queries over {len(used)} metrics; {len(ids)} panels, none overlapping")
PY

  step "k8s/manifests in sync with the chart"
  expect_ok "k8s/manifests/taskq.yaml is what the chart renders" bash scripts/chart/check-manifests.sh
  expect_ok "k8s/manifests/taskq.yaml commits no Secret: the api mounts the existing taskq-api-tokens" \
    python3 - k8s/manifests/taskq.yaml <<'PY'
import re, sys, yaml
text = open(sys.argv[1]).read()
docs = [d for d in yaml.safe_load_all(text) if d]
secrets = [d for d in docs if d["kind"] == "Secret"]
assert not secrets, f"the plain manifests commit Secrets: {[s['metadata']['name'] for s in secrets]}"
for s in secrets:
    keys = set(s.get("data") or {}) | set(s.get("stringData") or {})
    assert not keys & {"tokens", "admin-token", "submit-token"}, f"Secret/{s['metadata']['name']} holds API tokens"
assert not re.search(r"\b(?:submit|admin)\s*:\s*[A-Za-z0-9._~+/=-]{16,}", text), "a role:token entry in the manifests"
api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "taskq-api")
vols = [v["secret"]["secretName"] for v in api["spec"]["template"]["spec"].get("volumes", []) if "secret" in v]
assert vols == ["taskq-api-tokens"], vols
print("no token; api mounts secret/taskq-api-tokens")
PY
}

# api_tokens NAMESPACE: the generated tokens Secret's three keys, as stored.
api_tokens() {
  kubectl get secret "$RELEASE-api-tokens" -n "$1" \
    -o jsonpath='{.data.tokens}/{.data.admin-token}/{.data.submit-token}' 2>/dev/null || true
}

# kept_secrets NAMESPACE: names of the release's Secrets marked helm.sh/resource-policy=keep.
kept_secrets() {
  kubectl get secret -n "$1" -l "app.kubernetes.io/instance=$RELEASE" -o json |
    python3 -c 'import json,sys; print(" ".join(sorted(s["metadata"]["name"] for s in json.load(sys.stdin)["items"] if (s["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep")))'
}

# store_credentials NAMESPACE: the generated Redis and MongoDB Secrets' data, as stored.
store_credentials() {
  local s
  for s in redis mongodb; do kubectl get secret "$RELEASE-$s" -n "$1" -o jsonpath='{.data}' 2>/dev/null || true; echo; done
}

KUBE_STARTED=""
stop_kube() {
  if [[ -n "$KUBE_STARTED" ]]; then bash scripts/chart/kube-env.sh stop >/dev/null 2>&1 || true; fi
}

run_kube() {
  step "kube-apiserver + etcd"
  export TASKQ_KUBE_STATE="${TASKQ_KUBE_STATE:-$OUT/kube}"
  if ! bash scripts/chart/kube-env.sh status; then
    KUBE_STARTED=1
    trap stop_kube EXIT
    if ! bash scripts/chart/kube-env.sh start; then
      bad "start kube-apiserver (see above)"; return
    fi
  fi
  eval "$(bash scripts/chart/kube-env.sh env)"
  ok "API server $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') answers"

  # The Prometheus Operator kinds the chart can render (a cut-down fixture) and the chart's CRD.
  # The chart's CRD (a template, rendered with the controller on) for the schemas below;
  # deleted again before the installs, which must create and own it themselves.
  helm template "$RELEASE" "$CHART" --set controller.enabled=true \
    --show-only templates/crds/taskqueuescalers.taskq.dev.yaml >"$OUT/crd.yaml"
  expect_ok "fixture CRDs and the chart's CRD apply" \
    kubectl apply --server-side -f scripts/chart/fixtures/crds.yaml -f "$OUT/crd.yaml"
  expect_ok "CRDs established" kubectl wait --for condition=established crd --all --timeout=60s
  expect_fail "the API server rejects a TaskQueueScaler with minReplicas above maxReplicas (CEL)" \
    "spec.minReplicas must not exceed spec.maxReplicas" kubectl create --dry-run=server -n default -f - <<'EOF'
apiVersion: taskq.dev/v1alpha1
kind: TaskQueueScaler
metadata: {name: bad}
spec: {deployment: worker, queues: [default], minReplicas: 5, maxReplicas: 2}
EOF

  step "kubeconform -strict against schemas from this API server"
  kubectl get --raw /openapi/v2 >"$OUT/openapi-v2.json"
  python3 scripts/chart/openapi2jsonschema.py "$OUT/openapi-v2.json" "$OUT/schemas"
  local loc="$OUT/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
  for v in "${value_sets[@]}"; do
    [[ -f "$OUT/rendered/$v.yaml" ]] || render "$v" "$NS_RENDER" >"$OUT/rendered/$v.yaml"
    expect_ok "kubeconform -strict $v" kubeconform -strict -summary -schema-location "$loc" "$OUT/rendered/$v.yaml"
  done
  sed 's/readOnlyRootFilesystem:/readOnlyRootFilesystm:/' "$OUT/rendered/default.yaml" >"$OUT/misspelled.yaml"
  expect_fail "kubeconform rejects a misspelled field" "readOnlyRootFilesystm" \
    kubeconform -strict -schema-location "$loc" "$OUT/misspelled.yaml"

  expect_ok "the chart's CRD deleted again" kubectl delete -f "$OUT/crd.yaml" --wait=true

  for v in "${value_sets[@]}"; do
    local ns="taskq-ci-$v"
    step "helm install value set $v into namespace $ns"
    kubectl create namespace "$ns" >/dev/null
    render "$v" "$ns" >"$OUT/rendered/$v.$ns.yaml"
    # Everything but the test pod (its ServiceAccount must exist first) and the CRD.
    python3 - "$OUT/rendered/$v.$ns.yaml" "$OUT/rendered/$v.$ns.split" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
objs = [d for d in docs if d["kind"] != "CustomResourceDefinition" and "helm.sh/hook" not in d["metadata"].get("annotations", {})]
# The `helm test` pod; other hooks (the TaskQueueScaler) are created by helm install itself.
hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
yaml.safe_dump_all(objs, open(sys.argv[2] + ".objects.yaml", "w"))
yaml.safe_dump_all(hooks, open(sys.argv[2] + ".hooks.yaml", "w"))
PY
    if [[ "$v" == external ]]; then
      expect_ok "external: its pre-step creates the Secrets it names" bash scripts/chart/external-prestep.sh "$ns"
    fi
    # With the controller, helm install itself creates the CRD (it is deleted between
    # value sets), and the TaskQueueScaler, a post-install hook, once the CRD exists.
    local with_crd=""
    if grep -q '^kind: CustomResourceDefinition' "$OUT/rendered/$v.$ns.yaml"; then with_crd=1; fi
    expect_ok "server-side dry run, strict field validation" \
      kubectl apply --server-side --dry-run=server --validate=strict -n "$ns" -f "$OUT/rendered/$v.$ns.split.objects.yaml"
    # shellcheck disable=SC2046
    expect_ok "helm install" helm install "$RELEASE" "$CHART" -n "$ns" $(values_args "$v")
    local status
    status="$(helm status "$RELEASE" -n "$ns" -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["info"]["status"])' || true)"
    if [[ "$status" == deployed ]]; then ok "helm status: deployed"; else bad "helm status: ${status:-none}, not deployed"; fi
    local count
    count="$(kubectl get deploy,sts,svc,secret,sa,pdb,netpol,ingress,role,rolebinding,configmap -n "$ns" -l "app.kubernetes.io/instance=$RELEASE" -o name | wc -l)"
    if [[ "$count" -gt 0 ]]; then ok "$count objects stored"; else bad "no object of the release stored"; fi
    expect_ok "the helm test pod is accepted (dry run)" \
      kubectl create --dry-run=server --validate=strict -n "$ns" -f "$OUT/rendered/$v.$ns.split.hooks.yaml"

    if [[ "$v" == autoscaling ]]; then
      local sa="system:serviceaccount:$ns:$RELEASE-controller"
      for allowed in "list taskqueuescalers.taskq.dev" "watch deployments.apps" "patch deployments.apps --subresource=scale" \
                     "patch taskqueuescalers.taskq.dev --subresource=status" "create leases.coordination.k8s.io" \
                     "update leases.coordination.k8s.io" "create events.events.k8s.io"; do
        # shellcheck disable=SC2086
        expect_ok "controller may: $allowed" kubectl auth can-i -n "$ns" --as "$sa" $allowed
      done
      for denied in "update deployments.apps" "patch deployments.apps" "delete deployments.apps" "get secrets" \
                    "list pods" "patch taskqueuescalers.taskq.dev" "list deployments.apps -n default" "create pods"; do
        # shellcheck disable=SC2086
        expect_fail "controller may not: $denied" "^no" kubectl auth can-i -n "$ns" --as "$sa" $denied
      done
      expect_fail "the worker's ServiceAccount may do nothing" "^no" \
        kubectl auth can-i get deployments.apps -n "$ns" --as "system:serviceaccount:$ns:$RELEASE-worker"
    fi

    if [[ "$v" == default ]]; then
      local before after tokens_before
      before="$(kubectl get secret "$RELEASE-mongodb" -n "$ns" -o jsonpath='{.data.mongodb-root-password}')"
      tokens_before="$(api_tokens "$ns")"
      local redis_before
      redis_before="$(kubectl get secret "$RELEASE-redis" -n "$ns" -o jsonpath='{.data}')"
      # shellcheck disable=SC2046
      expect_ok "helm upgrade" helm upgrade "$RELEASE" "$CHART" -n "$ns" $(values_args "$v") --set api.replicaCount=3
      after="$(kubectl get secret "$RELEASE-mongodb" -n "$ns" -o jsonpath='{.data.mongodb-root-password}')"
      if [[ -n "$before" && "$before" == "$after" ]]; then ok "the generated MongoDB password survives the upgrade"
      else bad "the MongoDB password changed on upgrade"; fi
      if [[ -n "$redis_before" && "$redis_before" == "$(kubectl get secret "$RELEASE-redis" -n "$ns" -o jsonpath='{.data}')" ]]; then
        ok "the generated Redis passwords survive the upgrade"
      else bad "the Redis passwords changed on upgrade"; fi
      if [[ -n "$tokens_before" && "$tokens_before" == "$(api_tokens "$ns")" ]]; then ok "the generated API tokens survive the upgrade"
      else bad "the API tokens changed on upgrade"; fi
      expect_fail "the API server rejects a misspelled field (strict validation end to end)" "valu" \
        helm upgrade "$RELEASE" "$CHART" -n "$ns" --set 'api.extraEnv[0].name=X' --set 'api.extraEnv[0].valu=y'
    fi

    expect_ok "helm uninstall" helm uninstall "$RELEASE" -n "$ns"
    # Generated store credentials stay (helm.sh/resource-policy: keep); nothing else does.
    local kept
    kept="$(kept_secrets "$ns")"
    if [[ "$v" == external ]]; then
      if [[ -z "$kept" ]]; then ok "no Secret kept without bundled stores"; else bad "Secrets kept: $kept"; fi
    elif [[ "$kept" == "$RELEASE-mongodb $RELEASE-redis" ]]; then ok "uninstall keeps the generated store credentials: $kept"
    else bad "uninstall should keep exactly $RELEASE-mongodb and $RELEASE-redis (kept: ${kept:-none})"; fi
    if [[ "$v" == default ]]; then
      local creds_before
      creds_before="$(store_credentials "$ns")"
      # shellcheck disable=SC2046
      expect_ok "helm install again after uninstall (kept Secrets adopted)" helm install "$RELEASE" "$CHART" -n "$ns" $(values_args "$v")
      if [[ -n "$creds_before" && "$creds_before" == "$(store_credentials "$ns")" ]]; then
        ok "the reinstall uses the same Redis and MongoDB passwords (a kept PVC stays usable)"
      else bad "the reinstall changed the store passwords"; fi
      expect_ok "helm uninstall again" helm uninstall "$RELEASE" -n "$ns"
    fi
    # shellcheck disable=SC2086
    [[ -z "$kept" ]] || kubectl delete secret -n "$ns" $kept >/dev/null
    if [[ -n "$with_crd" ]]; then
      # The scaler is a hook: uninstall leaves it, like the CRD.
      if kubectl get tqs "$RELEASE-worker" -n "$ns" >/dev/null 2>&1; then ok "uninstall leaves the TaskQueueScaler (a hook)"
      else bad "the TaskQueueScaler hook was not created, or uninstall deleted it"; fi
      kubectl delete tqs "$RELEASE-worker" -n "$ns" --wait=true >/dev/null 2>&1 || true
    fi
    # The CRD stays too (deleting it would delete every TaskQueueScaler of the cluster).
    if kubectl get crd taskqueuescalers.taskq.dev >/dev/null 2>&1; then
      if [[ -n "$with_crd" ]]; then ok "uninstall keeps the TaskQueueScaler CRD (helm.sh/resource-policy: keep)"
      else bad "the TaskQueueScaler CRD exists without controller.enabled"; fi
      kubectl delete crd taskqueuescalers.taskq.dev --wait=true >/dev/null
    elif [[ -n "$with_crd" ]]; then bad "uninstall deleted the TaskQueueScaler CRD"; fi
    local left
    left="$(kubectl api-resources --verbs=list --namespaced -o name | grep -v '^events' | paste -sd, - |
      xargs -I{} kubectl get {} -n "$ns" -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null | wc -l)"
    if [[ "$left" -eq 0 ]]; then ok "nothing of the release is left"; else bad "$left objects left after uninstall"; fi
    if [[ -z "$(helm list -n "$ns" -q)" ]]; then ok "no release left"; else bad "a release is left"; fi
  done
}

if [[ "$MODE" == all || "$MODE" == static ]]; then run_static; fi
if [[ "$MODE" == all || "$MODE" == kube ]]; then run_kube; fi

printf '\nchart: %d passed, %d failed\n' "$passed" "$failed"
[[ "$failed" -eq 0 ]]
