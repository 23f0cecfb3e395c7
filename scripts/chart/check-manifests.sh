#!/usr/bin/env bash
# k8s/manifests/taskq.yaml is the chart rendered with k8s/manifests/values.yaml (release
# `taskq`, namespace `taskq`, no test hooks). This fails when the committed file differs
# from a fresh render, and with --write regenerates it.
#
#   scripts/chart/check-manifests.sh [--write]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if ! command -v helm >/dev/null; then
  PATH="$(bash scripts/chart/install-tools.sh):$PATH"
  export PATH
fi
TARGET=k8s/manifests/taskq.yaml

render() {
  printf '# Generated from charts/taskq by scripts/chart/check-manifests.sh --write; do not edit.\n'
  printf '# Values: k8s/manifests/values.yaml. Create the taskq-mongodb and taskq-api-tokens Secrets first\n'
  printf '# (k8s/manifests/README.md).\n'
  helm template taskq charts/taskq --namespace taskq --no-hooks -f k8s/manifests/values.yaml |
    sed -e 's/[[:space:]]*$//' -e '/^# Source: /d'
}

fresh="$(mktemp)"
trap 'rm -f "$fresh"' EXIT
render >"$fresh"
if [[ "${1:-}" == --write ]]; then
  cp "$fresh" "$TARGET"
  echo "wrote $TARGET"
elif ! diff -u "$TARGET" "$fresh"; then
  echo "$TARGET is out of date: run scripts/chart/check-manifests.sh --write" >&2
  exit 1
else
  echo "$TARGET is in sync with the chart"
fi
