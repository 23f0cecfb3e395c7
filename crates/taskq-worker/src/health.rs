//! The worker's HTTP endpoints: `/livez` (the process serves) and `/readyz` (Redis and
//! MongoDB answer and the worker is not draining).

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
