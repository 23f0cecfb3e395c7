//! `--compare-tracing`: the processing phase with and without trace export, to measure
//! what exporting every span costs.

use std::time::Duration;

use taskq_testkit::otlp::Receiver;

use super::{Bench, STOP_GRACE, progress};
use crate::report::Metric;

impl Bench {
    /// `--compare-tracing`: the processing phase with no exporter, with the api and worker
    /// exporting every span to a receiver in this process, and with no exporter again
    /// (the traced arm in the middle, so a drift over the run shows as a gap between the
    /// two untraced arms). Each arm starts a fresh api and worker and stops them at its end,
    /// so the exporters flush before the spans are counted.
    pub(super) async fn compare_tracing(&mut self) -> anyhow::Result<()> {
        let n = self.cfg.tasks;
        let (recv, otlp_addr) = Receiver::start().await;
        progress(&format!("OTLP/gRPC trace receiver on {otlp_addr}"));
        let otel: Vec<(String, String)> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let (base_worker, base_api) = (self.cfg.worker_env.clone(), self.cfg.api_env.clone());
        let arms: [(&str, &str, bool); 3] = [
            ("", "no exporter", false),
            ("_traced", "exporting traces", true),
            ("_again", "no exporter, again", false),
        ];
        let mut rates = Vec::with_capacity(arms.len());
        let mut spans_after = Vec::with_capacity(arms.len());
        for (i, (key, label, traced)) in arms.into_iter().enumerate() {
            let extra = if traced { otel.clone() } else { Vec::new() };
            self.env.worker_env = base_worker.iter().cloned().chain(extra.clone()).collect();
            self.env.api_env = base_api.iter().cloned().chain(extra).collect();
            progress(&format!(
                "arm {}/{}: {label}: starting taskq-api",
                i + 1,
                arms.len()
            ));
            let api = self.env.start_api(&self.http).await?;
            self.api = Some(api);
            progress(&format!(
                "arm {}/{}: {label}: batch submit of {n} tasks (no worker running)",
                i + 1,
                arms.len()
            ));
            let (submit, ids) = self
                .batch_submit(n, 0, &format!("batch submit, {label}"))
                .await?;
            progress(&format!(
                "arm {}/{}: {label}: processing (worker starts)",
                i + 1,
                arms.len()
            ));
            let p = self.process(&ids, &format!("processing, {label}")).await?;
            let processed = n as f64 / p.elapsed.as_secs_f64();
            self.settle(n).await?;
            if let Some(d) = p.depth {
                d.finish().await;
            }
            // Stopping both children (SIGTERM) makes their exporters flush what they hold.
            for (proc, _) in [self.worker.take(), self.api.take()].into_iter().flatten() {
                proc.stop(STOP_GRACE).await?;
            }
            self.report.push(Metric::new(
                &format!("batch_submit_tasks_per_s{key}"),
                &format!("batch submit, {label}"),
                submit,
                "tasks/s",
            ));
            let mut m = Metric::new(
                &format!("processed_tasks_per_s{key}"),
                &format!("processed, {label}"),
                processed,
                "tasks/s",
            );
            if i > 0 {
                m = m.of("processed, no exporter", rates[0]);
            }
            self.report.push(m);
            self.per_task_cpu(&p.cpu, n, key, &format!(", {label}"));
            rates.push(processed);
            if traced {
                // The exporters have flushed on shutdown; give a late batch a moment.
                let mut last = recv.total();
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = recv.total();
                    if now == last {
                        break;
                    }
                    last = now;
                }
            }
            spans_after.push(recv.total());
        }
        self.env.worker_env = base_worker;
        self.env.api_env = base_api;

        let untraced = (rates[0] + rates[2]) / 2.0;
        self.report.push(Metric::new(
            "processed_traced_ratio",
            "ratio: exporting traces / no exporter (mean of both untraced arms)",
            rates[1] / untraced,
            "x",
        ));
        let spans = spans_after[1] - spans_after[0];
        self.report.push(Metric::new(
            "spans_received",
            "spans received",
            spans as f64,
            "spans",
        ));
        let by_service: Vec<String> = recv
            .by_service()
            .into_iter()
            .map(|(s, c)| format!("{s}: {c}"))
            .collect();
        self.report.note(format!(
            "spans received by service: {}",
            by_service.join(", ")
        ));
        if spans == 0 {
            let msg = "WARNING: the OTLP receiver got no span during the traced arm, so that \
                       arm did not measure trace export; check that taskq-api and taskq-worker \
                       are built with OTLP support and read OTEL_EXPORTER_OTLP_ENDPOINT";
            progress(msg);
            self.report.note(msg);
        }
        let stray = spans_after[0] + (spans_after[2] - spans_after[1]);
        if stray > 0 {
            self.report.note(format!(
                "WARNING: {stray} spans arrived during an arm without an exporter"
            ));
        }
        self.report.note(format!(
            "compare-tracing: each arm batch-submits N={n} noop tasks with no worker running, \
             then times a fresh worker (C={}) from its first dequeue to its last completion; \
             the traced arm runs api and worker with OTEL_EXPORTER_OTLP_ENDPOINT=http://{otlp_addr} \
             OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_TRACES_SAMPLER=always_on, exporting to a \
             receiver inside the bench; arms run untraced, traced, untraced",
            self.cfg.slots
        ));
        self.report.note(
            "CPU in cores (1.00 = one core for the whole phase); `bench` includes the OTLP \
             receiver; `other` is machine CPU outside the tracked processes",
        );
        Ok(())
    }
}
