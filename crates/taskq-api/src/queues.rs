//! Queue endpoints: state counts, pause and resume, limits, dead-letter operations and
//! recovery. All need the `admin` role.
//!
//! Each handler's `#[utoipa::path]` is its contract in `/openapi.json`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use taskq_core::{QueueName, TaskStatus};
use taskq_redis::{KeyLoad, QueueLimits};
use utoipa::ToSchema;

use crate::extract::{JsonBody, PathParam};

use crate::AppState;
use crate::error::{
    ApiError, ErrorBody, ErrorCode, JsonBodyErrors, QueueNameErrors, StoresUnavailable,
};
use crate::transitions::{recover, retry};

/// Tasks per state in one queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    pub dead: u64,
}

/// One queue as `GET /v1/queues` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueInfo {
    pub name: QueueName,
    pub paused: bool,
    pub counts: Counts,
    /// Attempts that succeeded in the last 60 seconds.
    pub processed_1m: u64,
    /// Attempts that failed in the last 60 seconds.
    pub failed_1m: u64,
    /// Dispatch limits enforced across all workers.
    pub limits: QueueLimits,
    /// The queue's task keys.
    pub keys: KeysInfo,
}

/// The task keys of a queue (see the README's "Keys: ordered and fair work").
#[derive(Debug, Serialize, ToSchema)]
pub struct KeysInfo {
    /// Keys with at least one task in Redis (queued, scheduled, retrying or running).
    pub active: u64,
    /// The keys with the most tasks in Redis, busiest first (at most
    /// [`BUSIEST_KEYS`]).
    pub busiest: Vec<KeyLoad>,
}

/// How many of the busiest keys a queue shows.
pub const BUSIEST_KEYS: usize = 10;

async fn info(state: &AppState, name: QueueName) -> Result<QueueInfo, ApiError> {
    let (live, paused, (processed_1m, failed_1m), stored, limits, busiest) = tokio::try_join!(
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
        async {
            state
                .broker
                .busiest_keys(&name, BUSIEST_KEYS)
                .await
                .map_err(ApiError::from)
        },
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
        keys: KeysInfo {
            active: live.active_keys,
            busiest,
        },
    })
}

/// A queue name from the path, which must name a known queue.
async fn known(state: &AppState, name: &str) -> Result<QueueName, ApiError> {
    let name: QueueName = name
        .parse()
        .map_err(|e: taskq_core::queue::InvalidQueueName| {
            ApiError::bad_request(ErrorCode::InvalidQueue, e.to_string())
        })?;
    if state.broker.queues().await?.contains(&name) {
        Ok(name)
    } else {
        Err(ApiError::not_found(format!("no queue {name}")))
    }
}

/// The answer of `GET /v1/queues`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

/// The answer of `POST /v1/queues/{name}/retry-dead`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    /// Dead tasks queued again.
    pub retried: u64,
}

/// The answer of `POST /v1/queues/{name}/purge-dead`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    /// Dead tasks deleted.
    pub purged: u64,
}

/// The answer of `POST /v1/admin/recover`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recovered {
    /// Unfinished tasks Redis lacked, enqueued again.
    pub enqueued: u64,
    /// Unfinished tasks Redis still held (left alone).
    pub already_present: u64,
}

/// `GET /v1/queues`: every queue that has received a task.
#[utoipa::path(
    get,
    path = "/v1/queues",
    operation_id = "list_queues",
    tag = "queues",
    responses(
        (status = 200, description = "Every queue that has received a task (or limits).", body = QueueList),
        StoresUnavailable,
    ),
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<QueueList>, ApiError> {
    let names = state.broker.queues().await?;
    let queues = futures::future::try_join_all(names.into_iter().map(|n| info(&state, n))).await?;
    Ok(Json(QueueList { queues }))
}

/// `GET /v1/queues/{name}`.
#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    operation_id = "get_queue",
    tag = "queues",
    params(("name" = QueueName, Path, description = "The queue's name.")),
    responses(
        (status = 200, description = "The queue.", body = QueueInfo),
        QueueNameErrors,
        StoresUnavailable,
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name = known(&state, &name).await?;
    Ok(Json(info(&state, name).await?))
}

/// `POST /v1/queues/{name}/pause`: workers stop taking its tasks; submissions continue.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/pause",
    operation_id = "pause_queue",
    tag = "queues",
    params(("name" = QueueName, Path, description = "The queue's name.")),
    responses(
        (status = 200, description = "The queue, now paused.", body = QueueInfo),
        QueueNameErrors,
        StoresUnavailable,
    ),
)]
pub async fn pause(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name = known(&state, &name).await?;
    state.broker.pause(&name).await?;
    Ok(Json(info(&state, name).await?))
}

