#!/usr/bin/env python3
"""Runs the bundled Redis exactly as the chart renders it, on a real redis-server, and
checks its security and persistence settings from the outside.

    redis_auth_test.py RENDERED.yaml

From the rendered objects: the Redis StatefulSet's command and args, its Secret-backed
environment (the generated Secret's passwords), its probe command, and TASKQ_REDIS_URL of
the api Deployment. The kubelet's `$(VAR)` expansion is applied to the args and to the
api's URL, `--port`/`--dir` are moved to a free port and a temporary directory, and then:

- a client without credentials gets NOAUTH; a wrong password is refused;
- the api's expanded URL logs in as the application user, which may run what taskq runs
  (strings, hashes, sorted sets, streams, Lua, INFO, SCAN) and may not run FLUSHALL,
  FLUSHDB, CONFIG, DEBUG, SHUTDOWN, ACL SETUSER;
- the `default` user (REDISCLI_AUTH, what the probes use) may run CONFIG;
- protected mode is on, appendonly yes, no RDB `save` points, maxmemory-policy noeviction,
  maxmemory below the container's memory limit;
- the liveness probe command succeeds with the rendered REDISCLI_AUTH and fails with a
  wrong password.

Prints `N passed, N failed`; exits 1 on any failure. Needs redis-server and redis-cli.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

import yaml

passed = 0
failed = 0


def check(ok: bool, what: str) -> None:
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion (unknown names stay as they are)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def env_of(ctr: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in ctr.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port: int, *args: str, user: str | None = None, password: str | None = None) -> str:
    cmd = ["redis-cli", "-p", str(port), "--no-auth-warning"]
    if user:
        cmd += ["--user", user]
    if password is not None:
        cmd += ["--pass", password]
    out = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).strip()


def mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for u, f in units.items():
        if quantity.endswith(u):
            return float(quantity[: -len(u)]) * f
    return float(quantity) / 2**20


def main() -> int:
    docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    secrets = {}
    for d in docs:
        if d["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
            data.update(d.get("stringData") or {})
            secrets[d["metadata"]["name"]] = data
    comp = lambda d: d["metadata"]["labels"].get("app.kubernetes.io/component")
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and comp(d) == "redis")
    api = next(d for d in docs if d["kind"] == "Deployment" and comp(d) == "api")
    ctr = sts["spec"]["template"]["spec"]["containers"][0]
    env = env_of(ctr, secrets)
    api_env = env_of(api["spec"]["template"]["spec"]["containers"][0], secrets)
    url = urlsplit(api_env["TASKQ_REDIS_URL"])
    check(url.scheme == "redis" and bool(url.username) and bool(url.password), f"the api's Redis URL names a user and a password ({url.scheme}://{url.username}:***@{url.hostname})")
    check("$(" not in (url.password or ""), "the api's Redis URL password is expanded from the Secret")

    args = [expand(a, env) for a in ctr["args"]]
    check(not any("$(" in a for a in args), "every $(VAR) of the Redis args names a variable of the container")
    port = free_port()
    data = tempfile.mkdtemp(prefix="taskq-redis-")
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = data
    proc = subprocess.Popen(ctr["command"] + args + ["--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if "NOAUTH" in cli(port, "ping") or proc.poll() is not None:
                break
            time.sleep(0.05)
        check(proc.poll() is None, f"redis-server starts with the rendered args (exit {proc.poll()})")
        admin = env.get("REDISCLI_AUTH", "")
        check(bool(admin) and admin == env.get("REDIS_PASSWORD"), "REDISCLI_AUTH is the default user's password")
        check("NOAUTH" in cli(port, "set", "k", "v"), "a client without credentials gets NOAUTH")
        check("WRONGPASS" in cli(port, "ping", user=url.username, password="wrong-password"), "a wrong password is refused")
        app = dict(user=url.username, password=url.password)
        check(cli(port, "ping", **app) == "PONG", "the application user logs in with the api's URL")
        for cmd in (["set", "{q}:k", "v"], ["hset", "{q}:h", "f", "1"], ["zadd", "{q}:z", "1", "m"],
                    ["xadd", "{q}:s", "*", "f", "v"], ["eval", "return redis.call('get', KEYS[1])", "1", "{q}:k"],
                    ["info", "server"], ["scan", "0"], ["unlink", "{q}:k"]):
            out = cli(port, *cmd, **app)
            check(not out.startswith(("NOPERM", "ERR", "NOAUTH")), f"the application user may run {cmd[0].upper()} (got {out[:60]!r})")
        for cmd in (["flushall"], ["flushdb"], ["config", "get", "maxmemory"], ["config", "set", "save", "1 1"],
                    ["debug", "sleep", "0"], ["shutdown", "nosave"], ["acl", "setuser", "x", "on"], ["bgsave"]):
            out = cli(port, *cmd, **app)
            # DEBUG is also refused by enable-debug-command (off by default), whatever the ACL.
            check(out.startswith("NOPERM") or out.startswith("ERR DEBUG command not allowed"), f"the application user may not run {' '.join(cmd[:2]).upper()} (got {out[:60]!r})")
        conf = lambda key: cli(port, "config", "get", key, password=admin).splitlines()[1:2]
        check(conf("maxmemory-policy") == ["noeviction"], f"maxmemory-policy noeviction (got {conf('maxmemory-policy')})")
        check(conf("appendonly") == ["yes"], "appendonly yes")
        check(conf("save") in ([""], []), f"no RDB save points (got {conf('save')})")
        check(conf("protected-mode") == ["yes"], "protected mode on")
        limit = mib(ctr["resources"]["limits"]["memory"])
        maxmem = int((conf("maxmemory") or ["0"])[0]) / 2**20
        check(0 < maxmem <= 0.8 * limit, f"maxmemory {maxmem:.0f} MiB is at most 80 % of the {limit:.0f} MiB limit")
        probe = ctr["livenessProbe"]["exec"]["command"]
        probe = [p.replace("-p 6379", f"-p {port}") for p in probe]
        ok = subprocess.run(probe, env={**os.environ, "REDISCLI_AUTH": admin}, capture_output=True, timeout=10)
        check(ok.returncode == 0, "the liveness probe passes with REDISCLI_AUTH")
        bad = subprocess.run(probe, env={**os.environ, "REDISCLI_AUTH": "wrong"}, capture_output=True, timeout=10)
        check(bad.returncode != 0, "the liveness probe fails with a wrong password")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)
    print(f"redis auth: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
