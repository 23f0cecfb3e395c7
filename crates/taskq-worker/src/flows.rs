//! The outbox writers' part in flows: once a batch of status updates is applied to
//! MongoDB, the dependents of the tasks that finished in it are settled
//! (`taskq_redis::Broker::flow_settle`: the last dependency to succeed queues a waiting
//! dependent, one that died cancels it). The writer acknowledges the entries only after
//! this succeeded, so a crash or a Redis error repeats the (idempotent) settle, and a
//! dependent never starts before its dependencies' results are in MongoDB.

use std::time::Duration;

use taskq_core::QueueName;
use taskq_redis::flow::Finished;
use taskq_redis::{Broker, OutboxEntry};

/// Attempts before the entries are left unacknowledged (another writer claims them
/// after the claim idle time and settles again).
const TRIES: u32 = 6;

/// Settles the dependents of the tasks of `queue` that finished in `entries`. False
/// when Redis kept failing: the entries must not be acknowledged.
pub(crate) async fn settle(broker: &Broker, queue: &QueueName, entries: &[OutboxEntry]) -> bool {
    let finished: Vec<_> = entries
        .iter()
        .flat_map(|e| &e.updates)
        .filter_map(|u| Some((u.id, Finished::of(u.id, u.status, u.error.as_deref())?)))
        .collect();
    if finished.is_empty() {
        return true;
    }
    let mut delay = Duration::from_millis(50);
    for tries in 1..=TRIES {
        match broker.flow_settle(queue, &finished).await {
            Ok((0, 0)) => return true,
            Ok((queued, cancelled)) => {
                tracing::debug!(%queue, queued, cancelled, "settled flow dependents");
                return true;
            }
            Err(e) if tries == TRIES => {
                tracing::warn!(error = %e, %queue, "settling flow dependents failed; the outbox entries stay pending and are applied again");
            }
            Err(e) => {
                tracing::debug!(error = %e, "settling flow dependents failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    false
}
