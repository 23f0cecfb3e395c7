//! Task endpoints: submit (single and batch), get, list and retry.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use taskq_core::{NewTask, TaskId, TaskRecord, TaskStatus};
use taskq_redis::{CancelOutcome, EnqueueItem};
use taskq_store::{ListFilter, RequeueOutcome, StatusUpdate};

use taskq_telemetry::metrics::Metrics;
use tracing::Instrument;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};

/// `POST /v1/tasks`: validates, writes the record, enqueues, answers 201 with it. With an
/// idempotency key (the `Idempotency-Key` header or the `idempotency_key` field) a repeat
/// within the retention window answers 200 with the original task and writes nothing.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<NewTask>,
) -> Result<Response, ApiError> {
    if let Some(h) = headers.get("idempotency-key") {
        let h = h
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid_field", "`Idempotency-Key` is not ASCII"))?
            .to_owned();
        match &req.idempotency_key {
            Some(k) if *k != h => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    "`Idempotency-Key` and `idempotency_key` differ",
                ));
            }
            _ => req.idempotency_key = Some(h),
        }
    }
    let rec = state
        .limits
        .admit(req, taskq_core::now(), traceparent(&headers))?;
    let (status, rec) = if rec.idempotency_key.is_some() {
        submit_idempotent(&state, rec).await?
    } else {
        persist(&state, std::slice::from_ref(&rec)).await?;
        (StatusCode::CREATED, rec)
    };
    let location = format!("/v1/tasks/{}", rec.id);
    Ok((status, [(header::LOCATION, location)], Json(rec)).into_response())
}

/// Submits a task with an idempotency key. The unique index on (queue, key) decides
/// between concurrent submits on any number of api replicas: exactly one insert wins, the
/// others answer with its task.
async fn submit_idempotent(
    state: &AppState,
    rec: TaskRecord,
) -> Result<(StatusCode, TaskRecord), ApiError> {
    let Some(key) = rec.idempotency_key.clone() else {
        return Err(ApiError::internal(&"submit_idempotent without a key"));
    };
    let expired_before = rec.created_at
        - chrono::Duration::from_std(state.idempotency_ttl).unwrap_or(chrono::Duration::days(1));
    for _ in 0..3 {
        if let Some(existing) = state
            .store
            .find_by_idempotency_key(&rec.queue, &key)
            .await?
        {
            if existing.record.created_at >= expired_before {
                return Ok((StatusCode::OK, existing.record));
            }
            // Its retention is over: the key may be used again.
            state
                .store
                .release_idempotency_key(&rec.queue, &key, expired_before)
                .await?;
        }
        match persist(state, std::slice::from_ref(&rec)).await {
            Ok(()) => return Ok((StatusCode::CREATED, rec)),
            // Another submit with the same key won the race: answer with its task.
            Err(PersistError::Duplicate) => continue,
            Err(PersistError::Api(e)) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        "the idempotency key is being used by a concurrent submit; retry",
    ))
}

/// Why [`persist`] failed.
#[derive(Debug)]
enum PersistError {
    /// A record with the same idempotency key exists; nothing was written.
    Duplicate,
    Api(ApiError),
}

impl From<PersistError> for ApiError {
    fn from(e: PersistError) -> Self {
        match e {
            PersistError::Duplicate => {
                ApiError::conflict("a task with this idempotency key was submitted concurrently")
            }
            PersistError::Api(e) => e,
        }
    }
}

/// Writes records to MongoDB, then to Redis, inside a `task.enqueue` span.
/// When Redis fails the records are removed again, so no task whose submit was answered
/// with an error ever runs.
async fn persist(state: &AppState, recs: &[TaskRecord]) -> Result<(), PersistError> {
    let span = tracing::info_span!(
        "task.enqueue",
        task.count = recs.len(),
        task.id = recs.first().map(|r| r.id.to_string()).unwrap_or_default(),
        task.queue = recs.first().map(|r| r.queue.to_string()).unwrap_or_default(),
        task.type = recs.first().map(|r| r.kind.clone()).unwrap_or_default(),
    );
    persist_inner(state, recs).instrument(span).await
}

