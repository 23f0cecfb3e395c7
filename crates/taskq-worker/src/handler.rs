//! The handler API: what a task type runs, and how a handler says how its attempt ended.
//!
//! **Results.** The JSON value of `Ok(Some(value))` is the task's result: it is stored in
//! the record's `result` when the task succeeds, and clients read it with
//! `GET /v1/tasks/{id}?wait=30s`, which answers as soon as the task finished. `Ok(None)`
//! stores no result (`null`). A result is at most `TASKQ_MAX_RESULT_BYTES` (1 MiB by
//! default) of compact JSON; a larger one fails the attempt for good, as a
//! [`HandlerError::Permanent`] would: the task ends `dead` with `last_error`
//! `result too large: …`. Keep large outputs elsewhere (an object store) and return
//! their address.
//!
//! ```no_run
//! use taskq_worker::{HandlerError, Registry, TaskContext};
//!
//! let mut registry = Registry::new();
//! registry.register("resize", |ctx: TaskContext| async move {
//!     let req: serde_json::Value = ctx.payload_as()?;
//!     if req.get("url").is_none() {
//!         // Retrying cannot fix a bad payload.
//!         return Err(HandlerError::permanent("payload has no url"));
//!     }
//!     Ok(Some(serde_json::json!({"resized": true})))
//! });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use taskq_core::{Progress, QueueName, TaskId};
use taskq_store::ProgressReport;
use tokio_util::sync::CancellationToken;

use crate::progress::Reports;

/// How an attempt failed. The worker turns it into a retry or a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Try again after the task's backoff delay, if attempts remain.
    #[error("{0}")]
    Retry(String),
    /// Try again no sooner than the given delay (e.g. a `Retry-After`), if attempts remain.
    #[error("{message}")]
    RetryAfter { message: String, after: Duration },
    /// Never retry: the task goes to the dead-letter queue now.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    /// A retryable failure.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry(message.into())
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// Whether another attempt may follow.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent(_))
    }
}

/// What a handler returns: an optional JSON result (stored in the task record's `result`,
/// at most `TASKQ_MAX_RESULT_BYTES`; see the module documentation) or how the attempt
/// failed.
pub type HandlerResult = Result<Option<Value>, HandlerError>;

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// Everything a handler learns about the attempt it runs.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub id: TaskId,
    pub queue: QueueName,
    /// The task type this handler was registered for.
    pub kind: String,
    pub payload: Value,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// W3C trace context of the submit request, when it had one.
    pub traceparent: Option<String>,
    /// The tasks of its flow this one waited for (empty outside a flow); see
    /// [`TaskContext::dependency_results`].
    pub depends_on: Vec<TaskId>,
    /// On a flow's failure handler, the flow: its dependencies are every other task of
    /// it (not listed in `depends_on`).
    pub(crate) failure_handler_of: Option<TaskId>,
    pub(crate) cancel: CancellationToken,
    /// Where the dependencies' results are read from (none in [`TaskContext::for_test`]).
    pub(crate) store: Option<taskq_store::Store>,
    /// Where progress reports go (see [`TaskContext::report_progress`]).
    pub(crate) progress: ProgressSink,
}

/// Where an attempt's progress reports go: the worker's waiting reports, and the `seq` of
/// the attempt's `running` transition (a report lands only while the record has not
/// moved past it).
#[derive(Clone, Debug)]
pub(crate) struct ProgressSink {
    pub reports: Arc<Reports>,
    pub seq: u64,
}

/// Why [`TaskContext::report_progress`] refused a report. Nothing was reported; the
/// attempt goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    #[error("progress report of {bytes} bytes; at most {max} bytes of compact JSON")]
    TooLarge { bytes: usize, max: usize },
    #[error("progress report is not JSON: {0}")]
    NotJson(String),
}

