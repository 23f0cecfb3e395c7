//! Phase 7 (`--backlog`): the processing phase again with a large low-priority backlog
//! queued in Redis, to show whether the cost per task stays flat.

use std::time::Instant;

use anyhow::{Context, bail};
use taskq_core::{Limits, Priority};
use taskq_redis::EnqueueItem;

use super::{Bench, STOP_GRACE, TARGET_BACKLOG_FRACTION, progress};
use crate::report::{Metric, Target};

/// Backlog tasks per broker enqueue call.
const BACKLOG_BATCH: usize = 10_000;

impl Bench {
    /// Stops the worker, queues `--backlog` low-priority tasks through the broker, submits
    /// N normal tasks through the api and times a fresh worker through those N.
    pub(super) async fn backlog(&mut self, plain_processed: f64) -> anyhow::Result<()> {
        let n = self.cfg.tasks;
        if let Some((w, _)) = self.worker.take() {
            w.stop(STOP_GRACE).await?;
        }
        progress(&format!(
            "phase 7: queueing a backlog of {} low-priority tasks through the broker",
            self.cfg.backlog
        ));
        let limits = Limits::default();
        let start = Instant::now();
        let mut left = self.cfg.backlog;
        while left > 0 {
            let k = left.min(BACKLOG_BATCH);
            let now = taskq_core::now();
            let items = (0..k)
                .map(|_| {
                    limits
                        .admit(self.new_task(Priority::Low), now, None)
                        .map(|rec| EnqueueItem::from_record(&rec, 1))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("building backlog tasks: {e}"))?;
            let added = self
                .broker
                .enqueue(&items)
                .await
                .context("enqueueing the backlog")?;
            if added.iter().any(|a| !a) {
                bail!("the broker refused some backlog tasks as duplicates");
            }
            left -= k;
        }
        self.report.push(Metric::new(
            "backlog_enqueue_tasks_per_s",
            "backlog: broker enqueue (no records)",
            self.cfg.backlog as f64 / start.elapsed().as_secs_f64(),
            "tasks/s",
        ));

        progress(&format!(
            "phase 7: batch submit of {n} tasks with the backlog queued"
        ));
        let (rate, ids) = self.batch_submit(n, 0, "batch submit, backlog").await?;
        self.report.push(Metric::new(
            "batch_submit_backlog_tasks_per_s",
            "batch submit, backlog queued",
            rate,
            "tasks/s",
        ));
        progress("phase 7: processing with the backlog queued");
        let p = self.process(&ids, "processing, backlog").await?;
        let processed = n as f64 / p.elapsed.as_secs_f64();
        self.report.push(
            Metric::new(
                "processed_backlog_tasks_per_s",
                "processed, backlog queued",
                processed,
                "tasks/s",
            )
            .of("processed without backlog", plain_processed)
            .target(Target::FractionAtLeast(TARGET_BACKLOG_FRACTION)),
        );
        self.per_task_cpu(&p.cpu, n, "_backlog", ", backlog");
        progress("phase 7: records settled (the worker runs the backlog meanwhile)");
        let settled = self.wait_settled(n as u64).await?;
        let settle = settled.saturating_duration_since(p.first);
        self.report.push(Metric::new(
            "settled_backlog_tasks_per_s",
            "records settled, backlog queued",
            n as f64 / settle.as_secs_f64(),
            "tasks/s",
        ));
        self.writer_figures(p.depth, n, "_backlog", ", backlog")
            .await;
        self.worker_rss(
            "worker_backlog_peak_rss_mib",
            "peak RSS taskq-worker, backlog run",
        );
        self.report.note(format!(
            "backlog: {} low-priority noop tasks were put into Redis with the broker's enqueue \
             (batches of {BACKLOG_BATCH}), not through the api, so they have no MongoDB records \
             (the worker's status writes for the ones it runs match nothing); the N measured \
             tasks are normal priority and run first",
            self.cfg.backlog
        ));
        Ok(())
    }
}
