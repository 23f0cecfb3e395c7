#!/usr/bin/env python3
"""Template tests over `helm template` output of the taskq chart.

    check_rendered.py VALUES_NAME RENDERED.yaml [REPO_ROOT]

Checks, for every object the chart renders with one ci/ value set:

- every long-running container has liveness, readiness and startup probes; the taskq
  containers (api, worker, controller) probe /livez (liveness, startup) and /readyz;
- every container has resource requests and a memory limit;
- every container runs hardened: non-root with a numeric user, read-only root file system,
  no privilege escalation, all capabilities dropped and none added, RuntimeDefault seccomp;
- only the controller mounts a ServiceAccount token;
- the controller's Role grants exactly what it uses, and there is no ClusterRole;
- the taskq containers set only variables their binary reads (TASKQ_* names from
  scripts/chart/env/, which the binaries' tests keep equal to what their clap parsers
  declare), the standard OTEL_* ones, RUST_LOG, RUST_BACKTRACE, and variables that only
  feed a later one's $(VAR) expansion;
- the worker's shutdown grace is shorter than its terminationGracePeriodSeconds;
- authentication: with api.auth.enabled (every set but `auth-off`) the api gets
  TASKQ_AUTH=on and TASKQ_TOKENS_FILE pointing into a read-only mount of the tokens Secret
  (the generated one, with consistent `tokens`/`admin-token`/`submit-token` keys, or the
  existing one of the `external` set), and the `helm test` pod mounts the same Secret and
  sends `Authorization: Bearer`; with it off, TASKQ_AUTH=off and no tokens anywhere. In every
  set no token appears outside a Secret: not in a ConfigMap, not in an env value literal;
- objects carry the standard labels, sit in the release namespace, and images are pinned;
- per value set (ci/ sets and `dev`, the k8s/dev overlay): what must (not) be there
  (bundled stores, Ingress TLS, the scaler...).

Prints one line per failed check and a closing `N passed, N failed` line; exits 1 on any
failure.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
import sys
from pathlib import Path

import yaml

NAMESPACE = "taskq-ci"
TASKQ_REPOS = ("taskq-api", "taskq-worker", "taskq-controller")
OTEL_VARS = {
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
}
# Read by the Rust runtime of every binary, and by its TLS roots (rustls-native-certs).
RUNTIME_VARS = {"RUST_LOG", "RUST_BACKTRACE", "SSL_CERT_FILE", "SSL_CERT_DIR"}
# Exactly what taskq-controller calls, as (apiGroup, resource, verb): its watches (list,
# watch), the Deployment read when its cache misses (get), the scale and status patches,
# the Lease (get, create, update with resourceVersion) and Events (create, patch for
# series). crates/taskq-controller's envtest runs the controller with the chart's Role,
# so a missing grant fails there; an extra one fails here.
CONTROLLER_ALLOWED = {
    *(("taskq.dev", "taskqueuescalers", v) for v in ("list", "watch")),
    ("taskq.dev", "taskqueuescalers/status", "patch"),
    *(("apps", "deployments", v) for v in ("get", "list", "watch")),
    ("apps", "deployments/scale", "patch"),
    *(("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")),
    *(("events.k8s.io", "events", v) for v in ("create", "patch")),
    *(("autoscaling", "horizontalpodautoscalers", v) for v in ("list", "watch")),
    *(("keda.sh", "scaledobjects", v) for v in ("list", "watch")),
}
# The api's authentication variables (crates/taskq-api/src/lib.rs ApiArgs): must be in its
# list, or the env-name check below would be checking against stale names.
API_AUTH_VARS = {"TASKQ_AUTH", "TASKQ_TOKENS", "TASKQ_TOKENS_FILE", "TASKQ_MAX_CONCURRENT_REQUESTS"}
# Value sets and the tokens Secret they use: generated (None) or an existing one; `auth-off`
# has authentication off.
AUTH_OFF_SETS = {"auth-off"}
EXISTING_TOKENS_SECRET = {"external": "taskq-api-tokens-prod"}
TOKEN_KEYS = ("tokens", "admin-token", "submit-token")
# A `role:token` entry (what TASKQ_TOKENS and the tokens file hold).
ROLE_TOKEN = re.compile(r"\b(?:submit|admin)\s*:\s*[A-Za-z0-9._~+/=-]{16,}")
STORES = ("redis", "mongodb")
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"}


class Checker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL [{self.name}] {what}")
        return ok


def binary_vars(root: Path) -> dict[str, set[str]]:
    """TASKQ_* variables each binary's clap parser reads: scripts/chart/env/taskq-<binary>.txt,
    which the binaries' own tests keep equal to `Command::get_arguments().get_env()`
    (taskq-controller's config tests, taskq-tests' env_names)."""
    out = {}
    for comp in ("api", "worker", "controller"):
        f = root / "scripts" / "chart" / "env" / f"taskq-{comp}.txt"
        if f.is_file():
            out[comp] = {line.strip() for line in f.read_text().splitlines() if line.strip()}
    return out


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["spec"]
    return obj["spec"]["template"]["spec"]


def effective(pod_sc: dict, ctr_sc: dict, key: str):
    return ctr_sc.get(key, pod_sc.get(key))


def secret_data(obj: dict) -> dict[str, str]:
    """A Secret's data and stringData, decoded."""
    out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    out.update(obj.get("stringData") or {})
    return out


