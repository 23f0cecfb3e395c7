//! Manual retry of dead tasks (`dead → queued`) across both stores, for
//! `POST /v1/tasks/{id}/retry` and `POST /v1/queues/{name}/retry-dead` alike. A queue's
//! dead tasks are retried a page at a time, each page below the last one's ids, so one
//! call retries each task at most once, however soon it dies again ([`retry_queue`]).
//!
//! Write order, per call:
//!
//! 1. MongoDB: [`taskq_store::Store::requeue_dead`] moves each record from `dead` to
//!    `queued` (attempts 0, no finish time) and increments its `seq` to S.
//! 2. Redis: the records moved are enqueued together, due now, carrying `seq` S.
//!
//! Undo: when the enqueue fails its outcome is unknown (a lost reply may hide a success),
//! so the tasks are removed from Redis (best effort; a dead task is never in Redis, so
//! nothing else goes; one a worker already took stays, running or waiting for its retry,
//! and so does its record, which its own updates then move on), then every other record is put back to `dead` with `seq` S+1, the
//! attempts and finish time of the death the retry undid, and a `dead` event that says
//! why. The records then say what Redis holds, and the caller may simply call again.
//!
//! The writes run in a task of their own: a request that times out, or whose client goes
//! away, cannot stop them between the two stores.
//!
//! What a caller sees on each failure ([`Failed`]):
//! - MongoDB fails during step 1: the records moved so far are still enqueued (step 2);
//!   `queued` counts them, the others stay dead.
//! - Redis fails in step 2: `queued` is 0, every record of the call is dead again.
//! - MongoDB fails during the undo as well: `stuck` counts the records left `queued`
//!   without a Redis entry (logged); they stay queued without running until
//!   `POST /v1/admin/recover` enqueues them.

use taskq_core::{QueueName, TaskId, TaskRecord, TaskStatus};
use taskq_redis::EnqueueItem;
use taskq_store::{ListFilter, RequeueOutcome, StatusUpdate, StoredTask};

use utoipa::IntoResponses;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// The failures of `POST /v1/tasks/{id}/retry` and where each leaves the task, as the
/// OpenAPI document lists them (beside the task-id answers).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub(crate) enum RetryErrors {
    #[response(status = 409, description = "The task is not dead.")]
    NotDead(ErrorBody),
    #[response(
        status = 503,
        description = "Redis or MongoDB is unavailable, or the request timed out; the task stays dead (the message says otherwise in the rare case it could not be put back)."
    )]
    Unavailable(ErrorBody),
}

/// What became of one task of a [`retry`] call.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Queued again, in both stores; the record as MongoDB now holds it.
    Queued(Box<TaskRecord>),
    NotFound,
    /// Not dead (its current status): left alone.
    NotDead(TaskStatus),
}

/// A [`retry`] call that failed part-way (see the module documentation).
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: ApiError,
    /// Tasks of the call that were queued again in both stores before the failure.
    pub queued: u64,
    /// Records left `queued` in MongoDB without a Redis entry (their undo failed too).
    pub stuck: u64,
}

/// Retries the dead tasks among `ids`; one outcome per id, in order. Tasks that are not
/// dead are left alone.
pub(crate) async fn retry(state: &AppState, ids: Vec<TaskId>) -> Result<Vec<Outcome>, Failed> {
    let state = state.clone();
    tokio::spawn(async move { retry_detached(&state, &ids).await })
        .await
        .unwrap_or_else(|e| {
            Err(Failed {
                error: ApiError::internal(&e),
                queued: 0,
                stuck: 0,
            })
        })
}

/// Dead tasks retried per MongoDB page and Redis script call.
const RETRY_PAGE: u32 = 500;

