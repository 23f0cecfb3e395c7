//! The registration loop: every [`INTERVAL`] the worker writes its id, host, queues,
//! slots in use and running task ids into the Redis worker registry with a TTL of three
//! intervals (so a killed worker disappears within [`TTL`]), and rolls up the finished
//! minute's throughput counters of its queues for the dashboard's charts. On shutdown it
//! removes its registration.

use std::sync::Arc;
use std::time::Duration;

use taskq_redis::WorkerInfo;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// Time between two registrations.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
/// How long a registration stays visible without renewal.
pub(crate) const TTL: Duration = Duration::from_secs(15);

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let settings = &shared.settings;
    let host = crate::config::hostname().unwrap_or_else(|| "unknown".to_owned());
    let started_ms = taskq_core::now_ms();
    let queues: Vec<String> = settings
        .queues
        .weights()
        .names()
        .map(|q| q.to_string())
        .collect();
    let slots = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Two attempts of one task may be held at once (see `worker::AttemptKey`).
        let mut ids: Vec<_> = shared.inflight().values().map(|f| f.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let tasks: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let now = taskq_core::now_ms();
        let info = WorkerInfo {
            id: settings.worker_id.clone(),
            host: host.clone(),
            queues: queues.clone(),
            slots,
            busy: u32::try_from(tasks.len()).unwrap_or(u32::MAX),
            started_ms,
            tasks,
            seen_ms: now,
        };
        if let Err(e) = shared.broker.heartbeat_worker(&info, TTL).await {
            tracing::warn!(error = %e, "registering the worker failed");
        }
        for queue in settings.queues.weights().names() {
            if let Err(e) = shared.broker.roll_up_minute(queue, now).await {
                tracing::warn!(error = %e, %queue, "rolling up throughput counters failed");
            }
        }
    }
    if let Err(e) = shared.broker.deregister_worker(&settings.worker_id).await {
        tracing::warn!(error = %e, "removing the worker's registration failed");
    }
}
