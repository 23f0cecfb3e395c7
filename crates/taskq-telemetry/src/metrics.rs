//! Prometheus metrics of the api and the worker, in one registry per process.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` durations) and use
//! the lifecycle's status names. Families only emit the series that were touched, so each
//! binary shows the metrics of what it does.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-task series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub queue: String,
    /// Exported as the `type` label.
    pub r#type: String,
}

/// Labels of per-queue series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

/// Labels of the queue-depth gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DepthLabels {
    pub queue: String,
    pub state: String,
}

/// Labels of HTTP request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

/// Labels of the submit-stage histogram: `wait` (from the request's record to its
/// group's write), `insert` (the group's MongoDB insert) or `enqueue` (its Redis enqueue).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// Labels of the api's store-probe metrics: `redis` or `mongodb`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: &'static str,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric taskq exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub submitted: Family<TaskLabels, Counter>,
    pub started: Family<TaskLabels, Counter>,
    pub succeeded: Family<TaskLabels, Counter>,
    /// Failed attempts, retried or not.
    pub failed: Family<TaskLabels, Counter>,
    pub retried: Family<TaskLabels, Counter>,
    pub dead: Family<TaskLabels, Counter>,
    pub cancelled: Family<TaskLabels, Counter>,
    /// Handler run time per attempt.
    pub duration: HistFamily<TaskLabels>,
    /// From runnable (submitted, due, or returned to the queue) to started.
    pub wait: HistFamily<QueueLabels>,
    pub depth: Family<DepthLabels, Gauge>,
    pub lease_expirations: Family<QueueLabels, Counter>,
    /// Task keys with tasks in Redis, per queue (not per key: bounded cardinality).
    pub active_keys: Family<QueueLabels, Gauge>,
    /// Times a key's next task was left waiting because the key reached the queue's
    /// `max_running_per_key`, per queue.
    pub key_limit_holds: Family<QueueLabels, Counter>,
    /// Heartbeats that failed or found the lease gone.
    pub heartbeats_missed: Counter,
    pub write_buffer_depth: Gauge,
    pub flush_duration: Histogram,
    pub flush_errors: Counter,
    pub inflight: Gauge,
    /// Configured slots of this worker (saturation = inflight / slots).
    pub slots: Gauge,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistFamily<HttpLabels>,
    /// Api requests waiting for their task to finish (`GET /v1/tasks/{id}?wait=`).
    pub api_waiting: Gauge,
    /// Record reads made by waiting requests (the first, one per wake-up, one at the deadline).
    pub api_wait_reads: Counter,
    /// Single submits written together by one group commit (one insert, one enqueue).
    pub submit_group_size: Histogram,
    /// Time of each stage of a single submit (see [`StageLabels`]), once per submit.
    pub submit_stage: HistFamily<StageLabels>,
    /// Time each background probe of a store took (a probe that timed out counts as its
    /// timeout).
    pub store_probe: HistFamily<StoreLabels>,
    /// 1 while a store's circuit is closed, 0 while it is open.
    pub store_up: Family<StoreLabels, Gauge>,
}

