//! `--waiters N`: N requests `GET /v1/tasks/{id}?wait=60s` held open on one api while a
//! worker runs their tasks (`sleep` for [`SLEEP_MS`]): how soon each waiter is answered
//! after its task finished, what waiting costs the api (CPU, RSS), and how many MongoDB
//! reads the api makes for its waiters (one per wake-up expected, none per poll).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Bench, STALL, mib, progress};
use crate::report::{Metric, percentile};

/// How long each task's handler sleeps.
const SLEEP_MS: u64 = 20;
/// The wait each request asks for (the api's maximum).
const WAIT: &str = "60s";

impl Bench {
    pub(super) async fn waiters(&mut self) -> anyhow::Result<()> {
        let n = self.cfg.waiters;
        // The api runs with its default request slots (1,024): a waiting request holds
        // one only while it reads.
        progress("starting taskq-api");
        let api = self.env.start_api(&self.http).await?;
        self.api = Some(api);
        progress(&format!(
            "batch submit of {n} sleep tasks (no worker running)"
        ));
        let task =
            json!({"type": "sleep", "payload": {"ms": SLEEP_MS}, "queue": self.queue.as_str()});
        let (_, ids) = self.batch_submit_of(n, 0, "batch submit", task).await?;

        progress(&format!("opening {n} waiting requests (?wait={WAIT})"));
        let mut set = tokio::task::JoinSet::new();
        for id in &ids {
            let req = self
                .http
                .get(self.api_url(&format!("/v1/tasks/{id}?wait={WAIT}"))?);
            set.spawn(async move {
                let resp = req.send().await.context("waiting request")?;
                // The answer's head has arrived: that is when the waiter was answered.
                let answered_us = chrono::Utc::now().timestamp_micros();
                let status = resp.status();
                let body: Value = resp.json().await.context("waiting request's body")?;
                if status != reqwest::StatusCode::OK {
                    bail!("a waiting request was answered {status}: {body}");
                }
                Ok::<_, anyhow::Error>((answered_us, body))
            });
        }
        let registered = Instant::now();
        while self.api_metric("taskq_api_waiting_requests").await? < n as f64 {
            if registered.elapsed() > STALL {
                bail!("the api never had {n} waiting requests");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reads_before = self.api_metric("taskq_api_wait_reads_total").await?;

        progress("worker starts; waiting for every answer");
        let started = Instant::now();
        self.worker = Some(self.env.spawn_worker()?);
        // Taken with the worker running, so its CPU is tracked too.
        let snap = self.snapshot();
        let mut lags = Vec::with_capacity(n);
        while let Some(joined) = set.join_next().await {
            let (answered_us, body) = joined.context("waiting request task")??;
            if body["status"] != "succeeded" {
                bail!("a waiter was answered before its task succeeded: {body}");
            }
            let finished = body["finished_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .context("a succeeded record without finished_at")?;
            lags.push((answered_us - finished.timestamp_micros()) as f64 / 1e3);
        }
        let elapsed = started.elapsed();
        let cpu = snap.until(&self.snapshot(), "waiting (worker running)");
        self.report.cpu.push(cpu.clone());
        let reads = self.api_metric("taskq_api_wait_reads_total").await? - reads_before;

        lags.sort_by(f64::total_cmp);
        for (key, label, p) in [
            (
                "wait_answer_p50_ms",
                "task finished → waiter answered, p50",
                0.5,
            ),
            (
                "wait_answer_p99_ms",
                "task finished → waiter answered, p99",
                0.99,
            ),
            (
                "wait_answer_max_ms",
                "task finished → waiter answered, max",
                1.0,
            ),
        ] {
            let v = percentile(&lags, p).unwrap_or(f64::NAN);
            self.report.push(Metric::new(key, label, v, "ms"));
        }
        self.report.push(Metric::new(
            "wait_phase_seconds",
            &format!("worker start → all {n} waiters answered"),
            elapsed.as_secs_f64(),
            "s",
        ));
        let api_cores = cpu.cores.get("api").copied().flatten().unwrap_or(f64::NAN);
        self.report.push(Metric::new(
            "api_cores_while_waiting",
            "taskq-api CPU while the waiters were answered",
            api_cores,
            "cores",
        ));
        if let Some((a, _)) = &self.api {
            let rss = a.peak_rss_kib().map_or(f64::NAN, mib);
            self.report.push(Metric::new(
                "api_peak_rss_mib",
                &format!("peak RSS (VmHWM) taskq-api, {n} waiters"),
                rss,
                "MiB",
            ));
        }
        self.report.push(Metric::new(
            "api_wait_reads_per_waiter",
            "api MongoDB reads per waiter after it registered",
            reads / n as f64,
            "reads",
        ));
        self.report.note(format!(
            "waiters: {n} sleep tasks ({SLEEP_MS} ms each) batch-submitted with no worker, one \
             GET /v1/tasks/{{id}}?wait={WAIT} per task held open until the api counted them all \
             (taskq_api_waiting_requests), then a worker (C={}) started; lag = the moment the \
             answer's head arrived - the record's finished_at (the ack in Redis, ms precision), \
             so it includes the outbox writer's batching, the MongoDB write, the publish, the \
             wake-up and the waiter's read; reads from taskq_api_wait_reads_total",
            self.cfg.slots
        ));
        Ok(())
    }

    /// The value of the unlabelled metric `name` on the api's `/metrics`.
    async fn api_metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(self.api_url("/metrics")?)
            .send()
            .await
            .context("reading the api's metrics")?
            .text()
            .await
            .context("reading the api's metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no {name} in the api's metrics"))
    }
}
