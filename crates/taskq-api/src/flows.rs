//! Flow endpoints: submit a flow, read it, cancel it, retry it (see
//! [`crate::transitions::flow`] for what each writes).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use taskq_core::{MAX_FLOW_TASKS, NewTask, QueueName, TaskId, TaskStatus};
use taskq_store::StoredTask;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode, FlowIdErrors, JsonResult};
use crate::extract::{JsonBody, PathParam, TraceContext, parse_flow_task};
use crate::transitions::flow::{self, FlowCancelled, FlowRetried};

/// One task of a flow request: a task as `POST /v1/tasks` takes it (without `run_at`,
/// `delay_ms` on a task with dependencies, and without `idempotency_key`), plus its
/// name and dependencies.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewFlowTask {
    /// Unique in the flow; what `depends_on` of other tasks refers to.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "resize")]
    pub name: Option<String>,
    /// Names of tasks of this request, or ids of existing tasks, that must succeed
    /// before this one runs.
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(flatten)]
    pub task: NewTask,
}

/// The body of `POST /v1/flows`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRequest {
    /// At least one and at most 10,000 tasks; their `depends_on` must form a DAG.
    #[schema(value_type = Vec<NewFlowTask>, min_items = 1, max_items = 10000)]
    pub tasks: Vec<Box<RawValue>>,
    /// A task (as `POST /v1/tasks` takes it) run once if a task of the flow dies; it
    /// depends on every task of the flow, reads their results like any dependent, and is
    /// cancelled when they all succeed.
    #[schema(value_type = Option<NewTask>)]
    #[serde(default)]
    pub on_failure: Option<Box<RawValue>>,
}

/// A flow's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowStatus {
    /// Some task has not finished.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Every task finished and some died.
    Failed,
    /// Every task finished, none died, some were cancelled.
    Cancelled,
}

/// One task of a flow as `GET /v1/flows/{id}` shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FlowTask {
    pub id: TaskId,
    pub name: Option<String>,
    pub queue: QueueName,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: TaskStatus,
    pub depends_on: Vec<TaskId>,
    /// The flow's failure handler.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_failure: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A flow: its state, the count of its tasks per status, and every task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Flow {
    pub id: TaskId,
    pub status: FlowStatus,
    /// Tasks per status (statuses without tasks left out).
    pub counts: BTreeMap<String, usize>,
    /// In the order of the flow request.
    pub tasks: Vec<FlowTask>,
}

impl Flow {
    fn of(id: TaskId, tasks: Vec<StoredTask>) -> Self {
        let mut counts = BTreeMap::new();
        for t in &tasks {
            *counts
                .entry(t.record.status.as_str().to_owned())
                .or_insert(0) += 1;
        }
        // The flow's state is its tasks' (its failure handler only counts while running).
        let handler = |t: &StoredTask| t.record.flow.as_ref().is_some_and(|f| f.on_failure);
        let has = |s: TaskStatus| tasks.iter().any(|t| !handler(t) && t.record.status == s);
        // A waiting failure handler does not keep the flow running.
        let idle_handler = |t: &StoredTask| handler(t) && t.record.status == TaskStatus::Waiting;
        let status = if tasks
            .iter()
            .any(|t| !t.record.status.is_final() && !idle_handler(t))
        {
            FlowStatus::Running
        } else if has(TaskStatus::Dead) {
            FlowStatus::Failed
        } else if has(TaskStatus::Cancelled) {
            FlowStatus::Cancelled
        } else {
            FlowStatus::Succeeded
        };
        let tasks = tasks
            .into_iter()
            .map(|t| {
                let r = t.record;
                let (name, depends_on, on_failure) = r
                    .flow
                    .map(|f| (f.name, f.depends_on, f.on_failure))
                    .unwrap_or_default();
                FlowTask {
                    id: r.id,
                    name,
                    queue: r.queue,
                    kind: r.kind,
                    status: r.status,
                    depends_on,
                    on_failure,
                    attempts: r.attempts,
                    last_error: r.last_error,
                    result: r.result,
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                }
            })
            .collect();
        Flow {
            id,
            status,
            counts,
            tasks,
        }
    }
}

