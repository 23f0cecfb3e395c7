#!/usr/bin/env python3
"""The chart's PrometheusRule on Prometheus's own rule engine: `promtool check rules`, then
`promtool test rules` with synthetic series for every alert.

    alerts_test.py RENDERED.yaml NAMESPACE

RENDERED.yaml is a `helm template` output with metrics.prometheusRule.enabled (the
`observability` value set) for release namespace NAMESPACE. Each case feeds series shaped
like what taskq exports (names and labels as in taskq-telemetry and the controller) and
checks that its alert fires with the expected labels and annotations, and that nothing
fires while the same series are healthy. Needs promtool (Debian package `prometheus`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def main() -> int:
    rendered, ns = sys.argv[1], sys.argv[2]
    rules = next(d for d in yaml.safe_load_all(open(rendered)) if d and d["kind"] == "PrometheusRule")
    groups = rules["spec"]["groups"]
    by_name = {r["alert"]: r for g in groups for r in g["rules"]}

    def expected(alert: str, labels: dict[str, str], value: str = "") -> dict:
        rule = by_name[alert]
        sub = lambda text: re.sub(r"\{\{ \$labels\.([a-z_]+) \}\}", lambda m: labels[m.group(1)], text)
        sub_value = lambda text: re.sub(r"\{\{ \$value( \| humanizePercentage)? \}\}", value, sub(text))
        return {"exp_labels": {**rule.get("labels", {}), **labels},
                "exp_annotations": {k: sub_value(v) for k, v in rule.get("annotations", {}).items()}}

    s = lambda name, labels: f'{name}{{namespace="{ns}"' + "".join(f',{k}="{v}"' for k, v in labels.items()) + "}"
    # (alert, input series, eval time, the labels of the alert it must raise, its $value as
    # the annotations print it)
    cases = [
        ("TaskqDeadLetterGrowing",
         [(s("taskq_tasks_dead_total", {"queue": "emails", "type": "send"}), "0+1x60")],
         "30m", {"namespace": ns, "queue": "emails"}, "15"),
        ("TaskqTaskErrorRatioHigh",
         [(s("taskq_tasks_failed_total", {"queue": "emails", "type": "send"}), "0+1x60"),
          (s("taskq_tasks_succeeded_total", {"queue": "emails", "type": "send"}), "0+3x60")],
         "30m", {"namespace": ns, "queue": "emails"}, "25%"),
        ("TaskqApiErrorRatioHigh",
         [(s("taskq_http_requests_total", {"method": "POST", "route": "/v1/tasks", "status": "503"}), "0+1x60"),
          (s("taskq_http_requests_total", {"method": "POST", "route": "/v1/tasks", "status": "201"}), "0+1x60")],
         "30m", {"namespace": ns}, "50%"),
        ("TaskqBacklogGrowing",
         [(s("taskq_queue_depth", {"queue": "emails", "state": "queued"}), "900+10x60")],
         "45m", {"namespace": ns, "queue": "emails"}),
        ("TaskqWorkersSaturated",
         [(s("taskq_worker_inflight", {"pod": "w-1"}), "16x60"), (s("taskq_worker_slots", {"pod": "w-1"}), "16x60")],
         "30m", {"namespace": ns}),
        ("TaskqControllerReconcileErrors",
         [(s("taskq_controller_reconcile_errors_total", {"scaler": "worker", "reason": "Conflict"}), "0+1x60")],
         "30m", {"namespace": ns, "scaler": "worker", "reason": "Conflict"}),
        ("TaskqRedisUnreachable",
         [(s("taskq_heartbeats_missed_total", {"pod": "w-1"}), "0+3x60")],
         "20m", {"namespace": ns}),
        ("TaskqMongoDBUnreachable",
         [(s("taskq_store_flush_errors_total", {"pod": "w-1"}), "0+2x60")],
         "20m", {"namespace": ns}),
    ]
    tests = []
    for alert, series, at, labels, *value in cases:
        tests.append({
            "interval": "1m",
            "input_series": [{"series": n, "values": v} for n, v in series],
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": [expected(alert, labels, *value)]}],
        })
    # Healthy: a short, shrinking queue, idle slots, counters that do not move.
    healthy = [
        (s("taskq_queue_depth", {"queue": "emails", "state": "queued"}), "5000-50x60"),
        (s("taskq_worker_inflight", {"pod": "w-1"}), "4x60"),
        (s("taskq_worker_slots", {"pod": "w-1"}), "16x60"),
        (s("taskq_tasks_dead_total", {"queue": "emails", "type": "send"}), "3x60"),
        (s("taskq_tasks_failed_total", {"queue": "emails", "type": "send"}), "0+1x60"),
        (s("taskq_tasks_succeeded_total", {"queue": "emails", "type": "send"}), "0+100x60"),
        (s("taskq_http_requests_total", {"method": "POST", "route": "/v1/tasks", "status": "201"}), "0+100x60"),
        (s("taskq_controller_reconcile_errors_total", {"scaler": "worker", "reason": "Conflict"}), "2x60"),
        (s("taskq_heartbeats_missed_total", {"pod": "w-1"}), "1x60"),
        (s("taskq_store_flush_errors_total", {"pod": "w-1"}), "0x60"),
    ]
    tests.append({
        "interval": "1m",
        "input_series": [{"series": n, "values": v} for n, v in healthy],
        "alert_rule_test": [{"eval_time": "50m", "alertname": a, "exp_alerts": []} for a in sorted(by_name)],
    })
    with tempfile.TemporaryDirectory(prefix="taskq-alerts-") as tmp:
        rules_file = Path(tmp) / "rules.yaml"
        rules_file.write_text(yaml.safe_dump({"groups": groups}))
        test_file = Path(tmp) / "test.yaml"
        test_file.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests}))
        for cmd in (["promtool", "check", "rules", str(rules_file)], ["promtool", "test", "rules", str(test_file)]):
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stdout + out.stderr)
                print(f"FAIL {' '.join(cmd[:3])}")
                return 1
    print(f"alerts: {len(by_name)} rules valid; {len(cases)} fire as expected, none on healthy series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
