//! After an outbox batch is in MongoDB, the ids of the tasks it finished (succeeded, dead,
//! cancelled) are published on Redis ([`taskq_redis::keys::FINISHED`]), so the api answers
//! the requests waiting for them (`GET /v1/tasks/{id}?wait=…`) at once. Published after the
//! write, so a woken waiter reads the final record. The submit check publishes the records
//! it cancels the same way. A failed publish only delays those
//! answers to their wait's deadline: it is logged, not retried.

use taskq_core::TaskId;
use taskq_redis::{Broker, OutboxEntry};

/// Publishes the tasks whose update in `entries` is final.
pub(crate) async fn publish_finished(broker: &Broker, entries: &[OutboxEntry]) {
    let ids: Vec<TaskId> = entries
        .iter()
        .flat_map(|e| &e.updates)
        .filter(|u| u.status.is_final())
        .map(|u| u.id)
        .collect();
    publish(broker, &ids).await;
}

/// Publishes that `ids` finished (their records say so already).
pub(crate) async fn publish(broker: &Broker, ids: &[TaskId]) {
    if let Err(e) = broker.publish_finished(ids).await {
        tracing::warn!(error = %e, tasks = ids.len(), "publishing finished tasks failed; their waiters answer at their deadline");
    }
}
