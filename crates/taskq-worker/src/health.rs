//! The worker's HTTP endpoints: `/livez` (the process serves), `/readyz` (Redis and
//! MongoDB answer and the worker is not draining) and `/metrics` (Prometheus).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::Worker;

/// Deadline of the readiness checks.
const READY_DEADLINE: Duration = Duration::from_secs(2);

/// The router of the worker's health server.
pub fn router(worker: Worker) -> Router {
    Router::new()
        .route("/livez", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(worker)
}

async fn readyz(State(worker): State<Worker>) -> impl IntoResponse {
    match worker.ready(READY_DEADLINE).await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        ),
    }
}

async fn metrics(State(worker): State<Worker>) -> impl IntoResponse {
    worker.refresh_depth().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            taskq_telemetry::metrics::CONTENT_TYPE,
        )],
        worker.metrics().encode(),
    )
}
