//! Submits through the api: batches (phase 2, and the batch of every later processing
//! run) and concurrent single submits (phase 5).

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::json;

use super::Bench;
use crate::report::Metric;

#[derive(Deserialize)]
struct BatchReply {
    accepted: usize,
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

impl Bench {
    /// Submits `n` noop tasks through `POST /v1/tasks/batch`; returns tasks/s and their ids.
    /// With `keys` > 0 task `i` has the key `k-<i mod keys>`.
    pub(super) async fn batch_submit(
        &mut self,
        n: usize,
        keys: usize,
        phase: &str,
    ) -> anyhow::Result<(f64, HashSet<String>)> {
        let task = json!({"type": "noop", "queue": self.queue.as_str()});
        self.batch_submit_of(n, keys, phase, task).await
    }

    /// Submits `n` copies of `task` through `POST /v1/tasks/batch`; returns tasks/s and
    /// their ids. With `keys` > 0 copy `i` has the key `k-<i mod keys>`.
    pub(super) async fn batch_submit_of(
        &mut self,
        n: usize,
        keys: usize,
        phase: &str,
        task: serde_json::Value,
    ) -> anyhow::Result<(f64, HashSet<String>)> {
        let url = self.api_url("/v1/tasks/batch")?;
        let body = |start: usize, k: usize| {
            let tasks: Vec<serde_json::Value> = (start..start + k)
                .map(|i| {
                    let mut t = task.clone();
                    if keys > 0 {
                        t["key"] = json!(format!("k-{}", i % keys));
                    }
                    t
                })
                .collect();
            Bytes::from(json!({ "tasks": tasks }).to_string())
        };
        let full = body(0, self.cfg.batch_size);
        let sizes: Vec<(usize, usize)> = (0..n)
            .step_by(self.cfg.batch_size)
            .map(|start| (start, (n - start).min(self.cfg.batch_size)))
            .collect();
        let snap = self.snapshot();
        let start = Instant::now();
        let replies: Vec<Vec<String>> = futures::stream::iter(sizes)
            .map(|(at, k)| {
                let b = if k == self.cfg.batch_size && keys == 0 {
                    full.clone()
                } else {
                    body(at, k)
                };
                let sent = post_created(&self.http, &url, b, "batch submit");
                async move {
                    let r = sent.await?;
                    let reply: BatchReply = r.json().await.context("batch submit reply")?;
                    if reply.accepted != k {
                        bail!("batch submit accepted {} of {k} tasks", reply.accepted);
                    }
                    Ok::<Vec<String>, anyhow::Error>(
                        reply.results.into_iter().filter_map(|i| i.id).collect(),
                    )
                }
            })
            .buffer_unordered(self.cfg.batch_concurrency)
            .try_collect()
            .await?;
        let elapsed = start.elapsed();
        self.report.cpu.push(snap.until(&self.snapshot(), phase));
        let ids: HashSet<String> = replies.into_iter().flatten().collect();
        if ids.len() != n {
            bail!(
                "batch submit returned {} distinct ids for {n} tasks",
                ids.len()
            );
        }
        Ok((n as f64 / elapsed.as_secs_f64(), ids))
    }

    /// `--single-tasks` single submits, `--single-concurrency` in flight; tasks/s. Also
    /// reports how many submits the api's group commit wrote together, on average.
    pub(super) async fn single_submits(&mut self) -> anyhow::Result<f64> {
        let groups_before = self.api_submit_groups().await;
        let url = self.api_url("/v1/tasks")?;
        let body = Bytes::from(json!({"type": "noop", "queue": self.queue.as_str()}).to_string());
        let snap = self.snapshot();
        let start = Instant::now();
        futures::stream::iter(0..self.cfg.single_tasks)
            .map(|_| submit_one(&self.http, &url, body.clone()))
            .buffer_unordered(self.cfg.single_concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        let elapsed = start.elapsed();
        self.report
            .cpu
            .push(snap.until(&self.snapshot(), "single submits (worker running)"));
        match (groups_before, self.api_submit_groups().await) {
            (Some((c0, s0)), Some((c1, s1))) if c1 > c0 => self.report.push(Metric::new(
                "single_submits_per_group",
                "single submits per group commit (mean)",
                (s1 - s0) / (c1 - c0),
                "submits",
            )),
            _ => self
                .report
                .note("could not read the api's taskq_api_submit_group_size".to_owned()),
        }
        Ok(self.cfg.single_tasks as f64 / elapsed.as_secs_f64())
    }

    /// `_count` and `_sum` of the api's `taskq_api_submit_group_size`.
    async fn api_submit_groups(&self) -> Option<(f64, f64)> {
        let url = self.api_url("/metrics").ok()?;
        let m = super::metrics::scrape(&self.http, &url).await.ok()?;
        Some((
            *m.get("taskq_api_submit_group_size_count")?,
            *m.get("taskq_api_submit_group_size_sum")?,
        ))
    }
}

/// POSTs the JSON `body` to `url` and expects `201 Created` (`what` names the call in
/// errors); returns the answer.
pub(super) async fn post_created(
    http: &reqwest::Client,
    url: &str,
    body: Bytes,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| what.to_owned())?;
    let status = r.status();
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "{what} answered {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(r)
}

/// One `POST /v1/tasks`; returns the new task's id.
pub(super) async fn submit_one(
    http: &reqwest::Client,
    url: &str,
    body: Bytes,
) -> anyhow::Result<String> {
    let r = post_created(http, url, body, "submit").await?;
    Ok(r.json::<Created>().await.context("submit reply")?.id)
}
