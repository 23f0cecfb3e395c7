//! The submit request, the stored task record and the broker message.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Backoff, Priority, QueueName, TaskId, TaskStatus};

/// A submit request as it arrives over HTTP. Unknown fields are rejected so that a
/// misspelt option never silently falls back to its default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Handler name the worker dispatches on.
    #[serde(rename = "type")]
    pub kind: String,
    /// Arbitrary JSON handed to the handler.
    #[serde(default)]
    pub payload: Value,
    /// Queue name; `default` when absent.
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Earliest start time (RFC 3339). Exclusive with `delay_ms`.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Earliest start relative to now. Exclusive with `run_at`.
    #[serde(default)]
    pub delay_ms: Option<i64>,
    #[serde(default)]
    pub max_attempts: Option<i64>,
    /// Per-attempt handler timeout.
    #[serde(default)]
    pub timeout_ms: Option<i64>,
    /// Overrides of the default backoff; omitted fields keep their defaults.
    #[serde(default)]
    pub backoff: Option<BackoffOverride>,
    /// A repeat submit with the same key (in the same queue) returns the original task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Partial backoff settings given on submit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffOverride {
    pub initial_ms: Option<i64>,
    pub max_ms: Option<i64>,
    pub multiplier: Option<f64>,
    pub jitter: Option<f64>,
}

/// One state change, as kept in the record's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub status: TaskStatus,
    pub at: DateTime<Utc>,
    /// The attempt this change belongs to (0 before the first start).
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The worker that made the change, when a worker made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The full record of a task: what the store keeps and what the api returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub queue: QueueName,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub priority: Priority,
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff: Backoff,
    pub last_error: Option<String>,
    /// What the handler returned on success.
    pub result: Option<Value>,
    pub created_at: DateTime<Utc>,
    /// When the task becomes (or became) runnable.
    pub scheduled_at: DateTime<Utc>,
    /// Start of the latest attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// When the task reached a final status.
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
        }
    }
}

/// What travels through Redis: everything a worker needs to run an attempt. The
/// broker keeps the mutable parts (attempts, lease) beside it.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub created_at_ms: i64,
}