impl TaskContext {
    /// The payload decoded as `T`; a payload of the wrong shape is a permanent failure.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_value(self.payload.clone())
            .map_err(|e| HandlerError::permanent(format!("invalid payload: {e}")))
    }

    /// Resolves when the worker wants this attempt to stop (shutdown after the grace
    /// period). A handler that can stop early should select on it.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The results of the tasks this one depends on (see [`TaskContext::depends_on`]),
    /// by id: every one succeeded, and its result is in MongoDB, before this task was
    /// queued. For a flow's failure handler, every other task of its flow (`None` for
    /// those without a result: the one that died, those it cancelled). One query per
    /// thousand dependencies (one for a failure handler); an empty map for a task
    /// without dependencies. A store error is a retryable failure of the attempt.
    pub async fn dependency_results(&self) -> Result<HashMap<TaskId, Option<Value>>, HandlerError> {
        let Some(store) = self.store.as_ref() else {
            return Ok(HashMap::new());
        };
        let read = match self.failure_handler_of {
            Some(flow) => store.flow_results(flow, self.id).await,
            None if self.depends_on.is_empty() => return Ok(HashMap::new()),
            None => store.results(&self.depends_on).await,
        };
        read.map_err(|e| HandlerError::retry(format!("reading the dependencies' results: {e}")))
    }

    /// Reports this attempt's progress: any JSON value, such as `json!(40)` or
    /// `json!({"done": 40, "total": 100})`, at most [`Progress::MAX_BYTES`] (16 KiB) of
    /// compact JSON. Returns at once: the worker writes the latest report of each task
    /// to its record's `progress` (with this attempt's number and the time of the
    /// report) about twice a second, so call it as often as is convenient; clients read
    /// it with `GET /v1/tasks/{id}`, the CLI's `taskq get` and the dashboard. Best
    /// effort: a report superseded before the next write is never written, and none
    /// lands once the attempt ended in the record, so a finished task keeps the last
    /// report written while it ran.
    pub fn report_progress(&self, value: impl Serialize) -> Result<(), ProgressError> {
        let value =
            serde_json::to_value(value).map_err(|e| ProgressError::NotJson(e.to_string()))?;
        let bytes = serde_json::to_vec(&value)
            .map_err(|e| ProgressError::NotJson(e.to_string()))?
            .len();
        if bytes > Progress::MAX_BYTES {
            return Err(ProgressError::TooLarge {
                bytes,
                max: Progress::MAX_BYTES,
            });
        }
        self.progress.reports.put(ProgressReport {
            id: self.id,
            seq: self.progress.seq,
            progress: Progress {
                attempt: self.attempt,
                value,
                at: taskq_core::now(),
            },
        });
        Ok(())
    }

    /// The latest progress this attempt reported that is not written yet (in a
    /// [`TaskContext::for_test`] context, where nothing is written: the latest one).
    pub fn unwritten_progress(&self) -> Option<Value> {
        let report = self.progress.reports.get(self.id)?;
        (report.seq == self.progress.seq).then_some(report.progress.value)
    }

    /// A context for calling a handler outside a worker, e.g. in a unit test.
    pub fn for_test(kind: &str, payload: Value) -> Self {
        Self {
            id: TaskId::new(),
            queue: QueueName::default_queue(),
            kind: kind.to_owned(),
            payload,
            attempt: 1,
            max_attempts: 1,
            traceparent: None,
            depends_on: Vec::new(),
            failure_handler_of: None,
            cancel: CancellationToken::new(),
            store: None,
            progress: ProgressSink {
                reports: Arc::default(),
                seq: 0,
            },
        }
    }
}

/// Runs one task type.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: TaskContext) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, ctx: TaskContext) -> HandlerFuture {
        Box::pin((self)(ctx))
    }
}

/// Handlers by task type.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&String> = self.handlers.keys().collect();
        types.sort();
        f.debug_struct("Registry").field("types", &types).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `kind`, replacing any earlier one.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// The registered task types, sorted.
    pub fn types(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }
}