async fn persist_inner(state: &AppState, recs: &[TaskRecord]) -> Result<(), PersistError> {
    let inserted = match recs {
        [] => return Ok(()),
        [one] => state.store.insert(one).await,
        many => state.store.insert_many(many).await,
    };
    match inserted {
        Ok(()) => {}
        Err(e) if e.is_duplicate_key() && recs.len() == 1 => return Err(PersistError::Duplicate),
        Err(e) => {
            // An unordered insert_many may have written some records: remove them, so
            // recovery never runs a task whose submit failed.
            if recs.len() > 1 {
                let ids: Vec<TaskId> = recs.iter().map(|r| r.id).collect();
                if let Err(undo) = state.store.delete(&ids).await {
                    tracing::error!(error = %undo, count = ids.len(), "could not remove records of a failed batch insert");
                }
            }
            return Err(PersistError::Api(e.into()));
        }
    }
    let items: Vec<EnqueueItem> = recs
        .iter()
        .map(|r| EnqueueItem::from_record(r, 1))
        .collect();
    if let Err(e) = state.broker.enqueue(&items).await {
        // Part of the batch may be in Redis (another queue's script, or a lost reply):
        // take it out before the records go, so nothing answered with an error runs.
        let tasks: Vec<_> = recs.iter().map(|r| (r.queue.clone(), r.id)).collect();
        if let Err(undo) = state.broker.remove(&tasks).await {
            tracing::error!(error = %undo, count = tasks.len(), "could not remove tasks whose enqueue failed");
        }
        let ids: Vec<TaskId> = recs.iter().map(|r| r.id).collect();
        if let Err(undo) = state.store.delete(&ids).await {
            tracing::error!(error = %undo, count = ids.len(), "could not remove records whose enqueue failed");
        }
        return Err(PersistError::Api(e.into()));
    }
    for r in recs {
        state
            .metrics
            .submitted
            .get_or_create(&Metrics::task(r.queue.as_str(), &r.kind))
            .inc();
    }
    Ok(())
}

/// The body of `POST /v1/tasks/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub tasks: Vec<Value>,
}

/// One item's outcome in a batch answer.
#[derive(Debug, Serialize)]
pub struct BatchItem {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<TaskId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// Set when an idempotency key matched an earlier task, whose id is reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// `POST /v1/tasks/batch`: every valid item is accepted (one `insert_many`, one enqueue
/// script call per queue), every invalid one is reported by index. 201 when all were
/// accepted, 207 when some were, 400 when none was.
pub async fn submit_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    if req.tasks.is_empty() {
        return Err(ApiError::bad_request("invalid_request", "`tasks` is empty"));
    }
    if req.tasks.len() > state.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} tasks in one batch; the limit is {} (TASKQ_MAX_BATCH)",
                req.tasks.len(),
                state.max_batch
            ),
        ));
    }
    let now = taskq_core::now();
    let tp = traceparent(&headers);
    let mut accepted = Vec::new();
    let mut items = Vec::with_capacity(req.tasks.len());
    for (index, raw) in req.tasks.into_iter().enumerate() {
        let admitted = serde_json::from_value::<NewTask>(raw)
            .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
            .and_then(|t| {
                state
                    .limits
                    .admit(t, now, tp.clone())
                    .map_err(ApiError::from)
            });
        items.push(match admitted {
            Ok(rec) => {
                let item = BatchItem {
                    index,
                    id: Some(rec.id),
                    status: Some(rec.status),
                    error: None,
                    duplicate: None,
                };
                accepted.push(rec);
                item
            }
            Err(e) => BatchItem {
                index,
                id: None,
                status: None,
                error: Some(e.body()["error"].clone()),
                duplicate: None,
            },
        });
    }
    // Items with an idempotency key go through the single-submit path, one by one, so
    // each key is checked; the rest are written together.
    let (keyed, plain): (Vec<TaskRecord>, Vec<TaskRecord>) = accepted
        .into_iter()
        .partition(|r| r.idempotency_key.is_some());
    persist(&state, &plain).await?;
    let mut accepted = plain;
    for rec in keyed {
        let id = rec.id;
        let (_, stored) = submit_idempotent(&state, rec).await?;
        if stored.id != id {
            // A repeat: report the original task in place of the new id.
            if let Some(item) = items.iter_mut().find(|i| i.id == Some(id)) {
                item.id = Some(stored.id);
                item.status = Some(stored.status);
                item.duplicate = Some(true);
            }
        }
        accepted.push(stored);
    }
    let rejected = items.len() - accepted.len();
    let status = match (accepted.len(), rejected) {
        (_, 0) => StatusCode::CREATED,
        (0, _) => StatusCode::BAD_REQUEST,
        _ => StatusCode::MULTI_STATUS,
    };
    let mut body = json!({
        "accepted": accepted.len(),
        "rejected": rejected,
        "results": items,
    });
    if accepted.is_empty() {
        body["error"] = json!({"code": "invalid_request", "message": "no task in the batch is valid; see `results`"});
    }
    Ok((status, Json(body)).into_response())
}

/// `GET /v1/tasks/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    let id = parse_id(&id)?;
    match state.store.get(id).await? {
        Some(t) => Ok(Json(t.record)),
        None => Err(ApiError::not_found(format!("no task {id}"))),
    }
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Largest page.
pub const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 50;

