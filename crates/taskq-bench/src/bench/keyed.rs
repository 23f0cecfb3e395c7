//! Phase 4b (`--keys`, right after the plain processing phase): the processing phase
//! again with every task keyed (keys `k-0` … round robin) under the queue's
//! `max_running_per_key`, then once more without keys; the keyed rate is reported as a
//! fraction of the mean of the plain runs before and after it: the cost of ordered and
//! fair work per key, on the same store and the same warmed-up servers.

use anyhow::Context;
use taskq_redis::QueueLimits;

use super::{Bench, STOP_GRACE, TARGET_KEYED_FRACTION, progress};
use crate::report::{Metric, Target};

impl Bench {
    /// Stops the worker, sets `--max-running-per-key`, submits N keyed tasks through the
    /// api and times a fresh worker through them; clears the limit afterwards.
    pub(super) async fn keyed(&mut self, plain_processed: f64) -> anyhow::Result<()> {
        let (n, keys) = (self.cfg.tasks, self.cfg.keys);
        if let Some((w, _)) = self.worker.take() {
            w.stop(STOP_GRACE).await?;
        }
        let limits = QueueLimits {
            max_running_per_key: self.cfg.max_running_per_key,
            ..QueueLimits::default()
        };
        self.broker
            .set_limits(&self.queue, &limits)
            .await
            .context("setting max_running_per_key")?;
        let limit = self
            .cfg
            .max_running_per_key
            .map_or("no running limit".to_owned(), |m| {
                format!("max {m} running per key")
            });
        progress(&format!(
            "phase 4b: batch submit of {n} tasks over {keys} keys ({limit})"
        ));
        // Submit once the api finds both stores up again after the plain phase's writes.
        if let Some((api, addr)) = &mut self.api {
            crate::procs::wait_ready(api, *addr, &self.http).await?;
        }
        let (_, ids) = self.batch_submit(n, keys, "batch submit, keyed").await?;
        progress("phase 4b: processing keyed tasks");
        let p = self.process(&ids, "processing, keyed").await?;
        let processed = n as f64 / p.elapsed.as_secs_f64();
        self.per_task_cpu(&p.cpu, n, "_keyed", ", keyed");
        self.settle_counting(&p, n, "_keyed", ", keyed").await?;
        self.writer_figures(p.depth, n, "_keyed", ", keyed").await;
        self.broker
            .set_limits(&self.queue, &QueueLimits::default())
            .await
            .context("clearing the limits")?;

        // The plain phase again, so the keyed one is compared with plain processing on
        // the same warmed-up servers: the mean of the plain runs before and after it.
        if let Some((w, _)) = self.worker.take() {
            w.stop(STOP_GRACE).await?;
        }
        progress("phase 4b: plain processing again");
        let (_, ids) = self.batch_submit(n, 0, "batch submit, plain again").await?;
        let again = self.process(&ids, "processing, plain again").await?;
        let plain_again = n as f64 / again.elapsed.as_secs_f64();
        self.report.push(Metric::new(
            "processed_plain_again_tasks_per_s",
            "processed without keys, after the keyed run",
            plain_again,
            "tasks/s",
        ));
        self.settle(n).await?;
        self.report.push(
            Metric::new(
                "processed_keyed_tasks_per_s",
                &format!("processed, {keys} keys, {limit}"),
                processed,
                "tasks/s",
            )
            .of(
                "processed without keys (mean before/after)",
                (plain_processed + plain_again) / 2.0,
            )
            .target(Target::FractionAtLeast(TARGET_KEYED_FRACTION)),
        );
        Ok(())
    }
}
