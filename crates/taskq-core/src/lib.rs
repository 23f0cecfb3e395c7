//! The task model shared by every taskq component: ids, statuses and the state machine,
//! priorities, retry backoff, the submit request and its validation, the stored record
//! and the message that travels through the broker.
//!
//! This crate performs no I/O. The api validates requests with it, the broker and the
//! store serialise its types, and the worker computes retry delays with it, so every
//! component agrees on names, limits and transitions.

pub mod backoff;
pub mod flow;
pub mod id;
pub mod queue;
pub mod status;
pub mod task;
pub mod validate;
pub mod wait;
pub mod wire;

pub use backoff::Backoff;
pub use flow::{FlowLink, FlowPlan, FlowRef, MAX_FLOW_TASKS};
pub use id::TaskId;
pub use queue::{QueueName, QueueSelection, QueueWeights};
pub use status::{Priority, TaskStatus};
pub use task::{NewTask, Progress, TaskEvent, TaskMessage, TaskRecord};
pub use validate::{Limits, ValidationError};

/// The current time at millisecond precision, the precision every store keeps, so a
/// record reads back exactly as it was written.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(now_ms()).unwrap_or_else(chrono::Utc::now)
}

/// Milliseconds since the Unix epoch, the unit every Redis score and deadline uses.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