/// `POST /v1/flows`: checks the whole flow (names, dependencies, cycles, size), writes
/// every task in one go (all or nothing) and answers 201 with the flow.
#[utoipa::path(
    post, path = "/v1/flows", operation_id = "submit_flow",
    request_body = FlowRequest,
    params(TraceContext),
    responses(
        (status = 201, description = "Created: the flow, its roots `queued`, the others `waiting`.", body = Flow,
            headers(("Location" = String, description = "`/v1/flows/{id}`"))),
        (status = 400, description = "A task is invalid (the codes of `POST /v1/tasks`), or the flow is (`invalid_flow`: a cycle, an unknown name or task id, a self-dependency, a duplicate name or dependency, more than 10,000 tasks); nothing was written.", body = ErrorBody),
        (status = 503, description = "Redis or MongoDB is unavailable, or the request timed out; nothing was kept.", body = ErrorBody),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    TraceContext { traceparent }: TraceContext,
    JsonBody(req): JsonBody<FlowRequest>,
) -> Result<Response, ApiError> {
    let invalid = |m: String| ApiError::bad_request(ErrorCode::InvalidFlow, m);
    if req.tasks.len() > MAX_FLOW_TASKS {
        return Err(invalid(format!(
            "{} tasks in one flow; the limit is {MAX_FLOW_TASKS}",
            req.tasks.len()
        )));
    }
    let now = taskq_core::now();
    // Admits one task of the flow; `what` names it in the message of its error.
    let admit = |task, what: &str| {
        state
            .limits
            .admit(task, now, traceparent.clone())
            .map_err(|e| {
                let mut e = ApiError::from(e);
                e.message = format!("{what}: {}", e.message);
                e
            })
    };
    let mut items = Vec::with_capacity(req.tasks.len());
    for (index, raw) in req.tasks.iter().enumerate() {
        let what = format!("tasks[{index}]");
        let (task, link) = parse_flow_task(raw.get(), &what)?;
        items.push((admit(task, &what)?, link));
    }
    let on_failure = match &req.on_failure {
        None => None,
        Some(raw) => Some(admit(
            crate::extract::parse_task(raw.get(), "on_failure")?,
            "on_failure",
        )?),
    };
    let plan = taskq_core::flow::plan(items, on_failure).map_err(|e| invalid(e.to_string()))?;
    flow::submit_flow(&state, &plan).await?;
    let stored = plan
        .records
        .into_iter()
        .map(|record| StoredTask {
            record,
            seq: 1,
            submit_pending: None,
        })
        .collect();
    let location = format!("/v1/flows/{}", plan.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Flow::of(plan.id, stored)),
    )
        .into_response())
}

/// The path of the operations on one flow, `/v1/flows/{id}/...` (the document's
/// parameter; handlers take [`PathParam`]`<TaskId>`).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "only documents the parameter the handlers extract"
)]
pub struct FlowPath {
    /// The flow's id.
    pub id: TaskId,
}

/// The tasks of flow `id` in the order of the flow request (404 when it has none).
async fn flow_tasks(state: &AppState, id: TaskId) -> Result<Vec<StoredTask>, ApiError> {
    let tasks = state.store.flow_tasks(id).await?;
    if tasks.is_empty() {
        return Err(ApiError::not_found(format!("no flow {id}")));
    }
    Ok(tasks)
}

/// `GET /v1/flows/{id}`.
#[utoipa::path(
    get, path = "/v1/flows/{id}", operation_id = "get_flow", params(FlowPath),
    responses((status = 200, description = "The flow with every task's state.", body = Flow), FlowIdErrors),
)]
pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam<TaskId>,
) -> JsonResult<Flow> {
    Ok(Json(Flow::of(id, flow_tasks(&state, id).await?)))
}

/// `POST /v1/flows/{id}/cancel`: cancels every unfinished task of the flow.
#[utoipa::path(
    post, path = "/v1/flows/{id}/cancel", operation_id = "cancel_flow", params(FlowPath),
    responses(
        (status = 200, description = "What was cancelled.", body = FlowCancelled),
        FlowIdErrors,
        flow::CancelFlowErrors,
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    PathParam(id): PathParam<TaskId>,
) -> JsonResult<FlowCancelled> {
    let tasks = flow_tasks(&state, id).await?;
    Ok(Json(flow::cancel_flow(&state, tasks).await?))
}

/// `POST /v1/flows/{id}/retry`: retries every dead task of the flow and puts the tasks
/// cancelled because of a dependency back to `waiting`. Tasks cancelled by a user stay
/// cancelled.
#[utoipa::path(
    post, path = "/v1/flows/{id}/retry", operation_id = "retry_flow", params(FlowPath),
    responses(
        (status = 200, description = "What was retried.", body = FlowRetried),
        FlowIdErrors,
        flow::RetryFlowErrors,
    ),
)]
pub async fn retry(
    State(state): State<AppState>,
    PathParam(id): PathParam<TaskId>,
) -> JsonResult<FlowRetried> {
    let tasks = flow_tasks(&state, id).await?;
    Ok(Json(flow::retry_flow(&state, tasks).await?))
}
