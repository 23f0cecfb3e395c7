//! The outbox writers: one loop per served queue reads the status updates the Redis
//! scripts appended to the queue's outbox stream, applies them to MongoDB in batches, and
//! acknowledges them only afterwards.
//!
//! Every worker's writer is a consumer (named after the worker) of the queue's one
//! consumer group, so each entry is applied by one writer. An entry a writer read but
//! never acknowledged (its process was killed, or it is stuck) stays pending under its
//! name; every writer claims such entries once they have been idle for
//! [`Settings::outbox_claim_idle`] and applies them itself. A writer restarted under the
//! same name first re-reads its own pending entries. Writers of workers that stopped are
//! removed from the group once they hold no entry.
//!
//! Invariants:
//! - An entry is acknowledged only after [`taskq_store::apply_batch`] returned for its
//!   updates (written, or dropped after the server refused them repeatedly), and after
//!   the flow dependents of its finished tasks were settled ([`crate::flows`]).
//! - Applying an entry twice is harmless (the store's updates are idempotent and ordered
//!   by `seq`), so claiming from a slow but live writer costs only a repeated write.
//! - At shutdown the writer keeps applying until the stream has nothing new for it (or
//!   the drain deadline passes); whatever is left stays in Redis for the other writers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskq_core::QueueName;
use taskq_redis::{OutboxEntry, OutboxReader, OutboxUpdate};
use taskq_store::{StatusUpdate, WriterOptions, WriterStats};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// Most entries read at once (each holds the updates of one script call).
const READ_COUNT: usize = 128;
/// Most updates applied in one batch; reading stops gathering beyond it.
const MAX_UPDATES: usize = 4_000;
/// Entries claimed per `XAUTOCLAIM` call.
const CLAIM_COUNT: usize = 128;
/// How often writers that stopped are removed from the group.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long a writer must have been silent, without pending entries, to be removed.
const SWEEP_IDLE: Duration = Duration::from_secs(120);
/// Pause after a Redis error.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Runs the writer of `queue` until `drain` is cancelled and the stream has nothing new
/// for it.
pub(crate) async fn run(
    shared: Arc<Shared>,
    queue: QueueName,
    opts: WriterOptions,
    stats: Arc<WriterStats>,
    drain: CancellationToken,
) {
    let w = Writer {
        shared,
        queue,
        opts,
        stats,
    };
    let Some(mut reader) = w.connect(&drain).await else {
        return;
    };
    let mut next_claim = Instant::now();
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    loop {
        let draining = drain.is_cancelled();
        let now = Instant::now();
        if !draining && now >= next_claim {
            next_claim = now + w.shared.settings.outbox_claim_interval;
            w.claim_idle().await;
            w.refresh_depth().await;
        }
        if !draining && now >= next_sweep {
            next_sweep = now + SWEEP_EVERY;
            match w.shared.broker.outbox_sweep(&w.queue, SWEEP_IDLE).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(queue = %w.queue, removed = n, "removed stopped outbox writers")
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %w.queue, "sweeping outbox writers failed")
                }
            }
        }
        // Blocks up to a second when nothing is new, so the claim tick and the drain
        // signal are seen within about a second.
        let entries = match w.gather(&mut reader, !draining).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, queue = %w.queue, "reading the outbox failed");
                if draining {
                    return;
                }
                tokio::time::sleep(ERROR_PAUSE).await;
                // Redis may have lost its data (and the group with it): join again.
                if let Err(e) = w.shared.broker.outbox_join(&w.queue).await {
                    tracing::debug!(error = %e, "joining the outbox group again failed");
                }
                continue;
            }
        };
        if entries.is_empty() {
            if draining {
                return;
            }
            continue;
        }
        w.apply_and_ack(entries).await;
    }
}

