//! Task endpoints: submit (single and batch), get, list, retry, cancel and delete.
//!
//! Each handler's `#[utoipa::path]` is its contract in `/openapi.json`: every status it
//! answers itself, with the body each carries; its route group's guards add theirs (see
//! [`crate::openapi`]).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use taskq_core::{NewTask, TaskId, TaskRecord, TaskStatus};
use taskq_store::ListFilter;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode, ErrorDetail, JsonResult, TaskIdErrors};
use crate::extract::{JsonBody, PathParam, QueryParams, TraceContext, parse_task};
use crate::transitions::cancel::{self, Cancelled};
use crate::transitions::delete::{self, Deletion};
use crate::transitions::flow;
use crate::transitions::retry::{self, Outcome};
use crate::transitions::submit::{self, Submitted};
use crate::wait::GetQuery;

/// `POST /v1/tasks`: validates, writes the record, enqueues, answers 201 with it. With an
/// idempotency key (the `Idempotency-Key` header or the `idempotency_key` field) a repeat
/// within the retention window answers 200 with the original task and writes nothing.
#[utoipa::path(
    post, path = "/v1/tasks", operation_id = "submit_task",
    request_body = NewTask,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,256}$",
            description = "Same as the `idempotency_key` field (they must agree when both are given)."),
        TraceContext,
    ),
    responses(
        (status = 201, description = "Created: the new task.", body = TaskRecord,
            headers(("Location" = String, description = "`/v1/tasks/{id}`"))),
        (status = 200, description = "The idempotency key repeats one used in this queue within the retention window: the original task; nothing was written.",
            body = TaskRecord, headers(("Location" = String, description = "`/v1/tasks/{id}`"))),
        (status = 400, description = "Malformed JSON (`invalid_json`), wrong shape or unknown field (`invalid_request`), a value out of range (`invalid_field`).", body = ErrorBody),
        (status = 409, description = "A concurrent submit holds the same idempotency key; retry.", body = ErrorBody),
        (status = 413, description = "The payload or the body is larger than the api accepts.", body = ErrorBody),
        (status = 503, description = "Redis or MongoDB is unavailable, or the request timed out; nothing was kept.", body = ErrorBody),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    TraceContext { traceparent }: TraceContext,
    JsonBody(raw): JsonBody<Box<RawValue>>,
) -> Result<Response, ApiError> {
    let mut req = parse_task(raw.get(), "the body")?;
    if let Some(h) = headers.get("idempotency-key") {
        let h = h
            .to_str()
            .map_err(|_| {
                ApiError::bad_request(ErrorCode::InvalidField, "`Idempotency-Key` is not ASCII")
            })?
            .to_owned();
        match &req.idempotency_key {
            Some(k) if *k != h => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidField,
                    "`Idempotency-Key` and `idempotency_key` differ",
                ));
            }
            _ => req.idempotency_key = Some(h),
        }
    }
    let rec = state.limits.admit(req, taskq_core::now(), traceparent)?;
    let (status, rec) = match submit::submit(&state, rec).await? {
        Submitted::Created(r) => (StatusCode::CREATED, r),
        Submitted::Existing(r) => (StatusCode::OK, r),
    };
    let location = format!("/v1/tasks/{}", rec.id);
    Ok((status, [(header::LOCATION, location)], Json(rec)).into_response())
}

/// The body of `POST /v1/tasks/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Tasks as `POST /v1/tasks` takes them, at most `TASKQ_MAX_BATCH` (default 1000).
    /// Each is checked on its own: an invalid one is reported in `results` and does not
    /// keep the others out.
    #[schema(value_type = Vec<NewTask>, min_items = 1)]
    pub tasks: Vec<Box<RawValue>>,
}

