//! Queue endpoints: state counts, pause and resume, limits, dead-letter operations and
//! recovery. All need the `admin` role.
//!
//! Each handler's `#[utoipa::path]` is its contract in `/openapi.json`.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde::Serialize;
use taskq_core::{QueueName, TaskStatus};
use taskq_redis::{Broker, BrokerError, KeyLoad, QueueLimits};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{JsonBody, PathParam};

use crate::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode, JsonResult, QueueNameErrors};
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

/// The path of the operations on one queue, `/v1/queues/{name}/...` (the document's
/// parameter; handlers take [`KnownQueue`] or [`PathParam`]`<QueueName>`).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "only documents the parameter the handlers extract"
)]
pub struct QueuePath {
    /// The queue's name.
    pub name: QueueName,
}

/// The queue the path names, which must have received a task: `invalid_queue` when the
/// name is malformed, 404 when it is unknown.
#[derive(Debug)]
pub struct KnownQueue(pub QueueName);

impl KnownQueue {
    /// `name`, when it is a known queue (404 otherwise).
    pub async fn check(state: &AppState, name: QueueName) -> Result<Self, ApiError> {
        if state.broker.queues().await?.contains(&name) {
            Ok(KnownQueue(name))
        } else {
            Err(ApiError::not_found(format!("no queue {name}")))
        }
    }

    /// Runs `change` on the queue, then answers with the queue as it is after it.
    async fn apply(
        self,
        state: &AppState,
        change: impl AsyncFnOnce(&Broker, &QueueName) -> Result<(), BrokerError>,
    ) -> JsonResult<QueueInfo> {
        change(&state.broker, &self.0).await?;
        Ok(Json(info(state, self.0).await?))
    }
}

impl FromRequestParts<AppState> for KnownQueue {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let PathParam(name) = PathParam::from_request_parts(parts, state).await?;
        KnownQueue::check(state, name).await
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
    /// Dead tasks queued again (each at most once per call).
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
    /// Unfinished records whose tasks had just run to their end in Redis, their final
    /// updates on their way to MongoDB (left alone).
    pub finishing: u64,
}

/// `GET /v1/queues`: every queue that has received a task.
#[utoipa::path(
    get, path = "/v1/queues", operation_id = "list_queues",
    responses((status = 200, description = "Every queue that has received a task (or limits).", body = QueueList)),
)]
pub async fn list(State(state): State<AppState>) -> JsonResult<QueueList> {
    let names = state.broker.queues().await?;
    let queues = futures::future::try_join_all(names.into_iter().map(|n| info(&state, n))).await?;
    Ok(Json(QueueList { queues }))
}

/// `GET /v1/queues/{name}`.
#[utoipa::path(
    get, path = "/v1/queues/{name}", operation_id = "get_queue", params(QueuePath),
    responses((status = 200, description = "The queue.", body = QueueInfo), QueueNameErrors),
)]
pub async fn get(State(state): State<AppState>, queue: KnownQueue) -> JsonResult<QueueInfo> {
    Ok(Json(info(&state, queue.0).await?))
}

/// `POST /v1/queues/{name}/pause`: workers stop taking its tasks; submissions continue.
#[utoipa::path(
    post, path = "/v1/queues/{name}/pause", operation_id = "pause_queue", params(QueuePath),
    responses((status = 200, description = "The queue, now paused.", body = QueueInfo), QueueNameErrors),
)]
pub async fn pause(State(state): State<AppState>, queue: KnownQueue) -> JsonResult<QueueInfo> {
    queue.apply(&state, Broker::pause).await
}

/// `POST /v1/queues/{name}/resume`.
#[utoipa::path(
    post, path = "/v1/queues/{name}/resume", operation_id = "resume_queue", params(QueuePath),
    responses((status = 200, description = "The queue, no longer paused.", body = QueueInfo), QueueNameErrors),
)]
pub async fn resume(State(state): State<AppState>, queue: KnownQueue) -> JsonResult<QueueInfo> {
    queue.apply(&state, Broker::resume).await
}

/// `PUT /v1/queues/{name}/limits`: sets the queue's dispatch limits (`null` or absent
/// fields clear them). The queue need not have tasks yet.
#[utoipa::path(
    put, path = "/v1/queues/{name}/limits", operation_id = "set_queue_limits", params(QueuePath),
    request_body = QueueLimits,
    responses(
        (status = 200, description = "The queue with its new limits.", body = QueueInfo),
        (status = 400, description = "An invalid queue name (`invalid_queue`), malformed JSON (`invalid_json`), wrong shape (`invalid_request`) or a value out of range (`invalid_field`).", body = ErrorBody),
    ),
)]
pub async fn set_limits(
    State(state): State<AppState>,
    PathParam(name): PathParam<QueueName>,
    JsonBody(limits): JsonBody<QueueLimits>,
) -> JsonResult<QueueInfo> {
    check_limits(&limits).map_err(|m| ApiError::bad_request(ErrorCode::InvalidField, m))?;
    state.broker.set_limits(&name, &limits).await?;
    Ok(Json(info(&state, name).await?))
}

