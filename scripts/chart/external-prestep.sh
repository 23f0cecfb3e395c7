#!/usr/bin/env bash
# What charts/taskq/ci/external-values.yaml needs before `helm install`:
#
#   scripts/chart/external-prestep.sh NAMESPACE [--stores]
#
# - in NAMESPACE, the Secrets the value set names: taskq-mongodb-credentials (key `uri`)
#   and taskq-api-tokens-prod (key `tokens`, a fresh admin and submit token);
# - with --stores, a Redis (ACL user `taskq`, the URL's password) and a MongoDB in
#   namespace `data` (scripts/chart/fixtures/external-stores.yaml), for installs whose pods
#   run (ct install on kind); scripts/chart/test.sh's API server runs no pods and skips them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
ns="${1:?usage: external-prestep.sh NAMESPACE [--stores]}"
token() { head -c 48 /dev/urandom | base64 | tr -dc A-Za-z0-9 | head -c 32; }
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$ns" create secret generic taskq-mongodb-credentials \
    --from-literal=uri="mongodb://mongodb.data.svc.cluster.local:27017/taskq_prod" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$ns" create secret generic taskq-api-tokens-prod \
    --from-literal=tokens="$(printf 'admin:%s\nsubmit:%s\n' "$(token)" "$(token)")" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
log "external pre-step: Secrets taskq-mongodb-credentials and taskq-api-tokens-prod in $ns"
if [ "${2:-}" = --stores ]; then
    kubectl apply -f "$TASKQ_ROOT/scripts/chart/fixtures/external-stores.yaml" >/dev/null
    kubectl -n data rollout status deployment/redis --timeout=180s >/dev/null
    kubectl -n data rollout status deployment/mongodb --timeout=180s >/dev/null
    log "external pre-step: Redis and MongoDB ready in namespace data"
fi
