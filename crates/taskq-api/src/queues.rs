//! Queue endpoints: state counts, pause and resume, and dead-letter operations.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use serde_json::{Value, json};
use taskq_core::{QueueName, TaskStatus};
use taskq_redis::{EnqueueItem, Limits};

use crate::extract::JsonBody;
use taskq_store::{ListFilter, RequeueOutcome};

use crate::AppState;
use crate::error::ApiError;

/// Tasks per state in one queue.
#[derive(Debug, Serialize)]
pub struct Counts {
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    pub dead: u64,
}

/// One queue as `GET /v1/queues` shows it.
#[derive(Debug, Serialize)]
pub struct QueueInfo {
    pub name: QueueName,
    pub paused: bool,
    pub counts: Counts,
    /// Attempts that succeeded in the last 60 seconds.
    pub processed_1m: u64,
    /// Attempts that failed in the last 60 seconds.
    pub failed_1m: u64,
    /// Dispatch limits enforced across all workers.
    pub limits: Limits,
}

async fn info(state: &AppState, name: QueueName) -> Result<QueueInfo, ApiError> {
    let (live, paused, (processed_1m, failed_1m), stored, limits) = tokio::try_join!(
        async { state.broker.counts(&name).await.map_err(ApiError::from) },
        async { state.broker.is_paused(&name).await.map_err(ApiError::from) },
        async {
            state
                .broker
                .finished_last_minute(&name)
                .await
                .map_err(ApiError::from)
        },
        async {
            state
                .store
                .count_by_status(Some(&name))
                .await
                .map_err(ApiError::from)
        },
        async { state.broker.limits(&name).await.map_err(ApiError::from) },
    )?;
    Ok(QueueInfo {
        counts: Counts {
            scheduled: live.scheduled,
            queued: live.queued,
            running: live.running,
            retrying: live.retrying,
            dead: stored.get(&TaskStatus::Dead).copied().unwrap_or(0),
        },
        name,
        paused,
        processed_1m,
        failed_1m,
        limits,
    })
}

/// A queue name from the path, which must name a known queue.
async fn known(state: &AppState, name: &str) -> Result<QueueName, ApiError> {
    let name: QueueName = name
        .parse()
        .map_err(|e: taskq_core::queue::InvalidQueueName| {
            ApiError::bad_request("invalid_queue", e.to_string())
        })?;
    if state.broker.queues().await?.contains(&name) {
        Ok(name)
    } else {
        Err(ApiError::not_found(format!("no queue {name}")))
    }
}

/// `GET /v1/queues`: every queue that has received a task.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let names = state.broker.queues().await?;
    let infos = futures::future::try_join_all(names.into_iter().map(|n| info(&state, n))).await?;
    Ok(Json(json!({"queues": infos})))
}

/// `GET /v1/queues/{name}`.
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name = known(&state, &name).await?;
    Ok(Json(info(&state, name).await?))
}

/// `POST /v1/queues/{name}/pause`: workers stop taking its tasks; submissions continue.
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name = known(&state, &name).await?;
    state.broker.pause(&name).await?;
    Ok(Json(info(&state, name).await?))
}

/// `POST /v1/queues/{name}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name = known(&state, &name).await?;
    state.broker.resume(&name).await?;
    Ok(Json(info(&state, name).await?))
}

/// `PUT /v1/queues/{name}/limits`: sets the queue's dispatch limits (`null` or absent
/// fields clear them). The queue need not have tasks yet.
pub async fn set_limits(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(limits): JsonBody<Limits>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name: QueueName = name
        .parse()
        .map_err(|e: taskq_core::queue::InvalidQueueName| {
            ApiError::bad_request("invalid_queue", e.to_string())
        })?;
    let invalid = |m: &str| Err(ApiError::bad_request("invalid_field", m));
    if let Some(r) = limits.max_dispatches_per_second
        && !(r.is_finite() && r > 0.0 && r <= 1_000_000.0)
    {
        return invalid("`max_dispatches_per_second` must be above 0 and at most 1000000");
    }
    if limits.burst.is_some() && limits.max_dispatches_per_second.is_none() {
        return invalid("`burst` needs `max_dispatches_per_second`");
    }
    if limits.burst.is_some_and(|b| !(1..=1_000_000).contains(&b)) {
        return invalid("`burst` must be 1 to 1000000");
    }
    if limits
        .max_concurrent
        .is_some_and(|c| !(1..=1_000_000).contains(&c))
    {
        return invalid("`max_concurrent` must be 1 to 1000000");
    }
    state.broker.set_limits(&name, &limits).await?;
    Ok(Json(info(&state, name).await?))
}

/// `POST /v1/queues/{name}/retry-dead`: runs every dead task of the queue again.
pub async fn retry_dead(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = known(&state, &name).await?;
    let filter = ListFilter {
        status: Some(TaskStatus::Dead),
        kind: None,
        queue: Some(name),
    };
    let mut retried = 0u64;
    loop {
        // Each retried task leaves the dead set, so the first page is always the next one.
        let page = state.store.list(&filter, 500, None).await?;
        if page.tasks.is_empty() {
            break;
        }
        let now = taskq_core::now();
        let mut items = Vec::with_capacity(page.tasks.len());
        for t in &page.tasks {
            if let RequeueOutcome::Requeued(stored) = state.store.requeue_dead(t.id, now).await? {
                let mut item = EnqueueItem::from_record(&stored.record, stored.seq);
                item.due_ms = now.timestamp_millis();
                items.push(item);
            }
        }
        retried += items.len() as u64;
        state.broker.enqueue(&items).await?;
    }
    Ok(Json(json!({"retried": retried})))
}

/// `POST /v1/queues/{name}/purge-dead`: deletes every dead task of the queue.
pub async fn purge_dead(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = known(&state, &name).await?;
    let purged = state
        .store
        .delete_by_status(&name, TaskStatus::Dead)
        .await?;
    Ok(Json(json!({"purged": purged})))
}

/// `POST /v1/admin/recover`: rebuilds Redis from MongoDB after Redis lost its data. Every
/// unfinished task is enqueued again with its schedule; tasks Redis still holds are left
/// alone, so running it twice, or on a healthy Redis, duplicates nothing.
pub async fn recover(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut after = None;
    let (mut enqueued, mut present) = (0u64, 0u64);
    loop {
        let batch = state.store.unfinished(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.record.id);
        let items: Vec<EnqueueItem> = batch
            .iter()
            .map(|t| {
                let mut item = EnqueueItem::from_record(&t.record, t.seq + 1);
                if t.record.status == TaskStatus::Running {
                    // Its attempt was lost with Redis; it runs again now.
                    item.due_ms = taskq_core::now_ms();
                }
                item
            })
            .collect();
        for added in state.broker.enqueue(&items).await? {
            if added {
                enqueued += 1;
            } else {
                present += 1;
            }
        }
    }
    tracing::info!(enqueued, already_present = present, "recovery finished");
    Ok(Json(
        json!({"enqueued": enqueued, "already_present": present}),
    ))
}