/// The largest rate, burst and count a queue's limits take.
const MAX_LIMIT: u32 = 1_000_000;

/// Checks each of `limits` in turn; the first that is out of range, or a burst without its
/// rate, is named in the message.
fn check_limits(limits: &QueueLimits) -> Result<(), String> {
    let rate = |field: &str, rate: Option<f64>| match rate {
        Some(r) if !(r.is_finite() && r > 0.0 && r <= f64::from(MAX_LIMIT)) => {
            Err(format!("`{field}` must be above 0 and at most {MAX_LIMIT}"))
        }
        _ => Ok(()),
    };
    let count = |field: &str, count: Option<u32>| match count {
        Some(c) if !(1..=MAX_LIMIT).contains(&c) => {
            Err(format!("`{field}` must be 1 to {MAX_LIMIT}"))
        }
        _ => Ok(()),
    };
    // A burst is a count that only means something beside its rate.
    let burst = |field: &str, burst: Option<u32>, rate_field: &str, rate: Option<f64>| {
        if burst.is_some() && rate.is_none() {
            return Err(format!("`{field}` needs `{rate_field}`"));
        }
        count(field, burst)
    };
    let (per_queue, per_key) = (
        "max_dispatches_per_second",
        "max_dispatches_per_second_per_key",
    );
    rate(per_queue, limits.max_dispatches_per_second)?;
    burst(
        "burst",
        limits.burst,
        per_queue,
        limits.max_dispatches_per_second,
    )?;
    count("max_concurrent", limits.max_concurrent)?;
    count("max_running_per_key", limits.max_running_per_key)?;
    rate(per_key, limits.max_dispatches_per_second_per_key)?;
    burst(
        "burst_per_key",
        limits.burst_per_key,
        per_key,
        limits.max_dispatches_per_second_per_key,
    )
}

/// `POST /v1/queues/{name}/retry-dead`: runs every dead task of the queue again, each
/// once: a task that dies again while the call runs stays dead.
#[utoipa::path(
    post, path = "/v1/queues/{name}/retry-dead", operation_id = "retry_dead", params(QueuePath),
    responses(
        (status = 200, description = "How many dead tasks were queued again: each task dead when the call began at most once (one that dies again while the call runs stays dead).", body = Retried),
        QueueNameErrors,
        (status = 503, description = "Redis or MongoDB is unavailable, or the request timed out. The message says how many tasks were queued again; the others stay dead, so calling again retries the rest.", body = ErrorBody),
    ),
)]
pub async fn retry_dead(State(state): State<AppState>, queue: KnownQueue) -> JsonResult<Retried> {
    let retried = retry::retry_queue(&state, queue.0).await?;
    Ok(Json(Retried { retried }))
}

/// `POST /v1/queues/{name}/purge-dead`: deletes every dead task of the queue.
#[utoipa::path(
    post, path = "/v1/queues/{name}/purge-dead", operation_id = "purge_dead", params(QueuePath),
    responses((status = 200, description = "How many dead tasks were deleted.", body = Purged), QueueNameErrors),
)]
pub async fn purge_dead(State(state): State<AppState>, queue: KnownQueue) -> JsonResult<Purged> {
    let purged = state
        .store
        .delete_by_status(&queue.0, TaskStatus::Dead)
        .await?;
    Ok(Json(Purged { purged }))
}

/// `POST /v1/admin/recover`: rebuilds Redis from MongoDB after Redis lost its data. Every
/// unfinished task is enqueued again with its schedule; tasks Redis still holds, and
/// those that just ran to their end there (their final updates on the way to MongoDB),
/// are left alone, so running it twice, or on a healthy Redis, duplicates nothing.
#[utoipa::path(
    post, path = "/v1/admin/recover", operation_id = "recover",
    responses(
        (status = 200, description = "What was enqueued again.", body = Recovered),
        (status = 503, description = "Redis or MongoDB is unavailable, a queue's outbox holds more updates than can be read to tell which tasks ran, or the request timed out; calling again is safe.", body = ErrorBody),
    ),
)]
pub async fn recover(State(state): State<AppState>) -> JsonResult<Recovered> {
    let done = recover::recover(&state).await?;
    Ok(Json(Recovered {
        enqueued: done.enqueued,
        already_present: done.present,
        finishing: done.finishing,
    }))
}