def mounted_secret_file(spec: dict, ctr: dict, path: str) -> tuple[str | None, str | None, bool]:
    """(Secret name, key, readOnly) of the secret volume that puts a file at `path` in `ctr`."""
    for m in ctr.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if "subPath" in m:
            if mount != path:
                continue
            rel = m["subPath"]
        elif posixpath.dirname(path) == mount:
            rel = None
        else:
            continue
        vol = next((v for v in spec.get("volumes", []) if v["name"] == m["name"]), {})
        sec = vol.get("secret")
        if not sec:
            continue
        name = posixpath.basename(path) if rel is None else rel
        items = sec.get("items")
        if items:
            key = next((i["key"] for i in items if i["path"] == name), None)
        else:
            key = name
        return sec.get("secretName"), key, m.get("readOnly") is True
    return None, None, False


def check_periodic(c: "Checker", docs: list[dict], api: dict | None) -> None:
    """With TASKQ_PERIODIC_FILE, the api mounts the file from the chart's ConfigMap, whose
    content is a JSON list of schedules; without it, no periodic ConfigMap exists."""
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    periodic = {n: m for n, m in maps.items() if "periodic.json" in m.get("data", {})}
    if api is None:
        c.check(not periodic, "no periodic ConfigMap without an api")
        return
    spec = api["spec"]["template"]["spec"]
    ctr = next(x for x in spec["containers"] if x["name"] == "api")
    env = {e["name"]: e for e in ctr.get("env", [])}
    path = env.get("TASKQ_PERIODIC_FILE", {}).get("value")
    if path is None:
        c.check(not periodic, f"no periodic ConfigMap without TASKQ_PERIODIC_FILE (found {sorted(periodic)})")
        return
    mount = next((m for m in ctr.get("volumeMounts", []) if posixpath.dirname(path) == m["mountPath"].rstrip("/")), None)
    vol = next((v for v in spec.get("volumes", []) if mount and v["name"] == mount["name"]), {})
    cm = vol.get("configMap", {}).get("name")
    c.check(cm in periodic, f"api: TASKQ_PERIODIC_FILE {path} comes from the periodic ConfigMap (got {cm})")
    c.check(bool(mount) and mount.get("readOnly") is True, "api: the periodic ConfigMap is mounted readOnly")
    c.check("checksum/periodic" in api["spec"]["template"]["metadata"].get("annotations", {}),
            "api: pods roll when the schedules change (checksum/periodic)")
    if cm in periodic:
        try:
            schedules = json.loads(periodic[cm]["data"]["periodic.json"])
        except ValueError as e:
            schedules = None
            c.check(False, f"periodic.json is JSON ({e})")
        c.check(isinstance(schedules, list) and all({"name", "cron", "task"} <= set(x) for x in schedules),
                "periodic.json is a list of {name, cron, task}")


