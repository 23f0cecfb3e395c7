#!/usr/bin/env python3
"""Strict JSON schemas for kubeconform from a live API server's OpenAPI v2 document.

    kubectl get --raw /openapi/v2 > swagger.json
    openapi2jsonschema.py swagger.json OUT_DIR

Writes one schema per kind the server serves (custom resources included) as
OUT_DIR/<group>/<kind>_<version>.json (core kinds in OUT_DIR/v1, as kubeconform's
{{ .Group }} names them), each with the
definitions it reaches, for

    kubeconform -strict -schema-location 'OUT_DIR/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'

Strict means every object definition that lists its properties gets
`additionalProperties: false`, so a misspelled field fails. As in kubeconform's own
schema generator, int-or-string fields accept both types and quantities accept numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fix(node):
    """Makes a definition strict and JSON-schema friendly, recursively."""
    if isinstance(node, list):
        return [fix(n) for n in node]
    if not isinstance(node, dict):
        return node
    # Vendor extensions on a schema node go; names inside `properties` are field names
    # and stay (JSONSchemaProps has fields called `x-kubernetes-list-type` and the like).
    node = {
        k: ({name: fix(p) for name, p in v.items()} if k == "properties" and isinstance(v, dict) else fix(v))
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") or k == "x-kubernetes-group-version-kind"
    }
    if node.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}], **{k: v for k, v in node.items() if k in ("description",)}}
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    return node


def refs(node, out: set[str]) -> None:
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/definitions/"):
            out.add(r[len("#/definitions/"):])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    defs = spec["definitions"]
    # Quantities are strings on the wire but numbers are accepted (`cpu: 1`).
    for name in list(defs):
        if name.endswith(".api.resource.Quantity"):
            defs[name] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    fixed = {name: fix(d) for name, d in defs.items()}
    written = 0
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            # Skip the list and meta kinds that live in every group version.
            if gvk["kind"] in ("DeleteOptions", "WatchEvent", "Status", "APIVersions") or name.startswith("io.k8s.apimachinery"):
                continue
            need, todo = set(), [name]
            while todo:
                n = todo.pop()
                if n in need:
                    continue
                need.add(n)
                found: set[str] = set()
                refs(fixed[n], found)
                todo.extend(found - need)
            root = dict(fixed[name])
            root.pop("x-kubernetes-group-version-kind", None)
            props = dict(root.get("properties", {}))
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            props["apiVersion"] = {"type": "string", "enum": [api_version]}
            props["kind"] = {"type": "string", "enum": [gvk["kind"]]}
            root["properties"] = props
            schema = {
                "$schema": "http://json-schema.org/draft-07/schema#",
                **root,
                "definitions": {n: {k: v for k, v in fixed[n].items() if k != "x-kubernetes-group-version-kind"} for n in sorted(need)},
            }
            # kubeconform's {{ .Group }} is the version itself for the core group ("v1").
            path = out / (gvk["group"] or gvk["version"]) / f"{gvk['kind'].lower()}_{gvk['version']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(schema))
            written += 1
    print(f"openapi2jsonschema: {written} schemas in {out}", file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
