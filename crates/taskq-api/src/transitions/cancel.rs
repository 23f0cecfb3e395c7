//! Cancel: Redis decides, MongoDB follows.
//!
//! Write order:
//!
//! 1. MongoDB is read: an unknown task is `NotFound`, a finished one a conflict.
//! 2. Redis: the `CANCEL` script, atomically, either takes a waiting task (queued,
//!    scheduled, retrying) out of every structure, bumps its `seq` to S and appends its
//!    `cancelled` update to the queue's outbox (applied by the workers' writers), or flags a
//!    running one (its worker stops the handler and finishes the attempt `cancelled`,
//!    through its own status update), or finds nothing.
//! 3. Only when Redis found nothing: the task ran to its end (its final update is in the
//!    queue's outbox, or already in MongoDB), Redis lost it, or an enqueue of it is on
//!    its way (a submit, retry or recovery writes MongoDB first). The outbox is read,
//!    then MongoDB again: a task with an update in the outbox, or a record now finished,
//!    is a conflict. Otherwise the `CANCEL` script runs again with the record's `seq` + 1
//!    as S: a task an enqueue brought meanwhile is cancelled (or signalled) as in step 2;
//!    a task still absent gets a tombstone that makes the enqueue on its way skip it, and
//!    its `cancelled` update at S goes to the outbox. Either way Redis decided, at a
//!    `seq` no transition in Redis can also use.
//! 4. MongoDB: a taken task's record becomes `cancelled` at S, so the answer carries it
//!    (the outbox entry applies the same update again, harmlessly).
//! 5. Redis: the id is published as finished, waking `?wait=` readers on every api.
//!
//! No undo is needed: MongoDB only follows what Redis decided. What a caller sees on a
//! failure: in steps 2 and 3, `503` and nothing changed (an outbox too long to read
//! through is a `503` too: call again once the workers caught up); in step 4, `503`
//! while the task is already gone from Redis (it never runs), and the record still
//! becomes `cancelled` through the outbox, as it does if the api dies between the steps.

use taskq_core::{TaskId, TaskRecord, TaskStatus};
use taskq_redis::CancelOutcome;
use taskq_store::StatusUpdate;
use taskq_telemetry::metrics::Metrics;

use utoipa::IntoResponses;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// The failures of `POST /v1/tasks/{id}/cancel` and where each leaves the task, as the
/// OpenAPI document lists them (beside the task-id answers).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub(crate) enum CancelErrors {
    #[response(
        status = 409,
        description = "The task already finished (or has just finished and its record is being updated)."
    )]
    Finished(ErrorBody),
    #[response(
        status = 503,
        description = "Redis or MongoDB is unavailable, or the task is not in Redis and its queue's outbox is too far behind to tell whether it ran; nothing changed, call again."
    )]
    Unavailable(ErrorBody),
}

/// How long the tombstone of a task cancelled while absent from Redis stays: longer than
/// any enqueue can lag behind its MongoDB write (a submit gives up after 5 s, a retry or
/// recovery call at its request timeout).
const TOMBSTONE: std::time::Duration = std::time::Duration::from_secs(600);

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
    let queue = &stored.record.queue;
    let mut outcome = state.broker.cancel(queue, id).await?;
    if outcome == CancelOutcome::NotFound {
        outcome = cancel_absent(state, id, queue).await?;
    }
    let (seq, attempts) = match outcome {
        CancelOutcome::Signalled => return Ok(Cancelled::Signalled(stored.record)),
        CancelOutcome::Cancelled { seq, attempts } => (seq, attempts),
        CancelOutcome::NotFound => {
            return Err(ApiError::internal(&format!(
                "cancelling the absent task {id} found nothing"
            )));
        }
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

/// Step 3 of the module documentation: task `id` of `queue` is not in Redis.
async fn cancel_absent(
    state: &AppState,
    id: TaskId,
    queue: &taskq_core::QueueName,
) -> Result<CancelOutcome, ApiError> {
    // Read after the cancel found nothing: a task that ran to its end before it has its
    // final update either still in the outbox (an entry leaves only once applied) or
    // already in MongoDB, read next.
    match state.broker.outbox_tasks(queue).await? {
        Some(ran) if ran.contains(&id) => {
            return Err(ApiError::conflict(format!(
                "task {id} has finished; its record is being updated"
            )));
        }
        Some(_) => {}
        None => return Err(ApiError::outbox_behind(queue)),
    }
    let Some(stored) = state.store.get(id).await? else {
        return Err(ApiError::not_found(format!("no task {id}")));
    };
    let status = stored.record.status;
    if status.is_final() {
        return Err(ApiError::conflict(format!("task {id} is already {status}")));
    }
    Ok(state
        .broker
        .cancel_absent(queue, id, stored.seq + 1, stored.record.attempts, TOMBSTONE)
        .await?)
}
