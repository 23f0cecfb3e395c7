//! The submit check: settles records whose task never reached Redis.
//!
//! The api writes a task's record before it enqueues the task. If the api dies between
//! the two writes, or the enqueue fails and so does the undo (an outage), the record is
//! left `queued` or `scheduled` with nothing in Redis to ever run it. Every new record is
//! marked submit-pending; the task's first status update clears the mark. This loop
//! looks only at marked records older than [`Settings::submit_grace`] (a sparse index
//! holds just those), checks in one atomic script per queue which of them Redis holds,
//! and then:
//! - a task Redis holds was enqueued: its mark is cleared;
//! - a task Redis does not hold, whose record was created after the queue's epoch (so
//!   Redis has not lost data since), and of which the queue's outbox holds no update
//!   (so it did not run and finish with its updates still unapplied), was never
//!   enqueued: its record ends `cancelled` with reason `submit_failed` (a task whose
//!   submit failed never runs); one with updates in the outbox waits for a later round;
//! - a task Redis does not hold, created before the epoch, may have been in a Redis that
//!   lost its data: left alone for `POST /v1/admin/recover`, mark cleared.
//!
//! The grace period must exceed the api's enqueue deadline (5 s after a record's
//! `created_at`, no api sends its task's enqueue any more) plus the clock skew between
//! hosts. Every write is conditional, so every worker runs this at once safely.

use std::collections::BTreeMap;
use std::sync::Arc;

use taskq_core::{QueueName, TaskId};
use taskq_store::PendingSubmit;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// Records looked at per page.
const PAGE: u32 = 1_000;
/// Pages per round, so one round stays short.
const MAX_PAGES: usize = 20;

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.settings.submit_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = check(&shared).await {
                    tracing::warn!(error = %e, "checking pending submits failed");
                }
            }
        }
    }
}

/// One round over the submit-pending records older than the grace period.
pub(crate) async fn check(shared: &Shared) -> anyhow::Result<()> {
    let grace = chrono::Duration::from_std(shared.settings.submit_grace)?;
    for _ in 0..MAX_PAGES {
        let now = taskq_core::now();
        let page = shared.store.pending_submits(now - grace, PAGE).await?;
        let full = page.len() == PAGE as usize;
        let mut by_queue: BTreeMap<QueueName, Vec<PendingSubmit>> = BTreeMap::new();
        for p in page {
            by_queue.entry(p.queue.clone()).or_default().push(p);
        }
        for (queue, pending) in by_queue {
            settle(shared, &queue, pending).await?;
        }
        if !full {
            break;
        }
    }
    Ok(())
}

async fn settle(
    shared: &Shared,
    queue: &QueueName,
    pending: Vec<PendingSubmit>,
) -> anyhow::Result<()> {
    let ids: Vec<TaskId> = pending.iter().map(|p| p.id).collect();
    let (epoch_ms, present) = shared.broker.present(queue, &ids).await?;
    let (mut never, mut settled) = (Vec::new(), Vec::new());
    for (p, present) in pending.iter().zip(present) {
        if present {
            settled.push(p.id);
        } else if p.created_at.timestamp_millis() >= epoch_ms {
            never.push(p.id);
        } else {
            tracing::info!(task = %p.id, %queue, "a submit-pending task predates what Redis remembers; left to recovery");
            settled.push(p.id);
        }
    }
    if !never.is_empty() {
        // A task that reached Redis and already finished is absent too, its first status
        // update (which clears the mark) still in the outbox, unapplied while MongoDB is
        // slow or a writer is behind. Read after that look, an outbox without an update
        // of the task means it never reached Redis (an entry leaves only once applied, and
        // the cancel below is conditional on the mark); otherwise a later round decides.
        match shared.broker.outbox_tasks(queue).await? {
            Some(in_outbox) => never.retain(|id| !in_outbox.contains(id)),
            None => never.clear(),
        }
    }
    let cancelled = shared
        .store
        .settle_submits(&never, &settled, taskq_core::now())
        .await?;
    if cancelled > 0 {
        crate::notify::publish(&shared.broker, &never).await;
        tracing::warn!(%queue, cancelled, "records whose task never reached Redis were cancelled (submit_failed)");
    }
    Ok(())
}