/// Retries every dead task of queue `name`, a page at a time ([`retry`] per page), newest
/// first. Returns how many were queued again. Each page continues below the previous
/// one's last id, so a call retries each task at most once: one that dies again while
/// the call runs stays dead (its id is above the pages still to come). On a failure the
/// error's message says how many were queued again before it; the others stay dead, so
/// calling again retries the rest.
pub(crate) async fn retry_queue(state: &AppState, name: QueueName) -> Result<u64, ApiError> {
    let filter = ListFilter {
        status: Some(TaskStatus::Dead),
        kind: None,
        queue: Some(name),
        ..ListFilter::default()
    };
    let mut retried = 0u64;
    let partial = |error: ApiError, retried: u64, stuck: u64| {
        let mut outcome = format!(
            "{retried} dead tasks were queued again and the others stay dead; call again to retry them"
        );
        if stuck > 0 {
            outcome.push_str(&format!(
                " ({stuck} of them could not be marked dead again: they stay queued and run \
                 after POST /v1/admin/recover)"
            ));
        }
        error.with_outcome(&outcome)
    };
    let mut cursor = None;
    loop {
        let page = state
            .store
            .list(&filter, RETRY_PAGE, cursor)
            .await
            .map_err(|e| partial(e.into(), retried, 0))?;
        if page.tasks.is_empty() {
            break;
        }
        let ids = page.tasks.iter().map(|t| t.id).collect();
        match retry(state, ids).await {
            Ok(outcomes) => {
                let queued: Vec<&TaskRecord> = outcomes
                    .iter()
                    .filter_map(|o| match o {
                        Outcome::Queued(r) => Some(&**r),
                        _ => None,
                    })
                    .collect();
                retried += queued.len() as u64;
                super::flow::rewait_dependents(state, &queued).await?;
            }
            Err(failed) => {
                return Err(partial(failed.error, retried + failed.queued, failed.stuck));
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(retried)
}

async fn retry_detached(state: &AppState, ids: &[TaskId]) -> Result<Vec<Outcome>, Failed> {
    let now = taskq_core::now();
    let mut outcomes = Vec::with_capacity(ids.len());
    let mut moved: Vec<(usize, StoredTask)> = Vec::new();
    let mut store_error = None;
    for &id in ids {
        match state.store.requeue_dead(id, now).await {
            Ok(RequeueOutcome::Requeued(t)) => {
                moved.push((outcomes.len(), *t));
                outcomes.push(Outcome::NotFound); // replaced below once enqueued
            }
            Ok(RequeueOutcome::NotFound) => outcomes.push(Outcome::NotFound),
            Ok(RequeueOutcome::NotDead(status)) => outcomes.push(Outcome::NotDead(status)),
            Err(e) => {
                store_error = Some(ApiError::from(e));
                break;
            }
        }
    }
    if !moved.is_empty() {
        let items: Vec<EnqueueItem> = moved
            .iter()
            .map(|(_, t)| {
                let mut item = EnqueueItem::from_record(&t.record, t.seq);
                item.due_ms = now.timestamp_millis();
                item
            })
            .collect();
        if let Err(e) = state.broker.enqueue(&items).await {
            let error = ApiError::from(e);
            let stuck = undo(state, moved.into_iter().map(|(_, t)| t).collect()).await;
            return Err(Failed {
                error,
                queued: 0,
                stuck,
            });
        }
    }
    let queued = moved.len() as u64;
    for (i, t) in moved {
        outcomes[i] = Outcome::Queued(Box::new(t.record));
    }
    match store_error {
        Some(error) => Err(Failed {
            error,
            queued,
            stuck: 0,
        }),
        None => Ok(outcomes),
    }
}

/// Takes tasks whose enqueue failed out of Redis and puts their records back to `dead`.
/// Returns how many records could not be put back.
async fn undo(state: &AppState, moved: Vec<StoredTask>) -> u64 {
    let tasks: Vec<_> = moved
        .iter()
        .map(|t| (t.record.queue.clone(), t.record.id))
        .collect();
    // A task absent from Redis (never enqueued, or already run) goes back to `dead` at a
    // seq its own updates override if it ran (see `back_to_dead`).
    let taken = match state.broker.remove(&tasks).await {
        Ok(removed) => removed.taken,
        Err(e) => {
            tracing::warn!(error = %e, count = tasks.len(), "could not remove tasks whose retry enqueue failed");
            Vec::new()
        }
    };
    // A task a worker took already did reach Redis (the reply was lost): it runs (or
    // waits for its retry), so its record is left to follow it instead of going back to
    // `dead`.
    let now = taskq_core::now();
    let reverts: Vec<StatusUpdate> = moved
        .iter()
        .filter(|t| !taken.contains(&t.record.id))
        .map(|t| back_to_dead(t, now))
        .collect();
    match state.store.apply(&reverts).await {
        Ok(()) => 0,
        Err(taskq_store::Error::Rejected(rejected)) => {
            for r in &rejected {
                tracing::error!(task = %r.id, error = %r.message, "could not mark a failed retry dead again; it stays queued until POST /v1/admin/recover");
            }
            rejected.len() as u64
        }
        Err(e) => {
            tracing::error!(error = %e, count = reverts.len(), "could not mark failed retries dead again; they stay queued until POST /v1/admin/recover");
            reverts.len() as u64
        }
    }
}

/// The update that undoes a requeue: `dead` again at `seq` S+1 (above the S the requeue
/// left, and the S the enqueue carried), with the attempts and finish time of the death
/// the retry undid (its last `dead` event).
fn back_to_dead(t: &StoredTask, now: chrono::DateTime<chrono::Utc>) -> StatusUpdate {
    let death = t
        .record
        .events
        .iter()
        .rev()
        .find(|e| e.status == TaskStatus::Dead);
    let attempts = death.map_or(t.record.attempts, |e| e.attempt);
    StatusUpdate::transition(t.record.id, t.seq + 1, TaskStatus::Dead, attempts, now)
        .event_error("the retry failed: the task could not be queued in redis")
        .finished_at(death.map_or(now, |e| e.at))
}
