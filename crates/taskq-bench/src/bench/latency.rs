//! Phase 6: submit→start latency at a steady, open-loop rate with the worker running.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use taskq_core::TaskId;

use super::metrics::bucket_quantile;
use super::submit::submit_one;
use super::{Bench, TARGET_P99_MS, ms};
use crate::report::{Metric, Target, percentile};

/// Concurrent reads of records in the latency phase.
const READ_CONCURRENCY: usize = 32;

/// What an open-loop run produced: each call's result and its time from its scheduled
/// start to its end (so a late start counts against it), in call order.
pub(super) struct OpenLoop<T> {
    pub results: Vec<(anyhow::Result<T>, Duration)>,
    pub achieved_rate: f64,
    /// How late the latest call started against its schedule.
    pub max_lag: Duration,
}

/// Starts `make(i)` at `rate` per second for `seconds`, by the clock, whether or not
/// earlier calls have finished; then waits for all of them.
pub(super) async fn open_loop<T, F, Fut>(
    rate: f64,
    seconds: f64,
    mut make: F,
) -> anyhow::Result<OpenLoop<T>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let total = (rate * seconds).round().max(1.0) as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut max_lag = Duration::ZERO;
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(due.elapsed());
        let call = make(i);
        set.spawn(async move {
            let r = call.await;
            (i, r, due.elapsed())
        });
    }
    let achieved_rate = total as f64 / (start.elapsed() + period).as_secs_f64();
    let mut results: Vec<(usize, anyhow::Result<T>, Duration)> = Vec::with_capacity(total);
    while let Some(joined) = set.join_next().await {
        results.push(joined.context("open-loop call")?);
    }
    results.sort_by_key(|(i, _, _)| *i);
    Ok(OpenLoop {
        results: results.into_iter().map(|(_, r, t)| (r, t)).collect(),
        achieved_rate,
        max_lag,
    })
}

impl Bench {
    /// Open-loop single submits at `--rate` for `--latency-seconds`; then reads every
    /// record back and reports submit→start percentiles.
    pub(super) async fn latency(&mut self, insert_one_p99: f64) -> anyhow::Result<()> {
        let url = self.api_url("/v1/tasks")?;
        let body = Bytes::from(json!({"type": "noop", "queue": self.queue.as_str()}).to_string());
        let metrics_url = self.api_url("/metrics")?;
        let api_before = super::metrics::scrape(&self.http, &metrics_url).await.ok();
        let snap = self.snapshot();
        let run = open_loop(self.cfg.rate, self.cfg.latency_seconds, |_| {
            let (http, url, body) = (self.http.clone(), url.clone(), body.clone());
            async move { submit_one(&http, &url, body).await }
        })
        .await?;
        let total = run.results.len();
        let mut ids = Vec::with_capacity(total);
        let mut client = Vec::with_capacity(total);
        let mut errors = 0_usize;
        let mut first_error = None;
        for (r, took) in run.results {
            match r {
                Ok(id) => {
                    ids.push(id);
                    client.push(ms(took));
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        self.report
            .cpu
            .push(snap.until(&self.snapshot(), "latency (steady rate)"));
        let api_after = super::metrics::scrape(&self.http, &metrics_url).await.ok();
        match (api_before, api_after) {
            (Some(before), Some(after)) => self.submit_stages(&before, &after),
            _ => self
                .report
                .note(format!("could not read the api's {metrics_url}")),
        }
        self.wait_idle().await?;
        self.wait_settled(ids.len() as u64).await?;

        let store = self.store.clone();
        let mut lat: Vec<f64> = futures::stream::iter(ids)
            .map(|id| {
                let store = store.clone();
                async move {
                    let tid: TaskId = id
                        .parse()
                        .map_err(|e| anyhow::anyhow!("task id {id}: {e}"))?;
                    let rec = store
                        .get(tid)
                        .await
                        .context("reading a record")?
                        .with_context(|| format!("record {id} is missing"))?
                        .record;
                    let started = rec
                        .started_at
                        .with_context(|| format!("record {id} never started"))?;
                    Ok::<_, anyhow::Error>((started - rec.created_at).num_milliseconds() as f64)
                }
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        self.delete_settled().await?;
        lat.sort_by(f64::total_cmp);
        client.sort_by(f64::total_cmp);

        self.report.push(Metric::new(
            "latency_offered_rate",
            "latency phase: achieved send rate",
            run.achieved_rate,
            "tasks/s",
        ));
        self.report.push(Metric::new(
            "latency_send_lag_max_ms",
            "latency phase: worst send lag behind schedule",
            ms(run.max_lag),
            "ms",
        ));
        let pct = |v: &[f64], p: f64| percentile(v, p).unwrap_or(f64::NAN);
        self.report.push(Metric::new(
            "latency_p50_ms",
            "submit->start p50",
            pct(&lat, 0.5),
            "ms",
        ));
        self.report.push(
            Metric::new("latency_p99_ms", "submit->start p99", pct(&lat, 0.99), "ms")
                .of("raw insert_one p99", insert_one_p99)
                .target(Target::AtMost(TARGET_P99_MS)),
        );
        self.report.push(Metric::new(
            "latency_max_ms",
            "submit->start max",
            pct(&lat, 1.0),
            "ms",
        ));
        self.report.push(Metric::new(
            "client_p50_ms",
            "client submit round trip p50",
            pct(&client, 0.5),
            "ms",
        ));
        self.report.push(Metric::new(
            "client_p99_ms",
            "client submit round trip p99",
            pct(&client, 0.99),
            "ms",
        ));
        if errors > 0 {
            self.report.push(Metric::new(
                "latency_submit_errors",
                "latency phase: failed submits",
                errors as f64,
                "requests",
            ));
            self.report.note(format!(
                "latency phase: {errors} of {total} submits failed; first: {}",
                first_error.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Where the api spent a submit's time in the latency phase, from its histograms
    /// (scraped `before` and `after` the phase): its whole answer (the HTTP request
    /// duration of `POST /v1/tasks`), the wait for its group's write, the group's MongoDB
    /// insert and its Redis enqueue; p50 and p99 each, as bucket bounds.
    fn submit_stages(&mut self, before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
        let series: [(&str, &str, &[&str]); 4] = [
            (
                "api_answer",
                "api: answer of a submit",
                &[
                    "taskq_http_request_duration_seconds",
                    "method=\"POST\"",
                    "route=\"/v1/tasks\"",
                ],
            ),
            (
                "api_wait",
                "api: wait for the group's write",
                &["taskq_api_submit_stage_seconds", "stage=\"wait\""],
            ),
            (
                "api_insert",
                "api: group's MongoDB insert",
                &["taskq_api_submit_stage_seconds", "stage=\"insert\""],
            ),
            (
                "api_enqueue",
                "api: group's Redis enqueue",
                &["taskq_api_submit_stage_seconds", "stage=\"enqueue\""],
            ),
        ];
        for (key, label, names) in series {
            for (p, pct) in [(0.5, "p50"), (0.99, "p99")] {
                match bucket_quantile(before, after, names, p) {
                    Some(s) => self.report.push(Metric::new(
                        &format!("latency_{key}_{pct}_ms"),
                        &format!("{label} {pct} (at most)"),
                        s * 1e3,
                        "ms",
                    )),
                    None => self
                        .report
                        .note(format!("the api's {} had no samples", names[0])),
                }
            }
        }
    }
}