struct Writer {
    shared: Arc<Shared>,
    queue: QueueName,
    opts: WriterOptions,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Joins the consumer group and opens the reader, retrying until it works (or the
    /// worker stops: then `None`).
    async fn connect(&self, drain: &CancellationToken) -> Option<OutboxReader> {
        let broker = &self.shared.broker;
        let consumer = &self.shared.settings.worker_id;
        loop {
            let opened = async {
                broker.outbox_join(&self.queue).await?;
                broker.outbox_reader(&self.queue, consumer).await
            };
            match opened.await {
                Ok(r) => return Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, queue = %self.queue, "cannot open the outbox; retrying");
                    tokio::select! {
                        _ = drain.cancelled() => return None,
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// One batch: a (blocking) read, then, when it brought less than a full batch, one
    /// more read after the flush interval to let a busy stream fill the batch.
    async fn gather(
        &self,
        reader: &mut OutboxReader,
        block: bool,
    ) -> taskq_redis::Result<Vec<OutboxEntry>> {
        let mut entries = reader.read(READ_COUNT, block).await?;
        if entries.is_empty() {
            return Ok(entries);
        }
        let updates = |es: &[OutboxEntry]| es.iter().map(|e| e.updates.len()).sum::<usize>();
        if updates(&entries) < MAX_UPDATES && entries.len() < READ_COUNT {
            tokio::time::sleep(self.opts.flush_interval).await;
            let more = reader.read(READ_COUNT - entries.len(), false).await?;
            entries.extend(more);
        }
        Ok(entries)
    }

    /// Applies the entries' updates to MongoDB, then acknowledges the entries.
    async fn apply_and_ack(&self, entries: Vec<OutboxEntry>) {
        let updates: Vec<StatusUpdate> = entries
            .iter()
            .flat_map(|e| e.updates.iter().map(status_update))
            .collect();
        if !updates.is_empty() {
            taskq_store::apply_batch(&self.shared.store, &self.opts, &self.stats, updates).await;
        }
        crate::notify::publish_finished(&self.shared.broker, &entries).await;
        // Only once their final updates are in MongoDB are the dependents of finished
        // tasks told (see `crate::flows`); not acknowledged until then.
        if !crate::flows::settle(&self.shared.broker, &self.queue, &entries).await {
            return;
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut delay = Duration::from_millis(50);
        for tries in 1.. {
            match self.shared.broker.outbox_ack(&self.queue, &ids).await {
                Ok(_) => return,
                // Unacknowledged entries are applied again by whoever claims them:
                // harmless, so give up after a while rather than stall the writer.
                Err(e) if tries >= 8 => {
                    tracing::warn!(error = %e, queue = %self.queue, entries = ids.len(), "acknowledging outbox entries failed; another writer will apply them again");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "acknowledging outbox entries failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Claims and applies the entries other writers left pending for longer than the
    /// claim idle time (their worker died).
    async fn claim_idle(&self) {
        let s = &self.shared.settings;
        let mut cursor = "0-0".to_owned();
        // Bounded, so new entries are not starved while a large backlog is claimed.
        for _ in 0..16 {
            let claimed = self
                .shared
                .broker
                .outbox_claim(
                    &self.queue,
                    &s.worker_id,
                    s.outbox_claim_idle,
                    &cursor,
                    CLAIM_COUNT,
                )
                .await;
            let (next, entries) = match claimed {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, queue = %self.queue, "claiming idle outbox entries failed");
                    return;
                }
            };
            if !entries.is_empty() {
                tracing::info!(queue = %self.queue, entries = entries.len(), "applying outbox entries a stopped writer left");
                self.apply_and_ack(entries).await;
            }
            if next == "0-0" {
                return;
            }
            cursor = next;
        }
    }

    /// Publishes the outbox length (entries not yet applied) on the depth gauge.
    async fn refresh_depth(&self) {
        if let Ok(n) = self.shared.broker.outbox_len(&self.queue).await {
            self.shared
                .metrics
                .write_buffer_depth
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// The store update of one outbox update: the status with its attempt count, the dates
/// the status implies (`started_at` when running, `finished_at` when final, the retry
/// time as `scheduled_at`), the error as `last_error`, the result, and one history event.
pub(crate) fn status_update(u: &OutboxUpdate) -> StatusUpdate {
    let at = time(u.at_ms);
    let result = u
        .result
        .as_deref()
        .and_then(|r| match serde_json::from_str(r) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(task = %u.id, error = %e, "unreadable result in the outbox");
                None
            }
        });
    StatusUpdate::transition(u.id, u.seq, u.status, u.attempts, at)
        .by(u.worker.clone())
        .error(u.error.clone())
        .scheduled_at(u.due_ms.map(time))
        .result(result)
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskq_core::{TaskId, TaskStatus};

    fn update(status: TaskStatus) -> OutboxUpdate {
        OutboxUpdate {
            id: TaskId::new(),
            seq: 3,
            status,
            attempts: 2,
            at_ms: 1_700_000_000_000,
            worker: Some("w".into()),
            error: None,
            result: None,
            due_ms: None,
        }
    }

    #[test]
    fn each_status_sets_its_dates() {
        let at = time(1_700_000_000_000);
        let running = status_update(&update(TaskStatus::Running));
        assert_eq!((running.started_at, running.finished_at), (Some(at), None));
        let mut ok = update(TaskStatus::Succeeded);
        ok.result = Some(r#"{"n":123456789012345678901234567890}"#.into());
        let ok = status_update(&ok);
        assert_eq!((ok.started_at, ok.finished_at), (None, Some(at)));
        assert!(ok.result.is_some());
        let mut retry = update(TaskStatus::Retrying);
        retry.error = Some("boom".into());
        retry.due_ms = Some(1_700_000_005_000);
        let retry = status_update(&retry);
        assert_eq!(retry.scheduled_at, Some(time(1_700_000_005_000)));
        assert_eq!(retry.finished_at, None);
        assert_eq!(retry.last_error.as_deref(), Some("boom"));
        assert_eq!(retry.events[0].error.as_deref(), Some("boom"));
        assert_eq!(retry.events[0].attempt, 2);
        assert_eq!(retry.events[0].worker.as_deref(), Some("w"));
    }
}
