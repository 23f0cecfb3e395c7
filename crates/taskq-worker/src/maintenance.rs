//! Promotion and reaping. Every worker runs this loop; the scripts make it safe to run
//! everywhere at once (each due task is promoted, and each expired lease reaped, by
//! exactly one caller).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use taskq_core::{TaskEvent, TaskStatus};
use taskq_store::{StatusUpdate, UpdateWriter};
use taskq_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// Most tasks moved per script call.
const LIMIT: usize = 1_000;

pub(crate) async fn run(shared: Arc<Shared>, writer: UpdateWriter, stop: CancellationToken) {
    let settings = &shared.settings;
    let mut promote = tokio::time::interval(settings.promote_interval);
    let mut reap = tokio::time::interval(settings.reap_interval);
    promote.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = promote.tick() => {
                shared.metrics.write_buffer_depth.set(writer.depth() as i64);
                promote_due(&shared, &writer).await
            }
            _ = reap.tick() => reap_expired(&shared, &writer).await,
        }
    }
}

async fn promote_due(shared: &Shared, writer: &UpdateWriter) {
    for queue in shared.settings.queues.weights().names() {
        loop {
            let now = taskq_core::now();
            let promoted = match shared
                .broker
                .promote(queue, now.timestamp_millis(), LIMIT)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, %queue, "promoting due tasks failed");
                    break;
                }
            };
            let n = promoted.len();
            shared.stats.promoted.fetch_add(n as u64, Ordering::Relaxed);
            let updates = promoted
                .into_iter()
                .map(|p| StatusUpdate {
                    events: vec![TaskEvent {
                        status: TaskStatus::Queued,
                        at: now,
                        attempt: p.attempts,
                        error: None,
                        worker: None,
                    }],
                    ..StatusUpdate::new(p.id, p.seq, TaskStatus::Queued, p.attempts, now)
                })
                .collect();
            if writer.send_many(updates).await.is_err() || n < LIMIT {
                break;
            }
        }
    }
}

async fn reap_expired(shared: &Shared, writer: &UpdateWriter) {
    for queue in shared.settings.queues.weights().names() {
        let now = taskq_core::now();
        let reaped = match shared
            .broker
            .reap(queue, now.timestamp_millis(), LIMIT)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, %queue, "reaping expired leases failed");
                continue;
            }
        };
        shared
            .stats
            .reaped
            .fetch_add(reaped.len() as u64, Ordering::Relaxed);
        if !reaped.is_empty() {
            shared
                .metrics
                .lease_expirations
                .get_or_create(&Metrics::queue(queue.as_str()))
                .inc_by(reaped.len() as u64);
        }
        let updates = reaped
            .into_iter()
            .map(|r| {
                tracing::warn!(task = %r.id, %queue, attempt = r.attempts, requeued = r.requeued, "lease expired");
                let (status, error) = if r.requeued {
                    (TaskStatus::Queued, "lease expired: the worker stopped heartbeating")
                } else {
                    (TaskStatus::Dead, "lease expired on the last attempt")
                };
                StatusUpdate {
                    last_error: Some(error.to_owned()),
                    finished_at: (!r.requeued).then_some(now),
                    events: vec![TaskEvent {
                        status,
                        at: now,
                        attempt: r.attempts,
                        error: Some(error.to_owned()),
                        worker: None,
                    }],
                    ..StatusUpdate::new(r.id, r.seq, status, r.attempts, now)
                }
            })
            .collect();
        let _ = writer.send_many(updates).await;
    }
}