fn seconds_histogram() -> Histogram {
    // 100 µs to ~105 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// Registers metrics in a `prometheus_client` registry, one line each:
/// `"name" => metric, "help";` (a clone of each metric is registered, so the caller
/// keeps its handle).
#[macro_export]
macro_rules! register_metrics {
    ($registry:expr; $($name:literal => $metric:expr, $help:literal;)*) => {
        $($registry.register($name, $help, $metric.clone());)*
    };
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("taskq");
        let submitted = Family::default();
        let started = Family::default();
        let succeeded = Family::default();
        let failed = Family::default();
        let retried = Family::default();
        let dead = Family::default();
        let cancelled = Family::default();
        let duration: HistFamily<TaskLabels> = Family::new_with_constructor(seconds_histogram);
        let wait: HistFamily<QueueLabels> = Family::new_with_constructor(seconds_histogram);
        let depth = Family::default();
        let lease_expirations = Family::default();
        let active_keys = Family::default();
        let key_limit_holds = Family::default();
        let heartbeats_missed = Counter::default();
        let write_buffer_depth = Gauge::default();
        let flush_duration = seconds_histogram();
        let flush_errors = Counter::default();
        let inflight = Gauge::default();
        let slots = Gauge::default();
        let http_requests = Family::default();
        let http_duration: HistFamily<HttpLabels> = Family::new_with_constructor(seconds_histogram);
        let api_waiting = Gauge::default();
        let api_wait_reads = Counter::default();
        // 1 to 1,024 submits.
        let submit_group_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        let submit_stage: HistFamily<StageLabels> = Family::new_with_constructor(seconds_histogram);
        let store_probe: HistFamily<StoreLabels> = Family::new_with_constructor(seconds_histogram);
        let store_up = Family::default();
        let r = &mut registry;
        crate::register_metrics! { r;
            "api_submit_group_size" => submit_group_size, "Single submits written together by one group commit";
            "api_submit_stage_seconds" => submit_stage, "Time of each stage of a single submit: wait (for its group's write), insert (MongoDB), enqueue (Redis)";
            "api_waiting_requests" => api_waiting, "Api requests waiting for their task to finish (?wait=)";
            "api_wait_reads" => api_wait_reads, "MongoDB reads of records made by waiting requests";
            "api_store_probe_seconds" => store_probe, "Time a background probe of a store took to answer (a timed-out probe counts as the probe timeout)";
            "api_store_up" => store_up, "1 while the api's circuit for a store is closed, 0 while it is open (requests that need the store are refused)";
            "tasks_submitted" => submitted, "Tasks accepted by the api";
            "tasks_started" => started, "Attempts started";
            "tasks_succeeded" => succeeded, "Tasks that succeeded";
            "tasks_failed" => failed, "Attempts that failed (retried or not)";
            "tasks_retried" => retried, "Failed attempts scheduled for a retry";
            "tasks_dead" => dead, "Tasks moved to the dead-letter queue";
            "tasks_cancelled" => cancelled, "Tasks cancelled";
            "task_duration_seconds" => duration, "Handler run time of one attempt";
            "task_wait_seconds" => wait, "Time from runnable (submitted, due or requeued) to started";
            "queue_depth" => depth, "Tasks per queue and live state, as Redis holds them";
            "lease_expirations" => lease_expirations, "Leases that expired and were reaped (a worker died or stalled)";
            "queue_active_keys" => active_keys, "Task keys with tasks in Redis, per queue";
            "key_limit_holds" => key_limit_holds, "Times a key's next task waited for the queue's max_running_per_key";
            "heartbeats_missed" => heartbeats_missed, "Heartbeats that failed or found the lease lost";
            "store_write_buffer_depth" => write_buffer_depth, "Status updates waiting for MongoDB";
            "store_flush_duration_seconds" => flush_duration, "Time of one batched MongoDB write";
            "store_flush_errors" => flush_errors, "Batched MongoDB writes that failed and were retried";
            "worker_inflight" => inflight, "Attempts running in this worker";
            "worker_slots" => slots, "Attempts this worker may run at once (TASKQ_CONCURRENCY)";
            "http_requests" => http_requests, "HTTP requests served";
            "http_request_duration_seconds" => http_duration, "HTTP request latency";
        }
        Arc::new(Self {
            registry,
            submitted,
            started,
            succeeded,
            failed,
            retried,
            dead,
            cancelled,
            duration,
            wait,
            depth,
            lease_expirations,
            active_keys,
            key_limit_holds,
            heartbeats_missed,
            write_buffer_depth,
            flush_duration,
            flush_errors,
            inflight,
            slots,
            http_requests,
            http_duration,
            api_waiting,
            api_wait_reads,
            submit_group_size,
            submit_stage,
            store_probe,
            store_up,
        })
    }

    /// Labels of a task.
    pub fn task(queue: &str, kind: &str) -> TaskLabels {
        TaskLabels {
            queue: queue.to_owned(),
            r#type: kind.to_owned(),
        }
    }

    /// Labels of a queue.
    pub fn queue(queue: &str) -> QueueLabels {
        QueueLabels {
            queue: queue.to_owned(),
        }
    }

    /// Sets the depth gauges of one queue.
    pub fn set_depth(&self, queue: &str, states: &[(&str, u64)]) {
        for (state, n) in states {
            self.depth
                .get_or_create(&DepthLabels {
                    queue: queue.to_owned(),
                    state: (*state).to_owned(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Records one served HTTP request.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, took: Duration) {
        let labels = HttpLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status: status.to_string(),
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_conventional_names() {
        let m = Metrics::new();
        m.submitted
            .get_or_create(&Metrics::task("default", "echo"))
            .inc();
        m.wait
            .get_or_create(&Metrics::queue("default"))
            .observe(0.002);
        m.set_depth("default", &[("queued", 3)]);
        m.observe_http("POST", "/v1/tasks", 201, Duration::from_millis(3));
        let text = m.encode();
        for needle in [
            "taskq_tasks_submitted_total{queue=\"default\",type=\"echo\"} 1",
            "taskq_task_wait_seconds_count{queue=\"default\"} 1",
            "taskq_queue_depth{queue=\"default\",state=\"queued\"} 3",
            "taskq_http_requests_total{method=\"POST\",route=\"/v1/tasks\",status=\"201\"} 1",
            "taskq_worker_inflight 0",
            "taskq_worker_slots 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    /// The chart's alerts (charts/taskq/templates/prometheusrule.yaml) use only series
    /// this registry exports (the controller's `taskq_controller_*` ones are checked by
    /// taskq-controller).
    #[test]
    fn prometheus_rule_queries_only_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/taskq/templates/prometheusrule.yaml"
        );
        let rule = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let m = Metrics::new();
        let task = Metrics::task("q", "t");
        for family in [&m.failed, &m.succeeded, &m.dead] {
            family.get_or_create(&task).inc();
        }
        m.set_depth("q", &[("queued", 1)]);
        m.observe_http("GET", "/", 200, Duration::from_millis(1));
        let exported = exported_names(&m.encode());
        let used: std::collections::BTreeSet<String> = rule
            .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .filter(|w| w.starts_with("taskq_") && !w.starts_with("taskq_controller_"))
            .map(str::to_owned)
            .collect();
        assert!(
            used.len() >= 6,
            "the rule uses too few taskq metrics: {used:?}"
        );
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "the alerts query unknown metrics: {unknown:?}"
        );
    }

    /// Every series name the registry can emit: counters as `_total`, histograms as their
    /// `_bucket`, `_sum` and `_count` series, from the `# TYPE` lines.
    fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("#") || words.next() != Some("TYPE") {
                continue;
            }
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        }
        names
    }

    #[test]
    fn dashboard_queries_only_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/taskq/dashboards/taskq.json"
        );
        let dashboard =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        // Families only emit touched series: touch one of each.
        let m = Metrics::new();
        let task = Metrics::task("q", "t");
        for family in [
            &m.submitted,
            &m.started,
            &m.succeeded,
            &m.failed,
            &m.retried,
            &m.dead,
            &m.cancelled,
        ] {
            family.get_or_create(&task).inc();
        }
        m.duration.get_or_create(&task).observe(0.1);
        m.wait.get_or_create(&Metrics::queue("q")).observe(0.1);
        m.lease_expirations
            .get_or_create(&Metrics::queue("q"))
            .inc();
        m.set_depth("q", &[("queued", 1)]);
        m.observe_http("GET", "/", 200, Duration::from_millis(1));
        let store = StoreLabels { store: "redis" };
        m.store_probe.get_or_create(&store).observe(0.001);
        m.store_up.get_or_create(&store).set(1);
        let exported = exported_names(&m.encode());
        assert!(
            exported.contains("taskq_tasks_submitted_total"),
            "{exported:?}"
        );
        let mut used = std::collections::BTreeSet::new();
        let mut rest = dashboard.as_str();
        while let Some(at) = rest.find("taskq_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
        assert!(!used.is_empty(), "the dashboard queries no taskq metric");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "the dashboard queries unknown metrics: {unknown:?}"
        );
    }
}
