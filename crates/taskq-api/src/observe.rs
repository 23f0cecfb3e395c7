//! Request metrics and the `/metrics` endpoint.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use serde::Serialize;
use taskq_telemetry::metrics::{CONTENT_TYPE, Metrics};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ErrorBody;
use crate::health::StoreKind;

/// The span of one request: named after its route, a child of the caller's
/// `traceparent` when it sent one.
pub fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or("unmatched");
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    taskq_telemetry::set_parent(&span, parent);
    if let Some(id) = taskq_telemetry::trace_context::trace_id(&span, parent) {
        span.record("trace_id", id);
    }
    span
}

/// Counts and times every request by method, route template and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    // The route template, never the raw path: ids would explode the label set.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    tracing::Span::current().record("http.response.status_code", resp.status().as_u16());
    state
        .metrics
        .observe_http(&method, &route, resp.status().as_u16(), start.elapsed());
    resp
}

/// `GET /metrics`: refreshes the queue-depth gauges from Redis, then encodes everything.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus metrics in the OpenMetrics text format.",
            body = String, content_type = "application/openmetrics-text"),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.broker.queues().await {
        Ok(queues) => {
            let counts = join_all(queues.iter().map(|q| state.broker.counts(q))).await;
            for (q, c) in queues.iter().zip(counts) {
                match c {
                    Ok(c) => {
                        state.metrics.set_depth(
                            q.as_str(),
                            &[
                                ("queued", c.queued),
                                ("scheduled", c.scheduled),
                                ("retrying", c.retrying),
                                ("running", c.running),
                            ],
                        );
                        state
                            .metrics
                            .active_keys
                            .get_or_create(&Metrics::queue(q.as_str()))
                            .set(i64::try_from(c.active_keys).unwrap_or(i64::MAX));
                    }
                    Err(e) => tracing::warn!(error = %e, queue = %q, "reading queue depth failed"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing queues failed"),
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// The body of `GET /livez`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: String,
}

/// The body of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` (200) or `not_ready` (503).
    #[schema(pattern = "^(ready|not_ready)$")]
    pub status: String,
    /// Why it is not ready: draining, creating indexes, or which store is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of a 503 from `GET /readyz`: the probe's answer, or the timeout's error.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "only documents the two bodies a 503 may carry")]
pub enum NotReady {
    Probe(Readiness),
    Timeout(ErrorBody),
}

/// `GET /livez`: the process serves.
#[utoipa::path(
    get, path = "/livez", operation_id = "livez",
    responses((status = 200, description = "The process serves.", body = Liveness)),
)]
pub async fn livez() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".to_owned(),
    })
}

/// `GET /readyz`: Redis and MongoDB answer (their circuits are closed, see
/// [`crate::health`]), the indexes exist, and the process is not draining.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready to serve.", body = Readiness),
        (status = 503, description = "Not ready: draining, creating indexes, or Redis or MongoDB is unreachable (a `Readiness` body); or the request timed out (an error body).",
            body = NotReady),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not_ready".to_owned(),
                reason: Some(reason),
            }),
        )
    };
    if state.draining.load(Ordering::Relaxed) {
        return not_ready("draining".to_owned());
    }
    if !state.indexes_ready.load(Ordering::Relaxed) {
        return not_ready("creating mongodb indexes".to_owned());
    }
    for store in [StoreKind::Redis, StoreKind::Mongodb] {
        if !state.health.is_up(store) {
            return not_ready(format!("{} is unreachable", store.as_str()));
        }
    }
    (
        StatusCode::OK,
        Json(Readiness {
            status: "ready".to_owned(),
            reason: None,
        }),
    )
}