/// One item's outcome in a batch answer: `id` and `status` when it was accepted (it is in
/// both stores), `error` when it was not.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// The item's position in `tasks`.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<TaskId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// Why the item was not accepted; nothing of it runs, and no other item is affected.
    /// An invalid item carries the code a single submit of it would be answered with
    /// (`invalid_request`, `invalid_field`, `inexact_number`, `payload_too_large`) and was
    /// never written. A valid item that could not be submitted carries `conflict` (a
    /// concurrent submit holds its idempotency key, or that key's task is still being
    /// submitted: submit the item again), `unavailable` (Redis or MongoDB failed while it
    /// was written, and it was undone as a single submit's `503` is: submit it again) or,
    /// for a bug, `internal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// Set when an idempotency key matched an earlier task, whose id is reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// The answer of `POST /v1/tasks/batch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub accepted: usize,
    pub rejected: usize,
    /// One per item, in request order.
    pub results: Vec<BatchItem>,
    /// Only when no item was accepted (the 400, 409 and 503 answers): `invalid_request`
    /// when every item is invalid, otherwise the failure of the items that could not be
    /// submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// `POST /v1/tasks/batch`: every valid item is submitted (those without an idempotency
/// key in one `insert_many` and one enqueue script call per queue, keyed ones one by
/// one); each item that is invalid or could not be submitted is reported in its own
/// result. 201 when all were accepted, 207 when some were; when none was, 400 if every
/// item is invalid, otherwise the status of the items' failures (503 before 409), so an
/// error answer with `results` means no item was accepted. An answer the request timeout
/// or a store outage cuts short (a 503 without `results`) says nothing of the items
/// written before it.
#[utoipa::path(
    post, path = "/v1/tasks/batch", operation_id = "submit_batch",
    request_body = BatchRequest,
    params(TraceContext),
    responses(
        (status = 201, description = "Every item was accepted.", body = BatchResponse),
        (status = 207, description = "Some items were accepted; each other item's `error` in `results` says why it was not (invalid, or a keyed item that could not be submitted: `conflict`, `unavailable`). Submit those again; the accepted ones are in both stores.", body = BatchResponse),
        (status = 400, description = "No item is valid (the body is a batch answer with `error` set), or the request itself is malformed or empty. Nothing was written.", body = ErrorBody),
        (status = 409, description = "No item was accepted, and an item could not be submitted because a concurrent submit holds its idempotency key (or that key's task is still being submitted); the others are invalid or failed alike. A batch answer with `error` set; nothing of the batch runs; retry.", body = BatchResponse),
        (status = 503, description = "Redis or MongoDB is unavailable, or the request timed out. With `results` (a batch answer with `error` set): no item was accepted because a store failed while they were written, each undone as a single submit's `503` is; retry. Without: refused at once while a store is down, or cut short by the request timeout or a store going down mid-way, when items written before may have been submitted.", body = ErrorBody),
        (status = 413, description = "More tasks than `TASKQ_MAX_BATCH`, or a body over `TASKQ_MAX_BODY_BYTES`.", body = ErrorBody),
    ),
)]
pub async fn submit_batch(
    State(state): State<AppState>,
    TraceContext { traceparent }: TraceContext,
    JsonBody(req): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    if req.tasks.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "`tasks` is empty",
        ));
    }
    if req.tasks.len() > state.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BatchTooLarge,
            format!(
                "{} tasks in one batch; the limit is {} (TASKQ_MAX_BATCH)",
                req.tasks.len(),
                state.max_batch
            ),
        ));
    }
    let now = taskq_core::now();
    // Admitted items, each beside its index.
    let mut admitted_items = Vec::new();
    let mut items = Vec::with_capacity(req.tasks.len());
    for (index, raw) in req.tasks.into_iter().enumerate() {
        // Parsed from its own text by the rules of a single submit (duplicate keys and
        // all), not from a `Value`, which would have merged them silently.
        let admitted = parse_task(raw.get(), "a task").and_then(|t| {
            state
                .limits
                .admit(t, now, traceparent.clone())
                .map_err(ApiError::from)
        });
        let mut item = BatchItem {
            index,
            id: None,
            status: None,
            error: None,
            duplicate: None,
        };
        match admitted {
            Ok(rec) => admitted_items.push((index, rec)),
            Err(e) => item.error = Some(e.detail()),
        }
        items.push(item);
    }
    let (indexes, recs): (Vec<usize>, Vec<TaskRecord>) = admitted_items.into_iter().unzip();
    let outcomes = submit::submit_batch(&state, recs).await;
    // The item failure that speaks for the whole answer when no item was accepted.
    let mut failed: Option<ApiError> = None;
    for (index, outcome) in indexes.into_iter().zip(outcomes) {
        let Some(item) = items.get_mut(index) else {
            continue;
        };
        match outcome {
            Ok(Submitted::Created(r)) => {
                item.id = Some(r.id);
                item.status = Some(r.status);
            }
            // A repeat of an idempotency key: the original task.
            Ok(Submitted::Existing(r)) => {
                item.id = Some(r.id);
                item.status = Some(r.status);
                item.duplicate = Some(true);
            }
            Err(e) => {
                item.error = Some(e.detail());
                if failed
                    .as_ref()
                    .is_none_or(|f| e.status.as_u16() > f.status.as_u16())
                {
                    failed = Some(e);
                }
            }
        }
    }
    let accepted = items.iter().filter(|i| i.error.is_none()).count();
    let rejected = items.len() - accepted;
    let (status, error) = match (accepted, rejected, failed) {
        (_, 0, _) => (StatusCode::CREATED, None),
        (1.., _, _) => (StatusCode::MULTI_STATUS, None),
        (0, _, None) => (
            StatusCode::BAD_REQUEST,
            Some(ErrorDetail {
                code: ErrorCode::InvalidRequest,
                message: "no task in the batch is valid; see `results`".into(),
            }),
        ),
        (0, _, Some(e)) => (
            e.status,
            Some(ErrorDetail {
                code: e.code,
                message: format!(
                    "no task of the batch was accepted: {}; see `results`",
                    e.message
                ),
            }),
        ),
    };
    let body = BatchResponse {
        accepted,
        rejected,
        results: items,
        error,
    };
    Ok(crate::health::with_retry_after(
        (status, Json(body)).into_response(),
    ))
}

