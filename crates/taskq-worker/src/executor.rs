//! One attempt (its `running` update was recorded in the outbox by the dequeue script):
//! runs the handler in its own task, both its `call` and the future that returns (so a
//! panic in either fails only this attempt), inside a `task.process` span that continues
//! the submit's trace, enforces the task's timeout, and hands the outcome to the
//! completer together with the attempt's in-flight entry, which keeps the lease
//! heartbeated until the outcome is acknowledged. When the grace period of a shutdown
//! ends, the attempt is cancelled and released instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use taskq_redis::Leased;
use taskq_telemetry::metrics::Metrics;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::completer::Done;
use crate::handler::{HandlerError, ProgressSink, TaskContext};
use crate::worker::{InFlight, Phase, RunCtx};

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Succeeded(Option<Value>),
    Failed(HandlerError),
    /// Stopped by shutdown; goes back to the queue without counting.
    Released,
    /// Stopped because a user cancelled the task.
    Cancelled,
}

/// How long a handler whose task was cancelled may take to return before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Released => "released",
            Outcome::Cancelled => "cancelled",
        }
    }
}

pub(crate) async fn run(ctx: Arc<RunCtx>, task: Leased, _slot: OwnedSemaphorePermit) {
    let shared = &ctx.shared;
    let msg = &task.msg;
    let now = taskq_core::now();
    let labels = Metrics::task(msg.queue.as_str(), &msg.kind);
    shared.metrics.started.get_or_create(&labels).inc();
    if task.queued_at_ms > 0 {
        let waited = (now.timestamp_millis() - task.queued_at_ms).max(0) as f64 / 1000.0;
        shared
            .metrics
            .wait
            .get_or_create(&Metrics::queue(msg.queue.as_str()))
            .observe(waited);
    }
    let span = tracing::info_span!(
        "task.process",
        otel.kind = "consumer",
        task.id = %msg.id,
        task.type = %msg.kind,
        task.queue = %msg.queue,
        task.attempt = task.attempt,
        task.outcome = tracing::field::Empty,
        error.message = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    taskq_telemetry::set_parent(&span, msg.traceparent.as_deref());
    if let Some(id) = taskq_telemetry::trace_context::trace_id(&span, msg.traceparent.as_deref()) {
        span.record("trace_id", id);
    }
    let cancel = ctx.hard_stop.child_token();
    let phase = Arc::new(Phase::default());
    let tracked = shared.track(InFlight {
        id: msg.id,
        queue: msg.queue.clone(),
        token: task.token.clone(),
        cancel: cancel.clone(),
        phase: phase.clone(),
    });
    let started = Instant::now();
    let outcome = match shared.registry.get(&msg.kind) {
        None => Outcome::Failed(HandlerError::retry(format!(
            "no handler registered for type `{}` on this worker",
            msg.kind
        ))),
        Some(handler) => {
            let hctx = TaskContext {
                id: msg.id,
                queue: msg.queue.clone(),
                kind: msg.kind.clone(),
                payload: msg.payload.clone(),
                attempt: task.attempt,
                max_attempts: msg.max_attempts,
                // The attempt's own span, so outgoing calls continue this trace.
                traceparent: taskq_telemetry::traceparent(&span)
                    .or_else(|| msg.traceparent.clone()),
                depends_on: msg.depends_on.clone(),
                failure_handler_of: msg.failure_handler_of,
                cancel: cancel.clone(),
                store: Some(shared.store.clone()),
                progress: ProgressSink {
                    reports: shared.progress.clone(),
                    seq: task.seq,
                },
            };
            // `call` runs inside the task too: a panic before it returns its future is
            // contained like one while the future runs.
            let run = async move { handler.call(hctx).await };
            let mut handle = tokio::spawn(run.instrument(span.clone()));
            let timeout = Duration::from_millis(msg.timeout_ms);
            tokio::select! {
                r = tokio::time::timeout(timeout, &mut handle) => match r {
                    Ok(Ok(Ok(result))) => bounded(result, shared.settings.max_result_bytes),
                    Ok(Ok(Err(e))) => Outcome::Failed(e),
                    Ok(Err(join)) => Outcome::Failed(HandlerError::retry(join_failure(join))),
                    Err(_) => {
                        cancel.cancel();
                        handle.abort();
                        Outcome::Failed(HandlerError::retry(format!(
                            "timed out after {} ms", msg.timeout_ms
                        )))
                    }
                },
                _ = cancel.cancelled() => {
                    if phase.is_cancelled() {
                        // Cancelled by a user: a cooperative handler may stop by itself.
                        let _ = tokio::time::timeout(CANCEL_GRACE, &mut handle).await;
                        handle.abort();
                        Outcome::Cancelled
                    } else {
                        // The shutdown's grace period is over.
                        handle.abort();
                        Outcome::Released
                    }
                }
            }
        }
    };
    // A task cancelled before its handler finished ends cancelled, however the handler
    // returned (one cancelled later whose attempt failed is ended cancelled by FAIL).
    // An attempt that failed once the shutdown's grace period was over is released, not
    // counted: the handler may have seen the stop signal and returned an error before the
    // select above noticed the signal itself.
    let outcome = if phase.finish() {
        Outcome::Cancelled
    } else if ctx.hard_stop.is_cancelled() && matches!(outcome, Outcome::Failed(_)) {
        Outcome::Released
    } else {
        outcome
    };
    shared
        .metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    span.record("task.outcome", outcome.name());
    if let Outcome::Failed(e) = &outcome {
        span.record("error.message", tracing::field::display(e));
        span.in_scope(|| tracing::info!(error = %e, "attempt failed"));
    }
    drop(span);
    let done = Done {
        queue: msg.queue.clone(),
        kind: msg.kind.clone(),
        id: msg.id,
        token: task.token,
        attempt: task.attempt,
        max_attempts: msg.max_attempts,
        backoff: msg.backoff,
        outcome,
        tracked,
    };
    if ctx.done.send(done).await.is_err() {
        tracing::error!(task = %msg.id, "completer closed; the lease will expire and the task rerun");
    }
}

/// A success whose result fits in `max_bytes` of compact JSON; a larger result fails the
/// attempt for good (retrying would produce it again), saying so in `last_error`.
fn bounded(result: Option<Value>, max_bytes: usize) -> Outcome {
    let size = result
        .as_ref()
        .and_then(|v| serde_json::to_vec(v).ok())
        .map_or(0, |json| json.len());
    if size > max_bytes {
        return Outcome::Failed(HandlerError::permanent(format!(
            "result too large: {size} bytes of JSON, more than TASKQ_MAX_RESULT_BYTES ({max_bytes})"
        )));
    }
    Outcome::Succeeded(result)
}

fn join_failure(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "handler was aborted".to_owned();
    }
    let panic = e.into_panic();
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("handler panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_over_the_limit_fail_for_good() {
        let small = serde_json::json!({"n": 1});
        assert!(
            matches!(bounded(Some(small.clone()), 7), Outcome::Succeeded(Some(v)) if v == small)
        );
        assert!(matches!(bounded(None, 1), Outcome::Succeeded(None)));
        match bounded(Some(small), 6) {
            Outcome::Failed(e) => {
                assert!(!e.is_retryable());
                assert_eq!(
                    e.to_string(),
                    "result too large: 7 bytes of JSON, more than TASKQ_MAX_RESULT_BYTES (6)"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
