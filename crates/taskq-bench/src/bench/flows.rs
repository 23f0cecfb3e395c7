//! `--flows L`: processing of N tasks submitted as flows of L tasks (`--flow-shape`:
//! chains, each task waiting for the one before it, or fan-out/fan-in, one task, L - 2
//! in parallel, one joining them) against N plain tasks, in the same run. Each arm
//! submits with no worker running, then starts a fresh worker and is timed from its
//! spawn until MongoDB has every record `succeeded`: a dependent is released only once
//! its dependency's record is written, so records settled is where flows pay.

use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::submit::post_created;
use super::{Bench, STOP_GRACE, progress};
use crate::args::FlowShape;
use crate::report::Metric;

/// Most tasks per flow request (whole chains).
const TASKS_PER_REQUEST: usize = 1000;

impl Bench {
    pub(super) async fn compare_flows(&mut self) -> anyhow::Result<()> {
        let (n, len) = (self.cfg.tasks, self.cfg.flows);
        progress("starting taskq-api");
        let api = self.env.start_api(&self.http).await?;
        self.api = Some(api);

        progress(&format!(
            "plain: batch submit of {n} tasks (no worker running)"
        ));
        self.batch_submit(n, 0, "batch submit").await?;
        progress("plain: processing until every record settled (worker starts)");
        let plain = self.run_to_settled(n, "processing, plain").await?;
        self.report.push(Metric::new(
            "settled_tasks_per_s_plain",
            "processed and settled, plain tasks",
            plain,
            "tasks/s",
        ));

        let shape = match self.cfg.flow_shape {
            FlowShape::Chain => format!("chains of {len}"),
            FlowShape::Fan => format!("fan-out/fan-in of {len}"),
        };
        progress(&format!(
            "flows: submit of {n} tasks as {shape} (no worker running)"
        ));
        let submit = self.submit_flows(n, len).await?;
        self.report.push(Metric::new(
            "flow_submit_tasks_per_s",
            &format!("flow submit, {shape}"),
            submit,
            "tasks/s",
        ));
        progress("flows: processing until every record settled (worker starts)");
        let flows = self
            .run_to_settled(n, &format!("processing, {shape}"))
            .await?;
        self.report.push(
            Metric::new(
                "settled_tasks_per_s_flows",
                &format!("processed and settled, {shape}"),
                flows,
                "tasks/s",
            )
            .of("plain tasks", plain),
        );
        self.report.push(Metric::new(
            "flows_plain_ratio",
            "ratio: tasks in flows / plain tasks",
            flows / plain,
            "x",
        ));
        Ok(())
    }

    /// Starts a worker and waits until MongoDB counts the `n` tasks `succeeded`; stops
    /// the worker and deletes the records (see [`Bench::delete_settled`]). Returns
    /// tasks/s from the worker's spawn.
    async fn run_to_settled(&mut self, n: usize, phase: &str) -> anyhow::Result<f64> {
        let start = Instant::now();
        let worker = self.env.spawn_worker()?;
        self.worker = Some(worker);
        // After the spawn, so the worker's CPU is in the phase's figures.
        let snap = self.snapshot();
        let done = self.wait_settled(n as u64).await?;
        let elapsed = done.saturating_duration_since(start);
        self.report.cpu.push(snap.until(&self.snapshot(), phase));
        if let Some((w, _)) = self.worker.take() {
            w.stop(STOP_GRACE).await?;
        }
        self.delete_settled().await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    }

    /// Submits `n` noop tasks as flows of `len` through `POST /v1/flows`, whole flows
    /// per request; returns tasks/s.
    async fn submit_flows(&mut self, n: usize, len: usize) -> anyhow::Result<f64> {
        let url = self.api_url("/v1/flows")?;
        let queue = self.queue.to_string();
        let fan = self.cfg.flow_shape == FlowShape::Fan;
        let chain = |c: usize, k: usize| -> Vec<Value> {
            (0..k)
                .map(|s| {
                    let name = |s: usize| format!("{c}-{s}");
                    let deps: Vec<String> = match s {
                        0 => Vec::new(),
                        // The join of a fan waits for every task between.
                        _ if fan && s == k - 1 && k > 2 => (1..s).map(name).collect(),
                        _ if fan => vec![name(0)],
                        _ => vec![name(s - 1)],
                    };
                    json!({"name": format!("{c}-{s}"), "type": "noop", "queue": queue, "depends_on": deps})
                })
                .collect()
        };
        // Chains of `len` (the last one shorter), grouped into requests.
        let per_request = (TASKS_PER_REQUEST / len).max(1) * len;
        let bodies: Vec<Bytes> = (0..n)
            .step_by(per_request)
            .map(|start| {
                let k = (n - start).min(per_request);
                let tasks: Vec<Value> = (0..k)
                    .step_by(len)
                    .flat_map(|off| chain(start + off, (k - off).min(len)))
                    .collect();
                Bytes::from(json!({ "tasks": tasks }).to_string())
            })
            .collect();
        let start = Instant::now();
        futures::stream::iter(bodies)
            .map(|b| post_created(&self.http, &url, b, "flow submit"))
            .buffer_unordered(self.cfg.batch_concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }
}