/// `GET /v1/tasks/{id}`, with `?wait=` answered once the task finished (see
/// [`crate::wait`]).
#[utoipa::path(
    get, path = "/v1/tasks/{id}", operation_id = "get_task", params(TaskPath, GetQuery),
    responses(
        (status = 200, description = "The task's full record. With `wait`: as soon as the task is `succeeded` (with its `result`), `dead` or `cancelled`, or at the deadline (or when the api shuts down) as it stands then; `status` says whether it finished.", body = TaskRecord),
        TaskIdErrors,
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam<TaskId>,
    QueryParams(q): QueryParams<GetQuery>,
    slot: Option<axum::Extension<crate::limit::Slot>>,
) -> JsonResult<TaskRecord> {
    let wait = q.wait()?.unwrap_or_default();
    let slot = slot.as_ref().map(|s| &s.0);
    crate::wait::record(&state, id, wait, slot).await.map(Json)
}

/// Query of `GET /v1/tasks`. Every field is text here so that a bad value is answered
/// with a message naming it; the `#[param]` types are what is accepted.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this status.
    #[param(value_type = Option<TaskStatus>)]
    pub status: Option<String>,
    /// Only tasks of this type.
    #[serde(rename = "type")]
    #[param(min_length = 1, max_length = 128)]
    pub kind: Option<String>,
    /// Only tasks of this queue.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub queue: Option<String>,
    /// Only tasks of this key.
    #[param(pattern = "^[A-Za-z0-9_.:/@-]{1,128}$")]
    pub key: Option<String>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<TaskId>)]
    pub cursor: Option<String>,
}

/// A page of `GET /v1/tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskRecord>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<TaskId>,
}

/// Largest page.
pub const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 50;

