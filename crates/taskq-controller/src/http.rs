//! The controller's HTTP endpoints: `/livez` (the process serves), `/readyz` (not
//! shutting down, and the API server answered the leader election recently) and
//! `/metrics` (Prometheus, OpenMetrics text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::leader::Leadership;
use crate::metrics::{CONTENT_TYPE, Metrics};

/// What the endpoints report on.
#[derive(Clone, Debug)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub leadership: Leadership,
    /// Set when shutdown begins: readiness fails from then on.
    pub shutting_down: Arc<AtomicBool>,
    /// With leader election: how recent the last answer from the API server must be
    /// for readiness. `None`: leader election is off and there is nothing to check.
    pub contact_within: Option<Duration>,
}

/// The router of the health and metrics server.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/livez", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let leader = h.leadership.is_leader();
    let problem = if h.shutting_down.load(Ordering::Relaxed) {
        Some("shutting down".to_owned())
    } else if let Some(window) = h.contact_within {
        match h.leadership.last_contact() {
            Some(at) if at.elapsed() <= window => None,
            Some(at) => Some(format!(
                "the API server last answered {:.0?} ago",
                at.elapsed()
            )),
            None => Some("the API server has not answered yet".to_owned()),
        }
    } else {
        None
    };
    match problem {
        None => (
            StatusCode::OK,
            Json(json!({"status": "ready", "leader": leader})),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "leader": leader})),
        ),
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        h.metrics.encode(),
    )
}
