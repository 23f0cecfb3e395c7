//! The completion loop: acknowledges finished attempts in Redis in batches (one script
//! call per queue and outcome kind for everything that finished since the last call).
//! Each script records the attempts' status updates in the queue's outbox in the same
//! atomic step; the outbox writers ([`crate::outbox`]) take them to the store. Each
//! attempt stays in the in-flight map, its lease heartbeated, until the call that
//! acknowledges it has returned.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use taskq_core::{Backoff, QueueName, TaskId};
use taskq_redis::scripts::fail::Failed;
use taskq_redis::{BrokerError, FailOutcome};
use taskq_telemetry::metrics::{Metrics, TaskLabels};
use tokio::sync::mpsc;

use crate::executor::Outcome;
use crate::handler::HandlerError;
use crate::worker::{Shared, Tracked};

/// Most outcomes acknowledged in one round.
const MAX_BATCH: usize = 512;

/// A finished attempt.
#[derive(Debug)]
pub(crate) struct Done {
    pub queue: QueueName,
    pub kind: String,
    pub id: TaskId,
    pub token: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub outcome: Outcome,
    /// The attempt's in-flight entry; dropped once the outcome is acknowledged.
    #[expect(dead_code, reason = "held only for its drop")]
    pub tracked: Tracked,
}

pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Done>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let mut by_queue: BTreeMap<QueueName, Vec<Done>> = BTreeMap::new();
        for d in buf.drain(..) {
            by_queue.entry(d.queue.clone()).or_default().push(d);
        }
        for (queue, done) in by_queue {
            complete(&shared, &queue, done).await;
        }
    }
}

async fn complete(shared: &Shared, queue: &QueueName, done: Vec<Done>) {
    let worker = shared.settings.worker_id.as_str();
    let now = taskq_core::now();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let mut released = Vec::new();
    let mut cancelled = Vec::new();
    for d in done {
        match d.outcome {
            Outcome::Succeeded(_) => ok.push(d),
            Outcome::Failed(_) => failed.push(d),
            Outcome::Released => released.push(d),
            Outcome::Cancelled => cancelled.push(d),
        }
    }

    if !ok.is_empty() {
        let items: Vec<_> = ok
            .iter()
            .map(|d| {
                let result = match &d.outcome {
                    Outcome::Succeeded(r) => r.as_ref(),
                    _ => None,
                };
                (d.id, d.token.as_str(), result)
            })
            .collect();
        let seqs = retrying(shared, "ack", || shared.broker.ack(queue, worker, &items)).await;
        for (d, seq) in ok.iter().zip(seqs) {
            if seq.is_none() {
                continue;
            }
            shared.metrics.succeeded.get_or_create(&labels(d)).inc();
        }
        drop(ok);
    }

    if !failed.is_empty() {
        // Computed before any await: the thread-local generator is not `Send`.
        let plans: Vec<(FailOutcome, String)> = failed
            .iter()
            .map(|d| {
                let Outcome::Failed(err) = &d.outcome else {
                    return (FailOutcome::Dead, String::new());
                };
                let outcome = if err.is_retryable() && d.attempt < d.max_attempts {
                    let delay = match err {
                        HandlerError::RetryAfter { after, .. } => {
                            (*after).min(Duration::from_millis(d.backoff.max_ms))
                        }
                        _ => d.backoff.delay(d.attempt, &mut rand::rng()),
                    };
                    FailOutcome::RetryAt(now.timestamp_millis() + delay.as_millis() as i64)
                } else {
                    FailOutcome::Dead
                };
                (outcome, err.to_string())
            })
            .collect();
        let items: Vec<(TaskId, &str, FailOutcome, &str)> = failed
            .iter()
            .zip(&plans)
            .map(|(d, (o, e))| (d.id, d.token.as_str(), *o, e.as_str()))
            .collect();
        let ends = retrying(shared, "fail", || {
            shared.broker.fail_ends(queue, worker, &items)
        })
        .await;
        for ((d, (outcome, _)), end) in failed.iter().zip(&plans).zip(ends) {
            match end {
                None => {}
                // Asked to cancel while it ran: the failure ended the task cancelled.
                Some(Failed {
                    cancelled: true, ..
                }) => {
                    shared.metrics.cancelled.get_or_create(&labels(d)).inc();
                    tracing::debug!(task = %d.id, attempt = d.attempt, "attempt failed; the task was cancelled");
                }
                Some(_) => {
                    shared.metrics.failed.get_or_create(&labels(d)).inc();
                    match outcome {
                        FailOutcome::RetryAt(_) => {
                            shared.metrics.retried.get_or_create(&labels(d)).inc();
                        }
                        FailOutcome::Dead => {
                            shared.metrics.dead.get_or_create(&labels(d)).inc();
                        }
                    }
                    tracing::debug!(task = %d.id, attempt = d.attempt, outcome = ?outcome, "attempt failed");
                }
            }
        }
        drop(failed);
    }

    if !cancelled.is_empty() {
        let items: Vec<(TaskId, &str)> =
            cancelled.iter().map(|d| (d.id, d.token.as_str())).collect();
        let seqs = retrying(shared, "cancel", || {
            shared.broker.ack_cancelled(queue, worker, &items)
        })
        .await;
        for (d, seq) in cancelled.iter().zip(seqs) {
            if seq.is_some() {
                shared.metrics.cancelled.get_or_create(&labels(d)).inc();
            }
        }
        drop(cancelled);
    }

    if !released.is_empty() {
        let items: Vec<(TaskId, &str)> =
            released.iter().map(|d| (d.id, d.token.as_str())).collect();
        retrying(shared, "release", || {
            shared.broker.release(queue, worker, &items)
        })
        .await;
    }
}

fn labels(d: &Done) -> TaskLabels {
    Metrics::task(d.queue.as_str(), &d.kind)
}

/// Runs a broker call until it succeeds or a lease has passed. Then the attempts'
/// outcomes are dropped with their in-flight entries: their leases are no longer
/// extended, expire, and the reaper returns the tasks (at-least-once).
async fn retrying<T, F, Fut>(shared: &Shared, what: &str, mut call: F) -> Vec<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<Option<T>>, BrokerError>>,
{
    let give_up = tokio::time::Instant::now() + shared.settings.lease;
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() < give_up => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, "{what} failed until the leases expired; the tasks will rerun");
                return Vec::new();
            }
        }
    }
}