/// `GET /v1/tasks`: newest first, filtered, paginated by an opaque cursor.
#[utoipa::path(
    get, path = "/v1/tasks", operation_id = "list_tasks", params(ListQuery),
    responses((status = 200, description = "One page of tasks, newest first.", body = TaskList)),
)]
pub async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> JsonResult<TaskList> {
    let invalid = |m: String| ApiError::bad_request(ErrorCode::InvalidQuery, m);
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
    if let Some(k) = &q.key {
        taskq_core::validate::check_key(k).map_err(|m| invalid(format!("`key` {m}")))?;
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
        key: q.key,
    };
    let page = state.store.list(&filter, limit, cursor).await?;
    Ok(Json(TaskList {
        tasks: page.tasks,
        next_cursor: page.next_cursor,
    }))
}

/// `POST /v1/tasks/{id}/retry`: runs a dead task again from its first attempt; the tasks
/// of its flow cancelled because it died wait again.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/retry", operation_id = "retry_task", params(TaskPath),
    responses(
        (status = 200, description = "The task, queued again.", body = TaskRecord),
        TaskIdErrors,
        retry::RetryErrors,
    ),
)]
pub async fn retry(
    State(state): State<AppState>,
    PathParam(id): PathParam<TaskId>,
) -> JsonResult<TaskRecord> {
    match retry::retry(&state, vec![id]).await {
        Ok(outcomes) => match outcomes.into_iter().next() {
            Some(Outcome::Queued(record)) => {
                flow::rewait_dependents(&state, &[&record]).await?;
                Ok(Json(*record))
            }
            Some(Outcome::NotFound) | None => Err(ApiError::not_found(format!("no task {id}"))),
            Some(Outcome::NotDead(status)) => Err(ApiError::conflict(format!(
                "task {id} is {status}; only dead tasks can be retried"
            ))),
        },
        Err(failed) => {
            let outcome = if failed.stuck > 0 {
                "the task could not be marked dead again either: it stays queued and runs \
                 after POST /v1/admin/recover"
            } else {
                "the task stays dead; call again to retry it"
            };
            Err(failed.error.with_outcome(outcome))
        }
    }
}

/// The path of the operations on one task, `/v1/tasks/{id}/...` (the document's
/// parameter; handlers take [`PathParam`]`<TaskId>`).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "only documents the parameter the handlers extract"
)]
pub struct TaskPath {
    /// The task's id.
    pub id: TaskId,
}

/// `POST /v1/tasks/{id}/cancel`: a waiting task is cancelled at once (200); a running
/// one has its handler signalled and ends `cancelled` shortly (202); a finished one is a
/// conflict (409).
#[utoipa::path(
    post, path = "/v1/tasks/{id}/cancel", operation_id = "cancel_task", params(TaskPath),
    responses(
        (status = 200, description = "The task was waiting and is now `cancelled`.", body = TaskRecord),
        (status = 202, description = "The task is running: its handler was signalled and the attempt ends `cancelled` shortly. The record as it was.", body = TaskRecord),
        TaskIdErrors,
        cancel::CancelErrors,
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    PathParam(id): PathParam<TaskId>,
) -> Result<Response, ApiError> {
    Ok(match cancel::cancel(&state, id).await? {
        Cancelled::Now(record) => (StatusCode::OK, Json(record)).into_response(),
        Cancelled::Signalled(record) => (StatusCode::ACCEPTED, Json(record)).into_response(),
    })
}

/// `DELETE /v1/tasks/{id}`: deletes a finished task's record (succeeded, dead or
/// cancelled); an unfinished task is a conflict.
#[utoipa::path(
    delete, path = "/v1/tasks/{id}", operation_id = "delete_task", params(TaskPath),
    responses(
        (status = 204, description = "The task's record was deleted."),
        TaskIdErrors,
        (status = 409, description = "The task has not finished (cancel it first); nothing was deleted.", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    PathParam(id): PathParam<TaskId>,
) -> Result<StatusCode, ApiError> {
    match delete::delete(&state, id).await? {
        Deletion::Done => Ok(StatusCode::NO_CONTENT),
        Deletion::NotFound => Err(ApiError::not_found(format!("no task {id}"))),
        Deletion::Unfinished(status) => Err(ApiError::conflict(format!(
            "task {id} is {status}; only finished tasks (succeeded, dead, cancelled) can be \
             deleted: cancel it first"
        ))),
    }
}
