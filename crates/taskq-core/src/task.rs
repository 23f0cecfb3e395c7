//! The submit request, the stored task record and the broker message.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::wire::WireInt;
use crate::{Backoff, Priority, QueueName, TaskId, TaskStatus};

/// A submit request as it arrives over HTTP. Unknown fields are rejected so that a
/// misspelt option never silently falls back to its default.
///
/// The `#[schema]` bounds document the rules [`crate::Limits::admit`] enforces with its
/// default limits; `admit` stays the authority (it also checks what a schema cannot say:
/// `run_at` and `delay_ms` together, the payload's size, `run_at` too far ahead).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Handler name the worker dispatches on.
    #[serde(rename = "type")]
    #[schema(pattern = "^[A-Za-z0-9_.:/-]{1,128}$", example = "email")]
    pub kind: String,
    /// Arbitrary JSON handed to the handler.
    #[serde(default)]
    pub payload: Value,
    /// Queue name; `default` when absent.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub queue: Option<String>,
    /// `normal` when absent.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Earliest start time (RFC 3339), at most 366 days ahead; a past time means now.
    /// Exclusive with `delay_ms`.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Earliest start relative to now. Exclusive with `run_at`.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 31_622_400_000_i64)]
    pub delay_ms: Option<WireInt>,
    /// Attempts before the task is dead; the api's default (5) when absent.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub max_attempts: Option<WireInt>,
    /// Per-attempt handler timeout; the api's default (10 min) when absent.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 86_400_000)]
    pub timeout_ms: Option<WireInt>,
    /// Overrides of the default backoff; omitted fields keep their defaults.
    #[serde(default)]
    pub backoff: Option<BackoffOverride>,
    /// A repeat submit with the same key (in the same queue) returns the original task.
    #[serde(default)]
    #[schema(pattern = "^[!-~]{1,256}$")]
    pub idempotency_key: Option<String>,
    /// Orders and spreads work per key (a customer, an entity id): tasks of one key run
    /// in submit order within a priority, at most the queue's `max_running_per_key` at
    /// once, and a busy key never holds back the others (see the README's "Keys").
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:/@-]{1,128}$", example = "customer-42")]
    pub key: Option<String>,
}

/// Partial backoff settings given on submit. `initial_ms` must not exceed `max_ms`
/// (after defaults apply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffOverride {
    /// Delay after the first failure (default 1 s).
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 604_800_000)]
    pub initial_ms: Option<WireInt>,
    /// Upper bound of any delay (default 10 min).
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 604_800_000)]
    pub max_ms: Option<WireInt>,
    /// Growth of the delay per failed attempt (default 2).
    #[schema(minimum = 1, maximum = 10)]
    pub multiplier: Option<f64>,
    /// Fraction of each delay that is randomised away, so retries of tasks that failed
    /// together spread out (default 0.2).
    #[schema(minimum = 0, maximum = 1)]
    pub jitter: Option<f64>,
}

/// One state change, as kept in the record's history. Absent optional fields are left
/// out.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskEvent {
    pub status: TaskStatus,
    pub at: DateTime<Utc>,
    /// The attempt this change belongs to (0 before the first start).
    pub attempt: u32,
    pub error: Option<String>,
    /// The worker that made the change, when a worker made it.
    pub worker: Option<String>,
}

/// The full record of a task: what the store keeps and what the api returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskRecord {
    /// Assigned by the api at submit; sorts by creation time.
    pub id: TaskId,
    /// The submit's queue (`default` when it named none).
    pub queue: QueueName,
    /// The handler name the worker dispatches on.
    #[serde(rename = "type")]
    pub kind: String,
    /// The JSON handed to the handler, as submitted.
    pub payload: Value,
    /// The submit's priority (`normal` when it named none).
    pub priority: Priority,
    /// Where the task is in its lifecycle (see the README's "Task lifecycle").
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff: Backoff,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// What the handler returned on success: any JSON value, at most the worker's
    /// `TASKQ_MAX_RESULT_BYTES` (1 MiB by default) of compact JSON. Present once the task
    /// is `succeeded` and its handler returned a value; `null` before that, when the
    /// handler returned none, and for `dead` and `cancelled` tasks. A larger result fails
    /// the attempt without retry: the task ends `dead` with `last_error` starting
    /// `result too large`. Read it as soon as the task finishes with
    /// `GET /v1/tasks/{id}?wait=30s`.
    #[schema(required = true)]
    pub result: Option<Value>,
    pub created_at: DateTime<Utc>,
    /// When the task becomes (or became) runnable.
    pub scheduled_at: DateTime<Utc>,
    /// Start of the latest attempt.
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    /// When the task reached a final status.
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// W3C trace context of the submit request, so attempts join its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Every state change, oldest first.
    #[serde(default)]
    pub events: Vec<TaskEvent>,
    /// The submit's idempotency key, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The flow this task belongs to, its name there and its dependencies (see
    /// [`crate::flow`]); absent for a task submitted on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<crate::flow::FlowLink>,
    /// The task's key (see [`NewTask::key`]), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The latest progress its handler reported while an attempt ran; absent until a
    /// handler reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// What a handler reported of its attempt's progress: any JSON value (a percentage, or
/// `{"done": 40, "total": 100}`), at most 16 KiB of compact JSON ([`Progress::MAX_BYTES`]).
/// Reports are best effort and the latest one wins; one never lands once its attempt
/// ended in the record (a retry, death or success moves the record past it), so a
/// finished task keeps the last report written while it ran. A later attempt's reports
/// replace an earlier one's: compare `attempt` with the record's `attempts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// The attempt that reported it.
    pub attempt: u32,
    /// The value the handler reported.
    pub value: Value,
    /// When the handler reported it.
    pub at: DateTime<Utc>,
}

impl Progress {
    /// The largest progress value, in bytes of compact JSON.
    pub const MAX_BYTES: usize = 16 * 1024;
}

impl TaskRecord {
    /// The message the broker carries for this task.
    pub fn message(&self) -> TaskMessage {
        TaskMessage {
            id: self.id,
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            backoff: self.backoff,
            traceparent: self.traceparent.clone(),
            created_at_ms: self.created_at.timestamp_millis(),
            // A failure handler depends on every other task of its flow: it carries the
            // flow's id instead of their ids, so its message stays small.
            depends_on: self
                .flow
                .as_ref()
                .filter(|f| !f.on_failure)
                .map(|f| f.depends_on.clone())
                .unwrap_or_default(),
            failure_handler_of: self.flow.as_ref().filter(|f| f.on_failure).map(|f| f.id),
            key: self.key.clone(),
        }
    }
}

/// What travels through Redis: everything a worker needs to run an attempt. The
/// broker keeps the mutable parts (attempts, lease) beside it. Absent optional fields
/// are left out.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub id: TaskId,
    pub queue: QueueName,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub priority: Priority,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff: Backoff,
    pub traceparent: Option<String>,
    pub created_at_ms: i64,
    /// The tasks of its flow this one waited for (their results are readable by its
    /// handler); empty for a failure handler (see `failure_handler_of`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TaskId>,
    /// Set on a flow's failure handler: the flow's id. Its dependencies are every other
    /// task of that flow.
    pub failure_handler_of: Option<TaskId>,
    /// The task's key (see [`NewTask::key`]), if it has one.
    pub key: Option<String>,
}
