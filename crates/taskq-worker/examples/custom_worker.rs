//! A custom worker: your own handlers next to (or instead of) the built-in ones.
//!
//! Build your worker image from a crate like this one: depend on `taskq-worker`, register
//! handlers by task type, and hand the registry to [`taskq_worker::run`], which reads the
//! same `TASKQ_*` settings as `taskq-worker` and handles probes, metrics and shutdown.
//!
//! ```sh
//! cargo run -p taskq-worker --example custom_worker
//! curl -X POST localhost:8080/v1/tasks -H 'content-type: application/json' \
//!   -d '{"type": "thumbnail", "payload": {"image": "cat.png", "width": 128}}'
//! # the record, with the handler's result, as soon as the task finished:
//! curl 'localhost:8080/v1/tasks/<id>?wait=30s'
//! ```

use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use taskq_worker::{HandlerError, HttpHandler, Registry, TaskContext, UrlAllowList, WorkerArgs};

#[derive(Deserialize)]
struct Thumbnail {
    image: String,
    width: u32,
}

/// A handler: decode the payload, do the work, return a result or say how it failed. The
/// result is stored in the task's record (at most `TASKQ_MAX_RESULT_BYTES` of JSON).
async fn thumbnail(ctx: TaskContext) -> Result<Option<serde_json::Value>, HandlerError> {
    let job: Thumbnail = ctx.payload_as()?;
    if job.width == 0 || job.width > 4096 {
        // Retrying cannot fix this input: fail for good.
        return Err(HandlerError::permanent(format!(
            "width {} is out of range",
            job.width
        )));
    }
    // Progress shows in the record (`GET /v1/tasks/<id>`) while the task runs; a report
    // too large to keep is refused, and the work goes on.
    if let Err(e) = ctx.report_progress(json!({"step": "resizing"})) {
        tracing::warn!(error = %e, "progress not reported");
    }
    // Long work should watch for cancellation (shutdown after the grace period).
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        _ = ctx.cancelled() => return Err(HandlerError::retry("interrupted")),
    }
    Ok(Some(
        json!({"thumbnail": format!("{}@{}w", job.image, job.width)}),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    let _telemetry = taskq_telemetry::init("taskq-worker", args.process.log_format);
    let mut registry = Registry::new();
    // Keep the built-in handlers (http, noop, sleep, fail, echo) too.
    let allow = UrlAllowList::parse(&args.http_allow).map_err(anyhow::Error::msg)?;
    taskq_worker::register_builtins(
        &mut registry,
        HttpHandler::new(allow, Duration::from_millis(args.http_timeout_ms))?,
    );
    registry.register("thumbnail", thumbnail);
    taskq_worker::run(args, registry).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_absurd_widths_for_good() {
        let ctx = TaskContext::for_test("thumbnail", json!({"image": "a.png", "width": 0}));
        assert!(matches!(
            thumbnail(ctx).await,
            Err(HandlerError::Permanent(_))
        ));
        let ctx = TaskContext::for_test("thumbnail", json!({"image": "a.png", "width": 64}));
        assert_eq!(
            thumbnail(ctx).await,
            Ok(Some(json!({"thumbnail": "a.png@64w"})))
        );
    }
}
