//! Cancel: Redis decides, MongoDB follows.
//!
//! Write order:
//!
//! 1. MongoDB is read: an unknown task is `NotFound`, a finished one a conflict.
//! 2. Redis: the `CANCEL` script, atomically, either takes a waiting task (queued,
//!    scheduled, retrying) out of every structure, bumps its `seq` to S and appends its
//!    `cancelled` update to the queue's outbox (applied by the workers' writers), or flags a
//!    running one (its worker stops the handler and finishes the attempt `cancelled`,
//!    through its own status update), or finds nothing (Redis lost the task: the record
//!    alone decides, at its `seq` + 1).
//! 3. MongoDB: a taken task's record becomes `cancelled` at S, so the answer carries it
//!    (the outbox entry applies the same update again, harmlessly).
//! 4. Redis: the id is published as finished, waking `?wait=` readers on every api.
//!
//! No undo is needed: MongoDB only follows what Redis decided. What a caller sees on a
//! failure: in step 2, `503` and nothing changed; in step 3, `503` while the task is
//! already gone from Redis (it never runs), and the record still becomes `cancelled`
//! through the outbox, as it does if the api dies between the steps.

use taskq_core::{TaskId, TaskRecord, TaskStatus};
use taskq_redis::CancelOutcome;
use taskq_store::StatusUpdate;
use taskq_telemetry::metrics::Metrics;

use crate::AppState;
use crate::error::ApiError;

/// What a cancel did.
#[derive(Debug)]
pub(crate) enum Cancelled {
    /// The task was waiting and is now `cancelled`: its record after the change.
    Now(TaskRecord),
    /// The task is running: its handler was signalled and the attempt ends `cancelled`
    /// shortly. The record as it was.
    Signalled(TaskRecord),
}

/// Cancels task `id` (see the module documentation).
pub(crate) async fn cancel(state: &AppState, id: TaskId) -> Result<Cancelled, ApiError> {
    let Some(stored) = state.store.get(id).await? else {
        return Err(ApiError::not_found(format!("no task {id}")));
    };
    let status = stored.record.status;
    if status.is_final() {
        return Err(ApiError::conflict(format!("task {id} is already {status}")));
    }
    let now = taskq_core::now();
    let (seq, attempts) = match state.broker.cancel(&stored.record.queue, id).await? {
        CancelOutcome::Signalled => return Ok(Cancelled::Signalled(stored.record)),
        CancelOutcome::Cancelled { seq, attempts } => (seq, attempts),
        // Not in Redis (e.g. Redis lost it): the record alone decides.
        CancelOutcome::NotFound => (stored.seq + 1, stored.record.attempts),
    };
    let update = StatusUpdate::transition(id, seq, TaskStatus::Cancelled, attempts, now);
    state.store.apply(std::slice::from_ref(&update)).await?;
    crate::wait::publish(state, id).await;
    state
        .metrics
        .cancelled
        .get_or_create(&Metrics::task(
            stored.record.queue.as_str(),
            &stored.record.kind,
        ))
        .inc();
    match state.store.get(id).await? {
        Some(t) => Ok(Cancelled::Now(t.record)),
        None => Err(ApiError::not_found(format!("no task {id}"))),
    }
}