/// `GET /v1/tasks`: newest first, filtered, paginated by an opaque cursor.
pub async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_query", m);
    let status = q
        .status
        .map(|s| s.parse::<TaskStatus>().map_err(|e| invalid(e.to_string())))
        .transpose()?;
    let queue = q
        .queue
        .map(|s| {
            s.parse()
                .map_err(|e: taskq_core::queue::InvalidQueueName| invalid(e.to_string()))
        })
        .transpose()?;
    if let Some(k) = &q.kind
        && (k.is_empty() || k.len() > taskq_core::validate::MAX_TYPE_LEN)
    {
        return Err(invalid("`type` must be 1-128 characters".into()));
    }
    let limit = match q.limit {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| invalid(format!("`limit` must be an integer from 1 to {MAX_PAGE}")))?,
    };
    let cursor = q
        .cursor
        .map(|c| {
            c.parse::<TaskId>()
                .map_err(|_| invalid("`cursor` is not a cursor from a previous page".into()))
        })
        .transpose()?;
    let filter = ListFilter {
        status,
        kind: q.kind,
        queue,
    };
    let page = state.store.list(&filter, limit, cursor).await?;
    Ok(Json(
        json!({"tasks": page.tasks, "next_cursor": page.next_cursor}),
    ))
}

/// `POST /v1/tasks/{id}/retry`: runs a dead task again from its first attempt.
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    let id = parse_id(&id)?;
    let now = taskq_core::now();
    let stored = match state.store.requeue_dead(id, now).await? {
        RequeueOutcome::Requeued(t) => t,
        RequeueOutcome::NotFound => return Err(ApiError::not_found(format!("no task {id}"))),
        RequeueOutcome::NotDead(status) => {
            return Err(ApiError::conflict(format!(
                "task {id} is {status}; only dead tasks can be retried"
            )));
        }
    };
    let mut item = EnqueueItem::from_record(&stored.record, stored.seq);
    item.due_ms = now.timestamp_millis();
    if let Err(e) = state.broker.enqueue(std::slice::from_ref(&item)).await {
        // Put the record back to dead so the client can simply retry the call.
        let revert = StatusUpdate::new(id, stored.seq + 1, TaskStatus::Dead, 0, taskq_core::now());
        if let Err(undo) = state.store.apply(std::slice::from_ref(&revert)).await {
            tracing::error!(error = %undo, task = %id, "could not mark a failed retry dead again");
        }
        return Err(e.into());
    }
    Ok(Json(stored.record))
}

fn parse_id(s: &str) -> Result<TaskId, ApiError> {
    s.parse().map_err(|e: taskq_core::id::InvalidTaskId| {
        ApiError::bad_request("invalid_id", e.to_string())
    })
}

/// The trace context stored with new tasks: the request span's when traces are
/// exported (so attempts become its children), otherwise the caller's well-formed
/// `traceparent`, passed through unchanged.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    if let Some(tp) = taskq_telemetry::traceparent(&tracing::Span::current()) {
        return Some(tp);
    }
    let v = headers.get("traceparent")?.to_str().ok()?.trim();
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2);
    ok.then(|| v.to_owned())
}

/// `POST /v1/tasks/{id}/cancel`: a waiting task is cancelled at once (200); a running
/// one has its handler signalled and ends `cancelled` shortly (202); a finished one is a
/// conflict (409).
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Some(stored) = state.store.get(id).await? else {
        return Err(ApiError::not_found(format!("no task {id}")));
    };
    let status = stored.record.status;
    if status.is_final() {
        return Err(ApiError::conflict(format!("task {id} is already {status}")));
    }
    let now = taskq_core::now();
    let seq = match state.broker.cancel(&stored.record.queue, id).await? {
        CancelOutcome::Signalled => {
            return Ok((StatusCode::ACCEPTED, Json(stored.record)).into_response());
        }
        CancelOutcome::Cancelled { seq } => seq,
        // Not in Redis (e.g. Redis lost it): the record alone decides.
        CancelOutcome::NotFound => stored.seq + 1,
    };
    let update = StatusUpdate {
        finished_at: Some(now),
        events: vec![taskq_core::TaskEvent {
            status: TaskStatus::Cancelled,
            at: now,
            attempt: stored.record.attempts,
            error: None,
            worker: None,
        }],
        ..StatusUpdate::new(id, seq, TaskStatus::Cancelled, stored.record.attempts, now)
    };
    state.store.apply(std::slice::from_ref(&update)).await?;
    state
        .metrics
        .cancelled
        .get_or_create(&Metrics::task(
            stored.record.queue.as_str(),
            &stored.record.kind,
        ))
        .inc();
    match state.store.get(id).await? {
        Some(t) => Ok((StatusCode::OK, Json(t.record)).into_response()),
        None => Err(ApiError::not_found(format!("no task {id}"))),
    }
}
