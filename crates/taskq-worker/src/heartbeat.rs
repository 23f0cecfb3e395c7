//! The heartbeat loop: extends the lease of every running attempt every third of the
//! lease, so a task runs as long as its handler needs while a dead worker's tasks come
//! back within one lease.

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
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
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
                        shared.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
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
