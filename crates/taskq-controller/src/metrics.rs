//! The controller's Prometheus metrics, in a registry of its own (one per controller, so
//! two controllers in one test process do not mix their series).
//!
//! Per-scaler series carry `namespace` and `scaler` labels and are removed when the
//! scaler goes away ([`Metrics::forget`]).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of per-scaler series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalerLabels {
    pub namespace: String,
    pub scaler: String,
}

/// Labels of per-queue series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub namespace: String,
    pub scaler: String,
    pub queue: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub namespace: String,
    pub scaler: String,
    /// The condition reason, e.g. `RedisUnavailable`.
    pub reason: String,
}

/// Labels of scale operations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub namespace: String,
    pub scaler: String,
    /// `up` or `down`.
    pub direction: String,
}

/// Every metric the controller exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub desired: Family<ScalerLabels, Gauge>,
    pub current: Family<ScalerLabels, Gauge>,
    pub depth: Family<QueueLabels, Gauge>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconciles: Counter,
    pub reconcile_duration: Histogram,
    pub scale_operations: Family<ScaleLabels, Counter>,
    /// 1 while this controller holds the leader Lease.
    pub leader: Gauge,
    pub leader_transitions: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("taskq_controller");
        let m = Self {
            registry: Registry::default(),
            desired: Family::default(),
            current: Family::default(),
            depth: Family::default(),
            reconcile_errors: Family::default(),
            reconciles: Counter::default(),
            // 1 ms to ~65 s.
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            scale_operations: Family::default(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
        };
        taskq_telemetry::register_metrics! { registry;
            "desired_replicas" => m.desired, "Replicas each scaler wants";
            "current_replicas" => m.current, "Replicas each scaled Deployment asks for (spec.replicas)";
            "queue_depth" => m.depth, "Pending tasks (queued, due scheduled, retrying, running) per queue of each scaler";
            "reconcile_errors" => m.reconcile_errors, "Reconciles that failed, by condition reason";
            "reconciles" => m.reconciles, "Reconciles run";
            "reconcile_duration_seconds" => m.reconcile_duration, "Time one reconcile takes";
            "scale_operations" => m.scale_operations, "Replica changes made through the scale subresource";
            "leader" => m.leader, "1 while this controller holds the leader Lease";
            "leader_transitions" => m.leader_transitions, "Times this controller became the leader";
        }
        Self { registry, ..m }
    }

    /// Records one reconcile's duration.
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Removes the series of a scaler that no longer exists.
    pub fn forget(&self, namespace: &str, scaler: &str, queues: &[String]) {
        let labels = ScalerLabels {
            namespace: namespace.to_owned(),
            scaler: scaler.to_owned(),
        };
        self.desired.remove(&labels);
        self.current.remove(&labels);
        for q in queues {
            self.depth.remove(&QueueLabels {
                namespace: namespace.to_owned(),
                scaler: scaler.to_owned(),
                queue: q.clone(),
            });
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_series_can_be_forgotten() {
        let m = Metrics::new();
        let l = ScalerLabels {
            namespace: "ns".into(),
            scaler: "s".into(),
        };
        m.desired.get_or_create(&l).set(3);
        m.depth
            .get_or_create(&QueueLabels {
                namespace: "ns".into(),
                scaler: "s".into(),
                queue: "q".into(),
            })
            .set(7);
        m.leader.set(1);
        let text = m.encode();
        for name in [
            "taskq_controller_desired_replicas{namespace=\"ns\",scaler=\"s\"} 3",
            "taskq_controller_queue_depth{namespace=\"ns\",scaler=\"s\",queue=\"q\"} 7",
            "taskq_controller_leader 1",
            "# TYPE taskq_controller_reconcile_duration_seconds histogram",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        m.forget("ns", "s", &["q".into()]);
        let text = m.encode();
        assert!(!text.contains("scaler=\"s\""), "{text}");
    }

    /// The chart's alerts use only `taskq_controller_*` series this registry exports.
    #[test]
    fn prometheus_rule_queries_only_exported_controller_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/taskq/templates/prometheusrule.yaml"
        );
        let rule = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let m = Metrics::new();
        m.reconcile_errors
            .get_or_create(&ErrorLabels {
                namespace: "ns".into(),
                scaler: "s".into(),
                reason: "r".into(),
            })
            .inc();
        let text = m.encode();
        let used: std::collections::BTreeSet<&str> = rule
            .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .filter(|w| w.starts_with("taskq_controller_"))
            .collect();
        assert!(!used.is_empty(), "the rule uses no controller metric");
        for name in used {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "the alerts query {name}, which the controller does not export:\n{text}"
            );
        }
    }
}
