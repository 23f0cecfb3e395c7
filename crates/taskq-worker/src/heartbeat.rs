//! The heartbeat loop: extends the lease of every attempt in the in-flight map (running,
//! or finished and waiting for its acknowledgement) every third of the lease, so a task
//! runs as long as its handler needs while a dead worker's tasks come back within one
//! lease. A faster tick signals the handlers of running tasks that a user cancelled.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use taskq_core::{QueueName, TaskId};
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let lease = shared.settings.lease;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cancel_tick = tokio::time::interval(CANCEL_CHECK);
    cancel_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = cancel_tick.tick() => {
                signal_cancellations(&shared).await;
                continue;
            }
        }
        let mut by_queue: BTreeMap<QueueName, Vec<(TaskId, String)>> = BTreeMap::new();
        for f in shared.inflight().values() {
            by_queue
                .entry(f.queue.clone())
                .or_default()
                .push((f.id, f.token.clone()));
        }
        for (queue, held) in by_queue {
            match shared.broker.extend(&queue, &held, lease).await {
                Ok(lost) => {
                    // An attempt acknowledged since the map was read no longer holds its
                    // lease either, and is no longer in the map: that is no loss.
                    for id in lost.into_iter().filter(|id| shared.holds(&queue, *id)) {
                        shared.metrics.heartbeats_missed.inc();
                        tracing::warn!(task = %id, %queue, "lease lost; another worker may run this task");
                    }
                }
                Err(e) => {
                    shared.metrics.heartbeats_missed.inc_by(held.len() as u64);
                    tracing::warn!(error = %e, %queue, "heartbeat failed");
                }
            }
        }
    }
}

/// How often running tasks are checked for a cancellation request.
const CANCEL_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Signals the handlers of running tasks that a user cancelled. (A handler that finished
/// meanwhile is not signalled; a retry of its task ends it cancelled, see FAIL.)
async fn signal_cancellations(shared: &Shared) {
    let mut by_queue: BTreeMap<QueueName, Vec<TaskId>> = BTreeMap::new();
    for f in shared.inflight().values() {
        if f.phase.is_running() {
            by_queue.entry(f.queue.clone()).or_default().push(f.id);
        }
    }
    for (queue, ids) in by_queue {
        match shared.broker.cancel_requested(&queue, &ids).await {
            Ok(cancelled) if cancelled.is_empty() => {}
            Ok(cancelled) => {
                let cancelled: HashSet<TaskId> = cancelled.into_iter().collect();
                let inflight = shared.inflight();
                let flagged = inflight
                    .values()
                    .filter(|f| f.queue == queue && cancelled.contains(&f.id));
                for f in flagged {
                    if f.phase.cancel() {
                        tracing::info!(task = %f.id, %queue, "cancelled while running; signalling the handler");
                        f.cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, %queue, "checking for cancellations failed"),
        }
    }
}
