//! Promotion and reaping. Every worker runs this loop; the scripts make it safe to run
//! everywhere at once (each due task is promoted, and each expired lease reaped, by
//! exactly one caller), and they record the status updates in the queue's outbox.

use std::sync::Arc;

use taskq_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// Most tasks moved per script call.
const LIMIT: usize = 1_000;

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let settings = &shared.settings;
    let mut promote = tokio::time::interval(settings.promote_interval);
    let mut reap = tokio::time::interval(settings.reap_interval);
    promote.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = promote.tick() => promote_due(&shared).await,
            _ = reap.tick() => reap_expired(&shared).await,
        }
    }
}

async fn promote_due(shared: &Shared) {
    for queue in shared.settings.queues.weights().names() {
        loop {
            let now_ms = taskq_core::now().timestamp_millis();
            match shared.broker.promote(queue, now_ms, LIMIT).await {
                // A full batch: more may be due.
                Ok(promoted) if promoted.len() >= LIMIT => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, %queue, "promoting due tasks failed");
                    break;
                }
            }
        }
    }
}

async fn reap_expired(shared: &Shared) {
    for queue in shared.settings.queues.weights().names() {
        let now_ms = taskq_core::now().timestamp_millis();
        let reaped = match shared.broker.reap(queue, now_ms, LIMIT).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, %queue, "reaping expired leases failed");
                continue;
            }
        };
        if !reaped.is_empty() {
            shared
                .metrics
                .lease_expirations
                .get_or_create(&Metrics::queue(queue.as_str()))
                .inc_by(reaped.len() as u64);
        }
        for r in &reaped {
            tracing::warn!(task = %r.id, %queue, attempt = r.attempts, requeued = r.requeued, "lease expired");
        }
    }
}
