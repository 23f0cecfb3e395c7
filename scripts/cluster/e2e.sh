#!/usr/bin/env bash
# End-to-end test of the Helm chart on the single-node cluster of scripts/cluster/up.sh:
# real pods from the images of scripts/images/build.sh, on containerd, behind kube-proxy.
#
#   scripts/cluster/e2e.sh            # needs a running cluster (scripts/cluster/up.sh)
#
# Phases (each timed; the figures are printed at the end and kept in $REPORT):
#  1. install: namespace enforcing the `restricted` Pod Security Standard, `helm install`
#     with the bundled Redis and MongoDB and the autoscaler (workers 0..4), every pod Ready;
#     `helm test` (one task submitted through the api Service and run by a worker that the
#     controller started from zero).
#  2. access: the `taskq` CLI and curl through `kubectl port-forward`.
#  3. scale: a 20,000-task backlog; the controller scales the workers from 0 to >= 3, the new
#     pods drain it, and the Deployment returns to 0 after the stabilization window.
#  4. chaos: 10,000 tasks through the api Service while one worker pod is deleted with
#     `--grace-period=0 --force`, another busy worker's process is SIGKILLed from the host
#     and a `helm upgrade` rolls the worker Deployment: every task succeeds and the extra
#     executions (counted from the records' events) stay within the slots of the two
#     killed workers.
#  5. redis: the Redis pod deleted mid-run comes back on its PVC; every accepted task
#     succeeds (`POST /v1/admin/recover` is called only if Redis lost data, and reported).
#  6. drain: a worker pod deleted (SIGTERM) while it runs 4-second tasks finishes them
#     inside terminationGracePeriodSeconds: each succeeds on its first attempt.
#
# The api is reached through its Service's ClusterIP from the host (kube-proxy programs
# the host's iptables too). Environment: TASKQ_E2E_NAMESPACE, TASKQ_E2E_KEEP=1
# keeps the release after the run for inspection.
# TASKQ_E2E_NAMESPACE defaults to a new `taskq-e2e-<unix time>` per run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$TASKQ_ROOT"

# A new namespace per run: names of a namespace deleted seconds ago can still resolve to
# its old ClusterIPs from CoreDNS's cache, which route nowhere.
NS="${TASKQ_E2E_NAMESPACE:-taskq-e2e-$(date +%s)}"
REL=taskq
VALUES=scripts/cluster/e2e-values.yaml
STATE="${TASKQ_CLUSTER_STATE:-/tmp/taskq-cluster}"
REPORT="$STATE/e2e-report.txt"
export KUBECONFIG="${KUBECONFIG:-$STATE/kubeconfig}"
export PATH="${TASKQ_CACHE:-$HOME/.cache/taskq}/bin:$PATH"

say() { printf 'e2e: %s\n' "$*" >&2; }
fail() {
    say "FAILED: $*"
    diagnostics
    exit 1
}
diagnostics() {
    say "--- pods"
    kubectl -n "$NS" get pods -o wide >&2 || true
    say "--- events (last 30)"
    kubectl -n "$NS" get events --sort-by=.lastTimestamp 2>/dev/null | tail -30 >&2 || true
    local p
    for p in $(kubectl -n "$NS" get pods -o name 2>/dev/null); do
        say "--- logs of $p (last 15 lines)"
        kubectl -n "$NS" logs "$p" --all-containers --tail=15 >&2 2>/dev/null || true
    done
    if [ -n "$API" ]; then
        say "--- the api's store probes (count, > 0.2 s, > 0.8 s, > 3.2 s, > 6.5 s): redis $(probes redis 2>/dev/null), mongodb $(probes mongodb 2>/dev/null)"
    fi
}
now_ms() { date +%s%3N; }
record() { # name value: one line of the report
    printf '%-58s %s\n' "$1" "$2" | tee -a "$REPORT" >&2
}
secs_since() { # start_ms → seconds with one decimal
    awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'
}

command -v helm >/dev/null || bash scripts/chart/install-tools.sh >/dev/null
command -v jq >/dev/null || as_root apt-get install -y -qq jq >/dev/null
kubectl get --raw /readyz >/dev/null 2>&1 ||
    die "no cluster answers at KUBECONFIG=$KUBECONFIG: start it with scripts/cluster/up.sh"