def check_auth(c: "Checker", name: str, docs: list[dict], api: dict | None, test_pod: dict | None) -> None:
    """The api's tokens: where they come from, who mounts them, and that they leak nowhere."""
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    token_secrets = {n: s for n, s in secrets.items() if set(TOKEN_KEYS) & set(secret_data(s))}
    enabled = name not in AUTH_OFF_SETS
    if api is not None:
        spec = api["spec"]["template"]["spec"]
        ctr = next(x for x in spec["containers"] if x["name"] == "api")
        env = {e["name"]: e for e in ctr.get("env", [])}
        mcr = env.get("TASKQ_MAX_CONCURRENT_REQUESTS", {}).get("value", "")
        c.check(mcr.isdigit() and int(mcr) >= 1, f"api: TASKQ_MAX_CONCURRENT_REQUESTS is a positive integer (got {mcr!r})")
        c.check("value" not in env.get("TASKQ_TOKENS", {}), "api: TASKQ_TOKENS must never be a literal value")
        ui = env.get("TASKQ_UI", {}).get("value")
        c.check(ui in ("on", "read-only", "off"), f"api: TASKQ_UI is on, read-only or off (got {ui!r})")
        trace_url = env.get("TASKQ_UI_TRACE_URL", {}).get("value")
        if name == "observability":
            c.check(ui == "read-only", f"observability: api.ui.mode reaches TASKQ_UI (got {ui!r})")
            c.check(trace_url is not None and "{trace_id}" in trace_url,
                    f"observability: TASKQ_UI_TRACE_URL carries {{trace_id}} (got {trace_url!r})")
        else:
            c.check(ui == "on" and trace_url is None, f"api: the dashboard is on without trace links by default (got {ui!r}, {trace_url!r})")
        if not enabled:
            c.check(env.get("TASKQ_AUTH", {}).get("value") == "off", f"api: TASKQ_AUTH=off")
            c.check("TASKQ_TOKENS_FILE" not in env and "TASKQ_TOKENS" not in env, f"api: no tokens with auth off")
            c.check(not token_secrets, f"no tokens Secret with auth off (found {sorted(token_secrets)})")
            secret_vols = [v["name"] for v in spec.get("volumes", []) if "secret" in v]
            c.check(not secret_vols, f"api: no Secret mounted with auth off (found {secret_vols})")
        else:
            c.check(env.get("TASKQ_AUTH", {}).get("value") == "on", "api: TASKQ_AUTH=on")
            path = env.get("TASKQ_TOKENS_FILE", {}).get("value", "")
            c.check(path.startswith("/"), f"api: TASKQ_TOKENS_FILE is an absolute path (got {path!r})")
            secret, key, read_only = mounted_secret_file(spec, ctr, path)
            c.check(secret is not None and key == "tokens", f"api: TASKQ_TOKENS_FILE {path} is key `tokens` of a mounted Secret (got {secret}/{key})")
            c.check(read_only, "api: the tokens Secret is mounted readOnly")
            c.check(ctr.get("securityContext", {}).get("readOnlyRootFilesystem") is True, "api: root file system stays read-only")
            want = EXISTING_TOKENS_SECRET.get(name)
            if want:
                c.check(secret == want, f"api: tokens from the existing Secret {want} (got {secret})")
                c.check(not token_secrets, f"no generated tokens Secret next to an existing one (found {sorted(token_secrets)})")
            else:
                c.check(secret == f"{api['metadata']['name']}-tokens", f"api: tokens from the generated Secret (got {secret})")
                data = secret_data(secrets.get(secret, {}))
                c.check(set(TOKEN_KEYS) <= set(data), f"Secret/{secret}: keys {TOKEN_KEYS} (got {sorted(data)})")
                adm, sub = data.get("admin-token", ""), data.get("submit-token", "")
                for role, tok in (("admin", adm), ("submit", sub)):
                    c.check(len(tok) == 32 and tok.isalnum(), f"Secret/{secret}: the {role} token is 32 random alphanumerics")
                lines = [x.strip() for x in data.get("tokens", "").splitlines() if x.strip() and not x.strip().startswith("#")]
                c.check(sorted(lines) == sorted([f"admin:{adm}", f"submit:{sub}"]),
                        f"Secret/{secret}: `tokens` holds exactly admin:<admin-token> and submit:<submit-token>")
                c.check(adm != sub, f"Secret/{secret}: distinct admin and submit tokens")
            if test_pod is not None:
                tspec = test_pod["spec"]
                tctr = tspec["containers"][0]
                tenv = {e["name"]: e.get("value", "") for e in tctr.get("env", [])}
                tpath = tenv.get("TOKENS_FILE", "")
                tsecret, tkey, tro = mounted_secret_file(tspec, tctr, tpath)
                c.check(tsecret == secret and tkey == "tokens" and tro,
                        f"helm test: mounts the api's tokens Secret read-only at TOKENS_FILE (got {tsecret}/{tkey} at {tpath!r})")
                script = " ".join(tctr.get("command", []) + tctr.get("args", []))
                c.check("Authorization: Bearer" in script, "helm test: sends `Authorization: Bearer`")
    if test_pod is not None and not enabled:
        c.check(not test_pod["spec"].get("volumes") and "TOKENS_FILE" not in {e["name"] for e in test_pod["spec"]["containers"][0].get("env", [])},
                f"helm test: no token with auth off")

    # No token outside a Secret: not in a ConfigMap, not in an env value literal.
    tokens = set()
    for s in token_secrets.values():
        data = secret_data(s)
        tokens |= {data[k] for k in ("admin-token", "submit-token") if data.get(k)}
        tokens |= {m.split(":", 1)[1].strip() for m in ROLE_TOKEN.findall(data.get("tokens", ""))}
    for d in docs:
        if d["kind"] == "Secret":
            continue
        ident = f"{d['kind']}/{d['metadata']['name']}"
        text = yaml.safe_dump(d)
        c.check(not any(tok in text for tok in tokens), f"{ident}: contains an API token (tokens belong in the Secret only)")
        if d["kind"] == "ConfigMap":
            for k, v in (d.get("data") or {}).items():
                c.check(not ROLE_TOKEN.search(str(v)), f"{ident}: key {k} holds a `role:token` entry")
        if d["kind"] in POD_KINDS:
            spec = pod_spec(d)
            for ctr in spec.get("initContainers", []) + spec["containers"]:
                for e in ctr.get("env", []):
                    if "value" in e:
                        c.check(not ROLE_TOKEN.search(str(e["value"])) and not any(tok in str(e["value"]) for tok in tokens),
                                f"{ident} container {ctr['name']}: env {e['name']} holds a token literal")


