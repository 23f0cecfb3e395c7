//! The heartbeat loop: extends the lease of every running attempt every third of the
//! lease, so a task runs as long as its handler needs while a dead worker's tasks come
//! back within one lease. A faster tick signals the handlers of running tasks that a
//! user cancelled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
        for (id, f) in shared.inflight().iter() {
            by_queue
                .entry(f.queue.clone())
                .or_default()
                .push((*id, f.token.clone()));
        }
        for (queue, held) in by_queue {
            match shared.broker.extend(&queue, &held, lease).await {
                Ok(lost) => {
                    for id in lost {
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

/// Signals the handlers of running tasks that a user cancelled.
async fn signal_cancellations(shared: &Shared) {
    let mut by_queue: BTreeMap<QueueName, Vec<TaskId>> = BTreeMap::new();
    for (id, f) in shared.inflight().iter() {
        if !f.cancelled.load(Ordering::SeqCst) {
            by_queue.entry(f.queue.clone()).or_default().push(*id);
        }
    }
    for (queue, ids) in by_queue {
        match shared.broker.cancel_requested(&queue, &ids).await {
            Ok(cancelled) => {
                let inflight = shared.inflight();
                for id in cancelled {
                    if let Some(f) = inflight.get(&id) {
                        tracing::info!(task = %id, %queue, "cancelled while running; signalling the handler");
                        f.cancelled.store(true, Ordering::SeqCst);
                        f.cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, %queue, "checking for cancellations failed"),
        }
    }
}