[ -x target/release/taskq ] || cargo build --release --locked -p taskq-cli --bin taskq
mkdir -p "$STATE"
: >"$REPORT"

port_forward_pid=""
cleanup() {
    [ -n "$port_forward_pid" ] && kill "$port_forward_pid" 2>/dev/null || true
    if [ "${TASKQ_E2E_KEEP:-0}" != 1 ]; then
        helm uninstall "$REL" -n "$NS" --wait --timeout 2m >/dev/null 2>&1 || true
        kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# --- helpers on the api ----------------------------------------------------------------

API=""
TOKEN=""
api() { # method path [curl args...] → body on stdout; fails on a non-2xx answer
    local method="$1" path="$2"
    shift 2
    curl -fsS --max-time 60 -X "$method" "$API$path" -H "Authorization: Bearer $TOKEN" "$@"
}

# submit QUEUE COUNT TASK_JSON: COUNT copies of the task in batches of 1,000; prints ids.
submit() {
    local queue="$1" count="$2" task="$3" sent=0 n body
    while [ "$sent" -lt "$count" ]; do
        n=$((count - sent > 1000 ? 1000 : count - sent))
        body="$(jq -cn --argjson t "$task" --arg q "$queue" --argjson n "$n" \
            '{tasks: [range($n) | $t + {queue: $q}]}')"
        api POST /v1/tasks/batch -H 'content-type: application/json' -d "$body" |
            jq -e -r 'if .rejected == 0 then .results[].id else error("rejected: \(.)") end' ||
            fail "batch submit to $queue was not accepted whole"
        sent=$((sent + n))
    done
}

# wait_running QUEUE WHAT: until at least one task of the queue runs (120 s at most);
# fails saying that WHAT never started.
wait_running() {
    local queue="$1" what="$2" deadline=$((SECONDS + 120))
    until [ "$(api GET "/v1/queues/$queue" | jq .counts.running)" -ge 1 ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$what never started"
        sleep 0.5
    done
}

# probes STORE: the api's background probes of STORE so far, as "count, over 0.2 s,
# over 0.8 s, over 3.2 s, over 6.5 s" (from taskq_api_store_probe_seconds; two probes
# in a row over the timeout, api.storeProbe.timeoutMs, open the store's circuit).
probes() {
    curl -fsS --max-time 10 "$API/metrics" | awk -v s="store=\"$1\"" '
        index($0, "taskq_api_store_probe_seconds_bucket{") == 1 && index($0, s) {
            if (index($0, "le=\"0.2048\"")) fast = $NF
            if (index($0, "le=\"0.8192\"")) mid = $NF
            if (index($0, "le=\"3.2768\"")) slow = $NF
            if (index($0, "le=\"6.5536\"")) slower = $NF
        }
        index($0, "taskq_api_store_probe_seconds_count{") == 1 && index($0, s) { n = $NF }
        END { printf "%d, %d, %d, %d, %d\n", n, n - fast, n - mid, n - slow, n - slower }'
}

# records QUEUE: every record of the queue, one compact JSON object per line.
records() {
    local queue="$1" cursor="" page
    while :; do
        page="$(api GET "/v1/tasks?queue=$queue&limit=1000${cursor:+&cursor=$cursor}")"
        jq -c '.tasks[] | {id, status, attempts, runs: ([.events[] | select(.status == "running")] | length)}' <<<"$page"
        cursor="$(jq -r '.next_cursor // empty' <<<"$page")"
        [ -n "$cursor" ] || break
    done
}

# pending QUEUE: tasks of the queue still in Redis (scheduled, queued, running, retrying).
pending() {
    api GET "/v1/queues/$1" | jq '.counts | .scheduled + .queued + .running + .retrying'
}

# wait_settled QUEUE EXPECTED TIMEOUT_S: until Redis holds none of the queue's tasks and
# MongoDB has EXPECTED finished records; prints the records' summary.
wait_settled() {
    local queue="$1" expected="$2" timeout="$3" deadline summary
    deadline=$((SECONDS + timeout))
    while :; do
        if [ "$(pending "$queue" 2>/dev/null || echo x)" = 0 ]; then
            summary="$(records "$queue" | jq -s -c '{total: length,
                succeeded: map(select(.status == "succeeded")) | length,
                unfinished: map(select(.status != "succeeded" and .status != "dead" and .status != "cancelled")) | length,
                extra_runs: (map(.runs - 1) | add // 0),
                max_attempts: (map(.attempts) | max // 0)}')"
            if [ "$(jq .total <<<"$summary")" = "$expected" ] && [ "$(jq .unfinished <<<"$summary")" = 0 ]; then
                echo "$summary"
                return 0
            fi
        fi
        [ "$SECONDS" -lt "$deadline" ] || {
            say "queue $queue: pending $(pending "$queue" 2>/dev/null || echo '?'), records ${summary:-none}"
            return 1
        }
        sleep 1
    done
}

# Ready and desired replicas of the worker Deployment (the API omits a zero readyReplicas).
crictl() {
    "${TASKQ_CACHE:-$HOME/.cache/taskq}/cluster/bin/crictl" \
        --runtime-endpoint "unix://$STATE/containerd/containerd.sock" --timeout 30s "$@"
}

worker_replicas() {
    local n
    n="$(kubectl -n "$NS" get deploy "$REL-worker" -o jsonpath='{.status.readyReplicas}')"
    echo "${n:-0}"
}
worker_spec_replicas() {
    local n
    n="$(kubectl -n "$NS" get deploy "$REL-worker" -o jsonpath='{.spec.replicas}')"
    echo "${n:-0}"
}

# --- 1. install ------------------------------------------------------------------------

say "phase 1: helm install into namespace $NS (Pod Security Standard: restricted)"
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >/dev/null

# mongo-java-server has no authentication: the chart's generated credentials would make the
# driver attempt a SCRAM handshake it cannot answer. An existing Secret (a supported chart
# input) gives the api and the workers a URI without credentials.
kubectl -n "$NS" create secret generic taskq-e2e-mongodb \
    --from-literal=mongodb-root-password=unused-by-the-test-server \
    --from-literal=mongodb-uri="mongodb://$REL-mongodb.$NS.svc.cluster.local:27017/" >/dev/null

t0="$(now_ms)"
helm install "$REL" charts/taskq -n "$NS" -f "$VALUES" \
    --set mongodb.auth.existingSecret=taskq-e2e-mongodb --wait --timeout 6m >/dev/null ||
    fail "helm install did not become ready"
kubectl -n "$NS" wait --for=condition=Ready pod --all --timeout=120s >/dev/null ||
    fail "not every pod is Ready"
record "helm install → every pod Ready (s)" "$(secs_since "$t0")"
kubectl -n "$NS" get pods -o wide >&2

API="http://$(kubectl -n "$NS" get svc "$REL-api" -o jsonpath='{.spec.clusterIP}'):$(
    kubectl -n "$NS" get svc "$REL-api" -o jsonpath='{.spec.ports[0].port}')"
TOKEN="$(kubectl -n "$NS" get secret "$REL-api-tokens" -o jsonpath='{.data.admin-token}' | base64 -d)"
SUBMIT_TOKEN="$(kubectl -n "$NS" get secret "$REL-api-tokens" -o jsonpath='{.data.submit-token}' | base64 -d)"
say "api Service at $API"
curl -fsS --max-time 5 "$API/readyz" >/dev/null || fail "the api Service does not answer /readyz from the host"

t0="$(now_ms)"
helm test "$REL" -n "$NS" --timeout 5m --logs >&2 || fail "helm test failed"
record "helm test (workers scaled from 0 for its task) (s)" "$(secs_since "$t0")"

# --- 2. CLI and curl through kubectl port-forward --------------------------------------

say "phase 2: taskq CLI and curl through kubectl port-forward"
pf_port="$(free_port)"
kubectl -n "$NS" port-forward "svc/$REL-api" "$pf_port:$(kubectl -n "$NS" get svc "$REL-api" -o jsonpath='{.spec.ports[0].port}')" \
    >"$STATE/port-forward.log" 2>&1 &
port_forward_pid=$!
for _ in $(seq 1 60); do
    curl -fsS --max-time 2 "http://127.0.0.1:$pf_port/livez" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fsS --max-time 2 "http://127.0.0.1:$pf_port/livez" >/dev/null || fail "kubectl port-forward did not come up"
pf_cli() { TASKQ_API="http://127.0.0.1:$pf_port" TASKQ_TOKEN="$SUBMIT_TOKEN" target/release/taskq "$@"; }
# Submit and wait for the result (the workers may still be scaling up from zero).
done_json="$(pf_cli --output json submit echo --payload '{"hello":"port-forward"}' --wait 60s)" ||
    fail "taskq submit --wait through port-forward: $done_json"
id="$(jq -r .id <<<"$done_json")"
[ "$(jq -c .result <<<"$done_json")" = '{"hello":"port-forward"}' ] ||
    fail "task $id answered without its result: $done_json"
status="$(curl -fsS "http://127.0.0.1:$pf_port/v1/tasks/$id?wait=5s" -H "Authorization: Bearer $SUBMIT_TOKEN" | jq -r .status)"
[ "$status" = succeeded ] || fail "task $id submitted through port-forward is $status"
# A chain a -> b -> c whose tasks share a key, with one task of the key at a time.
api PUT "/v1/queues/default/limits" -H 'content-type: application/json' \
    -d '{"max_running_per_key": 1}' >/dev/null
flow_file="$STATE/chain.json"
cat >"$flow_file" <<'JSON'
[
  {"name": "a", "type": "echo", "payload": {"step": "a"}, "key": "e2e"},
  {"name": "b", "type": "echo", "payload": {"step": "b"}, "key": "e2e", "depends_on": ["a"]},
  {"name": "c", "type": "echo", "payload": {"step": "c"}, "key": "e2e", "depends_on": ["b"]}
]
JSON
flow_id="$(pf_cli --output json flow submit "$flow_file" | jq -r .id)"
[ -n "$flow_id" ] && [ "$flow_id" != null ] || fail "taskq flow submit returned no id"
for _ in $(seq 1 60); do
    flow_status="$(pf_cli --output json flow get "$flow_id" | jq -r .status)"
    [ "$flow_status" = running ] || break
    sleep 1
done
[ "$flow_status" = succeeded ] || fail "flow $flow_id is $flow_status"
pf_cli flow get "$flow_id" >&2
api PUT "/v1/queues/default/limits" -H 'content-type: application/json' -d '{}' >/dev/null
TASKQ_API="http://127.0.0.1:$pf_port" TASKQ_TOKEN="$TOKEN" target/release/taskq get "$id" >&2
TASKQ_API="http://127.0.0.1:$pf_port" TASKQ_TOKEN="$TOKEN" target/release/taskq queues >&2
record "CLI + curl through port-forward" "ok ($id succeeded with --wait; keyed chain $flow_id succeeded)"
kill "$port_forward_pid" 2>/dev/null || true
port_forward_pid=""

# --- 3. scale from zero on a backlog and back ------------------------------------------

say "phase 3: 20,000-task backlog → workers scale from 0"
deadline=$((SECONDS + 180))
until [ "$(worker_spec_replicas)" = 0 ] && [ "$(worker_replicas)" = 0 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "workers did not return to 0 before the scale test"
    sleep 2
done
# The first 1,000 tasks make the backlog; the other 19,000 follow in the background while
# the controller reacts. 100 ms tasks: four workers of 16 slots need about 30 s.
submit e2e-scale 1000 '{"type":"sleep","payload":{"ms":100}}' >/dev/null
t0="$(now_ms)"
submit e2e-scale 19000 '{"type":"sleep","payload":{"ms":100}}' >/dev/null &
submitter=$!
first_decision="" first_ready="" three_ready="" max_ready=0
deadline=$((SECONDS + 600))
while :; do
    ready="$(worker_replicas)"
    [ "$ready" -gt "$max_ready" ] && max_ready="$ready"
    [ -z "$first_decision" ] && [ "$(worker_spec_replicas)" -ge 1 ] && first_decision="$(secs_since "$t0")"
    [ -z "$first_ready" ] && [ "$ready" -ge 1 ] && first_ready="$(secs_since "$t0")"
    [ -z "$three_ready" ] && [ "$ready" -ge 3 ] && three_ready="$(secs_since "$t0")"
    if ! kill -0 "$submitter" 2>/dev/null && [ "$(pending e2e-scale)" = 0 ]; then
        break
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "the backlog did not drain in 600 s (ready workers: $ready)"
    sleep 0.5
done
wait "$submitter" || fail "submitting the backlog failed"
drain="$(secs_since "$t0")"
summary="$(wait_settled e2e-scale 20000 120)" || fail "e2e-scale records did not settle"
[ "$(jq .succeeded <<<"$summary")" = 20000 ] || fail "e2e-scale: $summary"
[ "$max_ready" -ge 3 ] || fail "the workers reached only $max_ready ready replicas (want >= 3)"
record "backlog → scale-up decision (s)" "$first_decision"
record "backlog → first new worker Ready (s)" "$first_ready"
record "backlog → 3 workers Ready (s)" "$three_ready"
record "backlog (20,000 × 100 ms) → drained (s), most workers" "$drain, $max_ready"
record "api's MongoDB probes: count, > 0.2 s, > 0.8 s, > 3.2 s, > 6.5 s" "$(probes mongodb)"
t1="$(now_ms)"
deadline=$((SECONDS + 240))
until [ "$(worker_spec_replicas)" = 0 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "workers did not return to 0 after the stabilization window"
    sleep 1
done
record "drained → scaled to 0 (s; window 30 s)" "$(secs_since "$t1")"

# --- 4. worker killed and rolled mid-run ------------------------------------------------

say "phase 4: 10,000 tasks through the Service; a worker killed with --force, a rolling upgrade"
# 200 ms tasks: the run lasts about 30 s on four workers, so both disruptions hit it.
submit e2e-chaos 10000 '{"type":"sleep","payload":{"ms":200}}' >/dev/null
deadline=$((SECONDS + 180))
until [ "$(worker_replicas)" -ge 3 ] && [ "$(api GET /v1/queues/e2e-chaos | jq .counts.running)" -ge 32 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "workers did not scale up for the chaos run"
    sleep 0.5
done
# The victim is a pod with tasks running: a worker id is `<pod name>-<pid>`. A forced
# deletion removes the pod object at once; the kubelet still sends SIGTERM and kills the
# container about two seconds later, so the tasks it had in flight either finish or run
# again after their lease (5 s) expires.
busy="$(api GET '/v1/tasks?queue=e2e-chaos&status=running&limit=1' | jq -r '.tasks[0].events | map(select(.status == "running")) | last | .worker')"
victim="$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=worker -o json |
    jq -r --arg w "$busy" '.items[] | .metadata.name as $n | select($w | startswith($n + "-")) | $n' | head -1)"
[ -n "$victim" ] || fail "no worker pod matches the worker id $busy"
in_flight="$(kubectl -n "$NS" get deploy "$REL-worker" -o json | jq '.spec.template.spec.containers[0].env[] | select(.name == "TASKQ_CONCURRENCY") | .value | tonumber')"
kubectl -n "$NS" delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
say "force-deleted $victim while it ran tasks (at most $in_flight in flight)"
sleep 1
# A crash: SIGKILL to another busy worker's process, from the host (the kubelet restarts the
# container). Its completed attempts are in Redis's outbox, so their records still settle.
crashed=""
for w in $(api GET '/v1/tasks?queue=e2e-chaos&status=running&limit=100' |
    jq -r '.tasks[].events | map(select(.status == "running")) | last | .worker' | sort -u); do
    crashed="$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=worker -o json |
        jq -r --arg w "$w" --arg v "$victim" '.items[] | .metadata.name as $n |
            select($n != $v and ($w | startswith($n + "-"))) | $n' | head -1)"
    [ -n "$crashed" ] && break
done
[ -n "$crashed" ] || fail "no second busy worker pod to crash"
cid="$(crictl ps --label "io.kubernetes.pod.name=$crashed" --name worker -q | head -1)"
pid="$(crictl inspect "$cid" | jq -r .info.pid)"
[ -n "$pid" ] && [ "$pid" != null ] && [ "$pid" -gt 1 ] || fail "no process for the worker container of $crashed"
kill -9 "$pid"
say "SIGKILLed the worker process of $crashed (pid $pid on the host)"
sleep 2
helm upgrade "$REL" charts/taskq -n "$NS" -f "$VALUES" --reuse-values \
    --set-string worker.podAnnotations.e2e-roll="$(date +%s)" >/dev/null || fail "helm upgrade failed"
kubectl -n "$NS" rollout status "deploy/$REL-worker" --timeout=180s >/dev/null || fail "the worker rollout did not finish"
left="$(pending e2e-chaos 2>/dev/null || true)"
[ "${left:-0}" -gt 0 ] 2>/dev/null || say "warning: the chaos run had drained (or its queue could not be read) before the rollout finished"
summary="$(wait_settled e2e-chaos 10000 300)" || fail "e2e-chaos records did not settle"
say "e2e-chaos: $summary"
[ "$(jq .succeeded <<<"$summary")" = 10000 ] || fail "not every chaos task succeeded: $summary"
extra="$(jq .extra_runs <<<"$summary")"
bound=$((2 * in_flight))
[ "$extra" -le "$bound" ] || fail "$extra extra executions, more than the $bound in flight on the two killed pods"
record "10,000 tasks, force delete + SIGKILL + rolling upgrade" "all succeeded, $extra extra runs (bound $bound)"

# --- 5. Redis pod deleted mid-run -------------------------------------------------------

say "phase 5: the Redis pod deleted mid-run"
submit e2e-redis 5000 '{"type":"sleep","payload":{"ms":100}}' >/dev/null
wait_running e2e-redis "the Redis-phase tasks"
t0="$(now_ms)"
kubectl -n "$NS" delete pod "$REL-redis-0" --wait=false >/dev/null
sleep 2
kubectl -n "$NS" wait --for=condition=Ready "pod/$REL-redis-0" --timeout=180s >/dev/null ||
    fail "the Redis pod did not come back"
record "Redis pod deleted → Ready again on its PVC (s)" "$(secs_since "$t0")"
recovered="not needed"
if ! summary="$(wait_settled e2e-redis 5000 60)"; then
    recovered="$(api POST /v1/admin/recover | jq -c .)"
    say "records unsettled after the Redis restart; recover: $recovered"
    summary="$(wait_settled e2e-redis 5000 180)" || fail "e2e-redis records did not settle even after recover"
fi
[ "$(jq .succeeded <<<"$summary")" = 5000 ] || fail "not every task survived the Redis restart: $summary"
record "5,000 tasks across a Redis restart" "all succeeded; recover: $recovered"

# --- 6. SIGTERM drains in-flight work --------------------------------------------------

say "phase 6: SIGTERM on pod deletion drains in-flight tasks"
submit e2e-drain 8 '{"type":"sleep","payload":{"ms":4000}}' >/dev/null
wait_running e2e-drain "the drain tasks"
sleep 0.5
busy="$(api GET '/v1/tasks?queue=e2e-drain&status=running&limit=100' | jq -r '.tasks[0].events | map(select(.status == "running")) | last | .worker')"
pod="$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=worker -o json |
    jq -r --arg w "$busy" '.items[] | select(.metadata.name as $n | $w | contains($n)) | .metadata.name' | head -1)"
[ -n "$pod" ] || pod="$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=worker -o jsonpath='{.items[0].metadata.name}')"
grace="$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.spec.terminationGracePeriodSeconds}')"
t0="$(now_ms)"
kubectl -n "$NS" delete pod "$pod" --wait=true --timeout=120s >/dev/null
took="$(secs_since "$t0")"
summary="$(wait_settled e2e-drain 8 120)" || fail "e2e-drain records did not settle"
[ "$(jq .succeeded <<<"$summary")" = 8 ] || fail "drain: $summary"
[ "$(jq .max_attempts <<<"$summary")" = 1 ] || fail "a drained task needed a second attempt: $summary"
awk -v t="$took" -v g="$grace" 'BEGIN { exit !(t < g) }' || fail "pod $pod took ${took}s to stop, grace ${grace}s"
record "SIGTERM drain of $pod (s; grace ${grace} s)" "$took, every task on its first attempt"

say "all phases passed"
cat "$REPORT" >&2