def main() -> int:
    name, rendered = sys.argv[1], Path(sys.argv[2])
    root = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).resolve().parents[2]
    c = Checker(name)
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    c.check(len(docs) > 0, "the chart rendered no object")
    known = binary_vars(root)
    c.check(all(known.get(b) for b in ("api", "worker", "controller")), "scripts/chart/env/taskq-{api,worker,controller}.txt missing or empty")
    missing = API_AUTH_VARS - known.get("api", set())
    c.check(not missing, f"scripts/chart/env/taskq-api.txt does not list {sorted(missing)}")
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def component(d: dict) -> str:
        return d["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")

    for d in docs:
        kind, meta = d["kind"], d["metadata"]
        ident = f"{kind}/{meta['name']}"
        if kind in CLUSTER_SCOPED:
            c.check("namespace" not in meta, f"{ident}: cluster-scoped object with a namespace")
        else:
            c.check(meta.get("namespace") == NAMESPACE, f"{ident}: namespace is {meta.get('namespace')!r}, not the release's")
        if kind != "CustomResourceDefinition":
            labels = meta.get("labels", {})
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                        "app.kubernetes.io/managed-by"):
                c.check(key in labels, f"{ident}: label {key} missing")
            store = labels.get("app.kubernetes.io/component") in STORES and kind not in ("Secret", "NetworkPolicy")
            if store:
                # scripts/chart/test.sh also renders with another chart version and compares.
                c.check("helm.sh/chart" not in labels, f"{ident}: a bundled store's object carries the taskq chart version")
            else:
                c.check("helm.sh/chart" in labels, f"{ident}: label helm.sh/chart missing")
        if kind == "Secret" and labels.get("app.kubernetes.io/component") in STORES and any("password" in k for k in secret_data(d)):
            c.check(meta.get("annotations", {}).get("helm.sh/resource-policy") == "keep",
                    f"{ident}: generated store credentials are kept on uninstall (helm.sh/resource-policy: keep)")
        c.check(kind not in ("ClusterRole", "ClusterRoleBinding"), f"{ident}: the chart must not grant cluster-wide rights")

        if kind not in POD_KINDS:
            continue
        spec = pod_spec(d)
        pod_sc = spec.get("securityContext", {})
        comp = component(d)
        is_hook = "helm.sh/hook" in meta.get("annotations", {})
        automount = spec.get("automountServiceAccountToken")
        if comp == "controller":
            c.check(automount is True, f"{ident}: the controller needs its ServiceAccount token")
        else:
            c.check(automount is False, f"{ident}: automountServiceAccountToken must be false")
        c.check(pod_sc.get("runAsNonRoot") is True, f"{ident}: pod runAsNonRoot")
        for ctr in spec.get("initContainers", []) + spec["containers"]:
            cid = f"{ident} container {ctr['name']}"
            sc = ctr.get("securityContext", {})
            user = effective(pod_sc, sc, "runAsUser")
            c.check(isinstance(user, int) and user > 0, f"{cid}: runAsUser must be a numeric non-root user (got {user!r})")
            c.check(effective(pod_sc, sc, "runAsNonRoot") is True, f"{cid}: runAsNonRoot")
            c.check(sc.get("readOnlyRootFilesystem") is True, f"{cid}: readOnlyRootFilesystem")
            c.check(sc.get("allowPrivilegeEscalation") is False, f"{cid}: allowPrivilegeEscalation must be false")
            c.check(sc.get("privileged") is not True, f"{cid}: privileged")
            caps = sc.get("capabilities", {})
            c.check("ALL" in caps.get("drop", []) and not caps.get("add"), f"{cid}: capabilities must drop ALL and add none")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            c.check(seccomp == "RuntimeDefault", f"{cid}: seccompProfile RuntimeDefault (got {seccomp!r})")
            res = ctr.get("resources", {})
            c.check(bool(res.get("requests", {}).get("cpu")) and bool(res.get("requests", {}).get("memory")),
                    f"{cid}: cpu and memory requests")
            c.check(bool(res.get("limits", {}).get("memory")), f"{cid}: memory limit")
            image = ctr["image"]
            c.check(not image.endswith(":latest") and (":" in image.rsplit("/", 1)[-1] or "@sha256:" in image),
                    f"{cid}: image {image} must carry a fixed tag or digest")
            if not is_hook and ctr in spec["containers"]:
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    c.check(probe in ctr, f"{cid}: {probe} missing")
            repo = image.split("@")[0].rsplit(":", 1)[0]
            if repo.endswith(TASKQ_REPOS):
                c.check(ctr.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/livez", f"{cid}: liveness on /livez")
                c.check(ctr.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{cid}: readiness on /readyz")
                c.check(ctr.get("startupProbe", {}).get("httpGet", {}).get("path") == "/livez", f"{cid}: startup on /livez")
                names = [e["name"] for e in ctr.get("env", [])]
                c.check(len(names) == len(set(names)), f"{cid}: duplicate env names")
                allowed = known.get(comp, set()) | OTEL_VARS | RUNTIME_VARS
                # A variable that only feeds the kubelet's $(VAR) expansion of a later one
                # (the Redis password inside TASKQ_REDIS_URL) is not read by the binary.
                expanded = {m for e in ctr.get("env", []) for m in re.findall(r"\$\(([A-Z0-9_]+)\)", str(e.get("value", "")))}
                for n in names:
                    c.check(n in allowed or n in expanded, f"{cid}: sets {n}, which taskq-{comp} does not read")
                env = {e["name"]: e for e in ctr.get("env", [])}
                if name != "external":
                    url = env.get("TASKQ_REDIS_URL", {}).get("value", "")
                    c.check(re.fullmatch(r"redis://[A-Za-z0-9_.-]+:\$\(REDIS_PASSWORD\)@[a-z0-9.-]+:6379", url) is not None,
                            f"{cid}: TASKQ_REDIS_URL logs in with the Secret's password through $(REDIS_PASSWORD) (got {url!r})")
                    ref = env.get("REDIS_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
                    c.check(bool(ref.get("name")) and names.index("REDIS_PASSWORD") < names.index("TASKQ_REDIS_URL"),
                            f"{cid}: REDIS_PASSWORD comes from a Secret and precedes TASKQ_REDIS_URL")
                c.check(env.get("TASKQ_LISTEN", {}).get("value", "").startswith("0.0.0.0:"), f"{cid}: must listen on 0.0.0.0")
                if comp == "worker":
                    grace = int(env["TASKQ_SHUTDOWN_GRACE_MS"]["value"])
                    c.check(grace < 1000 * spec.get("terminationGracePeriodSeconds", 30),
                            f"{cid}: TASKQ_SHUTDOWN_GRACE_MS {grace} must be below terminationGracePeriodSeconds")

    # Exactly the RBAC the controller uses.
    for role in by_kind.get("Role", []):
        grants = set()
        for rule in role.get("rules", []):
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        grants.add((g, r, v))
        extra = grants - CONTROLLER_ALLOWED
        c.check(not extra, f"Role/{role['metadata']['name']}: grants beyond the controller's needs: {sorted(extra)}")
        missing = CONTROLLER_ALLOWED - grants
        c.check(not missing, f"Role/{role['metadata']['name']}: misses what the controller calls: {sorted(missing)}")
        c.check(not any("*" in x for g in grants for x in g), f"Role/{role['metadata']['name']}: wildcard")

    # The helm test hook.
    hooks = [d for d in by_kind.get("Pod", []) if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    c.check(len(hooks) == 1, "exactly one `helm test` hook pod")

    # API tokens.
    api_deploy = next((d for d in by_kind.get("Deployment", []) if component(d) == "api"), None)
    check_auth(c, name, docs, api_deploy, hooks[0] if hooks else None)
    check_periodic(c, docs, api_deploy)

    # PodDisruptionBudgets for the api and the workers.
    # (The dev overlay runs single replicas, where a budget would only block node drains.)
    pdbs = {component(d) for d in by_kind.get("PodDisruptionBudget", [])}
    # No budget may block a node drain: maxUnavailable 0, or minAvailable not below the
    # replicas (the autoscaler's minimum for an autoscaled Deployment, 0 when unknown).
    scalers = {x["spec"]["deployment"]: x["spec"].get("minReplicas", 1) for x in by_kind.get("TaskQueueScaler", [])}
    hpas = {x["spec"]["scaleTargetRef"]["name"]: x["spec"].get("minReplicas", 1) for x in by_kind.get("HorizontalPodAutoscaler", [])}
    for pdb in by_kind.get("PodDisruptionBudget", []):
        target = next((d for d in by_kind.get("Deployment", []) if component(d) == component(pdb)), None)
        if target is None:
            continue
        tname = target["metadata"]["name"]
        replicas = target["spec"].get("replicas", scalers.get(tname, hpas.get(tname, 0)))
        spec = pdb["spec"]
        ident = f"PodDisruptionBudget/{pdb['metadata']['name']}"
        if "minAvailable" in spec:
            m = spec["minAvailable"]
            c.check(isinstance(m, int) and m < replicas, f"{ident}: minAvailable {m} with {replicas} replicas blocks a node drain")
        else:
            m = spec.get("maxUnavailable")
            c.check(m not in (0, "0%", None), f"{ident}: maxUnavailable {m!r} blocks a node drain")
    if name != "dev":
        c.check({"api", "worker"} <= pdbs, f"PodDisruptionBudgets for api and worker (found {sorted(pdbs)})")
    if name == "dev":
        ing = by_kind.get("Ingress", [])
        c.check(len(ing) == 1 and ing[0]["spec"]["rules"][0]["host"] == "taskq.localtest.me", "dev: the api behind the kind ingress")
        c.check(any(component(d) == "jaeger" for d in by_kind.get("Deployment", [])), "dev: Jaeger")

    # Per value set.
    deployments = {component(d): d for d in by_kind.get("Deployment", [])}
    statefulsets = {component(d) for d in by_kind.get("StatefulSet", [])}
    c.check({"api", "worker"} <= set(deployments), "api and worker Deployments")
    if name == "external":
        c.check(not statefulsets, f"external stores: no bundled StatefulSet (found {sorted(statefulsets)})")
    else:
        c.check({"redis", "mongodb"} <= statefulsets, "bundled Redis and MongoDB StatefulSets")
        for sts in by_kind.get("StatefulSet", []):
            c.check(bool(sts["spec"].get("volumeClaimTemplates")), f"StatefulSet/{sts['metadata']['name']}: a PVC")
        redis = [s for s in by_kind.get("StatefulSet", []) if component(s) == "redis"]
        if redis:
            args = redis[0]["spec"]["template"]["spec"]["containers"][0].get("args", [])
            c.check("--appendonly" in args and args[args.index("--appendonly") + 1] == "yes", "Redis runs with appendonly yes")
            c.check("noeviction" in args, "Redis never evicts keys")
            opt = lambda flag: args[args.index(flag) + 1] if flag in args else None
            c.check(opt("--requirepass") == "$(REDIS_PASSWORD)", f"Redis requires a password from its Secret (requirepass {opt('--requirepass')!r})")
            c.check(opt("--protected-mode") == "yes", "Redis keeps protected mode on")
            c.check(opt("--save") == "", "Redis takes no RDB snapshots (save \"\")")
            user = args[args.index("--user") + 1:] if "--user" in args else []
            user = user[: next((i for i, a in enumerate(user) if a.startswith("--")), len(user))]
            c.check(len(user) > 2 and user[1] == "on" and user[2].startswith(">$("), f"Redis has an application ACL user with a Secret password (got {user[:3]})")
            for denied in ("-flushall", "-flushdb", "-config", "-debug", "-@admin"):
                c.check(denied in user, f"the Redis application user is denied {denied[1:]}")
    routes = by_kind.get("HTTPRoute", [])
    if name == "gateway":
        c.check(len(routes) == 1 and not by_kind.get("Ingress"), "gateway: an HTTPRoute and no Ingress")
        if routes:
            api_svc = next((d for d in by_kind.get("Service", []) if component(d) == "api"), None)
            backend = routes[0]["spec"]["rules"][0]["backendRefs"][0]
            c.check(api_svc is not None and backend["name"] == api_svc["metadata"]["name"] and
                    backend["port"] == api_svc["spec"]["ports"][0]["port"], "gateway: the route's backend is the api Service port")
            c.check(routes[0]["spec"]["parentRefs"][0]["name"] == "eg", "gateway: the route attaches to the given Gateway")
        hpas = by_kind.get("HorizontalPodAutoscaler", [])
        c.check(len(hpas) == 1 and hpas[0]["spec"]["scaleTargetRef"]["name"] == deployments["worker"]["metadata"]["name"],
                "gateway: worker.hpa scales the worker Deployment")
        c.check("replicas" not in deployments["worker"]["spec"], "gateway: the HPA-scaled worker Deployment sets no replicas")
    else:
        c.check(not routes, "no HTTPRoute unless api.httpRoute.enabled")
        c.check(not by_kind.get("HorizontalPodAutoscaler"), "no HorizontalPodAutoscaler unless worker.hpa.enabled")
    if name == "observability":
        c.check(len(by_kind.get("PrometheusRule", [])) == 1, "observability: the PrometheusRule")
        alerts = {r["alert"] for g in by_kind.get("PrometheusRule", [{}])[0].get("spec", {}).get("groups", []) for r in g["rules"]}
        want = {"TaskqBacklogGrowing", "TaskqDeadLetterGrowing", "TaskqWorkersSaturated", "TaskqTaskErrorRatioHigh",
                "TaskqApiErrorRatioHigh", "TaskqControllerReconcileErrors", "TaskqRedisUnreachable", "TaskqMongoDBUnreachable"}
        c.check(want <= alerts, f"observability: alerts {sorted(want - alerts)} missing")
    if name == "ingress-tls":
        ing = by_kind.get("Ingress", [])
        c.check(len(ing) == 1 and bool(ing[0]["spec"].get("tls")), "an Ingress with TLS")
    if name in ("autoscaling", "observability", "extensions"):
        c.check("controller" in deployments, "a controller Deployment")
        c.check(len(by_kind.get("Role", [])) == 1 and len(by_kind.get("RoleBinding", [])) == 1, "the controller's Role and RoleBinding")
        scalers = by_kind.get("TaskQueueScaler", [])
        c.check(len(scalers) == 1, "a TaskQueueScaler for the worker")
        c.check("replicas" not in deployments["worker"]["spec"], "the autoscaled worker Deployment sets no replicas")
        if scalers:
            c.check(scalers[0]["spec"]["deployment"] == deployments["worker"]["metadata"]["name"],
                    "the TaskQueueScaler targets the worker Deployment")
        crds = [d["metadata"]["name"] for d in by_kind.get("CustomResourceDefinition", [])]
        c.check("taskqueuescalers.taskq.dev" in crds, "the TaskQueueScaler CRD is rendered (--include-crds)")
    else:
        c.check("controller" not in deployments and not by_kind.get("Role"), "no controller unless enabled")
    for comp_name in ("api", "worker"):
        d = deployments.get(comp_name)
        if d is None:
            continue
        spec = d["spec"]["template"]["spec"]
        aff = spec.get("affinity", {}).get("podAntiAffinity", {})
        want = "requiredDuringSchedulingIgnoredDuringExecution" if (name, comp_name) == ("extensions", "api") else "preferredDuringSchedulingIgnoredDuringExecution"
        c.check(want in aff, f"{comp_name}: anti-affinity preset {want} (got {sorted(aff)})")
    if name == "extensions":
        for comp_name in ("api", "worker", "controller"):
            d = deployments[comp_name]
            meta, spec = d["spec"]["template"]["metadata"], d["spec"]["template"]["spec"]
            main = spec["containers"][0]
            c.check(meta["labels"].get("team") == "platform" or comp_name == "worker", f"{comp_name}: podLabels")
            c.check(spec.get("priorityClassName") == "system-cluster-critical" or comp_name == "worker", f"{comp_name}: priorityClassName")
            c.check(bool(spec.get("topologySpreadConstraints")) or comp_name == "worker", f"{comp_name}: topologySpreadConstraints")
        api_spec = deployments["api"]["spec"]["template"]["spec"]
        api_main = api_spec["containers"][0]
        c.check(api_main.get("envFrom") == [{"configMapRef": {"name": "taskq-extra-env", "optional": True}}], "api: extraEnvFrom")
        c.check(any(m["name"] == "ca-bundle" for m in api_main.get("volumeMounts", [])) and
                any(v["name"] == "ca-bundle" for v in api_spec.get("volumes", [])), "api: extraVolumes and extraVolumeMounts")
        c.check(any(m["name"] == "api-tokens" for m in api_main.get("volumeMounts", [])), "api: the tokens mount stays beside the extra mounts")
        c.check(deployments["api"]["spec"]["template"]["metadata"]["annotations"].get("example.com/owner") == "platform", "api: podAnnotations")
        w_spec = deployments["worker"]["spec"]["template"]["spec"]
        c.check([x["name"] for x in w_spec.get("initContainers", [])] == ["wait"], "worker: initContainers")
        c.check("release taskq starting" in " ".join(w_spec.get("initContainers", [{}])[0].get("command", [])), "worker: initContainers go through tpl")
        c.check([x["name"] for x in w_spec["containers"]] == ["worker", "proxy"], "worker: sidecars after the worker container")
        c.check(any(v["name"] == "scratch" for v in w_spec.get("volumes", [])), "worker: extraVolumes")
        c.check(w_spec["containers"][0].get("envFrom", [{}])[0].get("secretRef", {}).get("name") == "taskq-handler-credentials", "worker: extraEnvFrom")
        claims = [t for st in by_kind.get("StatefulSet", []) for t in st["spec"].get("volumeClaimTemplates", [])]
        c.check(claims and all(t["spec"].get("storageClassName") == "standard" for t in claims), "global.storageClass reaches the stores' claims")
    if name == "observability":
        env = {e["name"]: e.get("value") for e in deployments["worker"]["spec"]["template"]["spec"]["containers"][0]["env"]}
        c.check(env.get("OTEL_RESOURCE_ATTRIBUTES") == "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE_NAME),k8s.node.name=$(K8S_NODE_NAME)",
                f"worker: OTEL_RESOURCE_ATTRIBUTES from the downward API (got {env.get('OTEL_RESOURCE_ATTRIBUTES')!r})")
        fields = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in deployments["worker"]["spec"]["template"]["spec"]["containers"][0]["env"]}
        c.check((fields.get("K8S_POD_NAME"), fields.get("K8S_NAMESPACE_NAME"), fields.get("K8S_NODE_NAME")) == ("metadata.name", "metadata.namespace", "spec.nodeName"),
                "worker: K8S_* variables from the downward API")
    if name == "observability":
        c.check(any(component(d) == "jaeger" for d in by_kind.get("Deployment", [])), "a Jaeger Deployment")
        env = {e["name"]: e.get("value") for e in deployments["api"]["spec"]["template"]["spec"]["containers"][0]["env"]}
        c.check(str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).endswith("-jaeger:4317"), "OTLP goes to the bundled Jaeger")
        c.check(len(by_kind.get("ServiceMonitor", [])) == 2, "ServiceMonitors for api and worker")
        cms = [m for m in by_kind.get("ConfigMap", []) if "taskq.json" in m.get("data", {})]
        c.check(len(cms) == 1, "the Grafana dashboard ConfigMap")

    print(f"template tests [{name}]: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