/// `POST /v1/queues/{name}/resume`.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/resume",
    operation_id = "resume_queue",
    tag = "queues",
    params(("name" = QueueName, Path, description = "The queue's name.")),
    responses(
        (status = 200, description = "The queue, no longer paused.", body = QueueInfo),
        QueueNameErrors,
        StoresUnavailable,
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name = known(&state, &name).await?;
    state.broker.resume(&name).await?;
    Ok(Json(info(&state, name).await?))
}

/// `PUT /v1/queues/{name}/limits`: sets the queue's dispatch limits (`null` or absent
/// fields clear them). The queue need not have tasks yet.
#[utoipa::path(
    put,
    path = "/v1/queues/{name}/limits",
    operation_id = "set_queue_limits",
    tag = "queues",
    params(("name" = QueueName, Path, description = "The queue's name.")),
    request_body = QueueLimits,
    responses(
        (status = 200, description = "The queue with its new limits.", body = QueueInfo),
        (status = 400, description = "An invalid queue name (`invalid_queue`), malformed JSON (`invalid_json`), wrong shape (`invalid_request`) or a value out of range (`invalid_field`).", body = ErrorBody),
        JsonBodyErrors,
        StoresUnavailable,
    ),
)]
pub async fn set_limits(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
    JsonBody(limits): JsonBody<QueueLimits>,
) -> Result<Json<QueueInfo>, ApiError> {
    let name: QueueName = name
        .parse()
        .map_err(|e: taskq_core::queue::InvalidQueueName| {
            ApiError::bad_request(ErrorCode::InvalidQueue, e.to_string())
        })?;
    let invalid = |m: &str| Err(ApiError::bad_request(ErrorCode::InvalidField, m));
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
    if limits
        .max_running_per_key
        .is_some_and(|c| !(1..=1_000_000).contains(&c))
    {
        return invalid("`max_running_per_key` must be 1 to 1000000");
    }
    if let Some(r) = limits.max_dispatches_per_second_per_key
        && !(r.is_finite() && r > 0.0 && r <= 1_000_000.0)
    {
        return invalid("`max_dispatches_per_second_per_key` must be above 0 and at most 1000000");
    }
    if limits.burst_per_key.is_some() && limits.max_dispatches_per_second_per_key.is_none() {
        return invalid("`burst_per_key` needs `max_dispatches_per_second_per_key`");
    }
    if limits
        .burst_per_key
        .is_some_and(|b| !(1..=1_000_000).contains(&b))
    {
        return invalid("`burst_per_key` must be 1 to 1000000");
    }
    state.broker.set_limits(&name, &limits).await?;
    Ok(Json(info(&state, name).await?))
}

/// `POST /v1/queues/{name}/retry-dead`: runs every dead task of the queue again.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/retry-dead",
    operation_id = "retry_dead",
    tag = "queues",
    params(("name" = QueueName, Path, description = "The queue's name.")),
    responses(
        (status = 200, description = "How many dead tasks were queued again.", body = Retried),
        QueueNameErrors,
        (status = 503, description = "Redis or MongoDB is unavailable, or the request timed out. The message says how many tasks were queued again; the others stay dead, so calling again retries the rest.", body = ErrorBody),
    ),
)]
pub async fn retry_dead(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Retried>, ApiError> {
    let name = known(&state, &name).await?;
    let retried = retry::retry_queue(&state, name).await?;
    Ok(Json(Retried { retried }))
}

/// `POST /v1/queues/{name}/purge-dead`: deletes every dead task of the queue.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/purge-dead",
    operation_id = "purge_dead",
    tag = "queues",
    params(("name" = QueueName, Path, description = "The queue's name.")),
    responses(
        (status = 200, description = "How many dead tasks were deleted.", body = Purged),
        QueueNameErrors,
        StoresUnavailable,
    ),
)]
pub async fn purge_dead(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Purged>, ApiError> {
    let name = known(&state, &name).await?;
    let purged = state
        .store
        .delete_by_status(&name, TaskStatus::Dead)
        .await?;
    Ok(Json(Purged { purged }))
}

/// `POST /v1/admin/recover`: rebuilds Redis from MongoDB after Redis lost its data. Every
/// unfinished task is enqueued again with its schedule; tasks Redis still holds are left
/// alone, so running it twice, or on a healthy Redis, duplicates nothing.
#[utoipa::path(
    post,
    path = "/v1/admin/recover",
    operation_id = "recover",
    tag = "admin",
    responses(
        (status = 200, description = "What was enqueued again.", body = Recovered),
        (status = 503, description = "Redis or MongoDB is unavailable, or the request timed out; calling again is safe.", body = ErrorBody),
    ),
)]
pub async fn recover(State(state): State<AppState>) -> Result<Json<Recovered>, ApiError> {
    let (enqueued, already_present) = recover::recover(&state).await?;
    Ok(Json(Recovered {
        enqueued,
        already_present,
    }))
}
