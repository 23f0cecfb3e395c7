//! Request bodies are read in full before a request takes one of the router's
//! concurrency slots, under a deadline that demands a minimum rate: a body must be
//! complete `read_timeout` after the request started, plus one second for every
//! `min_bytes_per_second` bytes it has delivered so far. A slow body therefore holds a
//! connection, never a slot that well-behaved requests wait for, and is cut with
//! `408 body_timeout` once it falls behind. A body over `max_bytes` is `413
//! payload_too_large` as soon as it passes the limit.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::error::{ApiError, ErrorCode};

/// How request bodies are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body, in bytes.
    pub max_bytes: usize,
    /// Time every body gets, whatever its size.
    pub read_timeout: Duration,
    /// Each further second needs this many more bytes delivered.
    pub min_bytes_per_second: u64,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            read_timeout: Duration::from_secs(10),
            min_bytes_per_second: 16 * 1024,
        }
    }
}

/// Middleware: reads the body (see the module documentation), then runs the request
/// with it in memory.
pub(crate) async fn buffer(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if HttpBody::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    match read(body, &limits).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => e.into_response(),
    }
}

async fn read(mut body: Body, limits: &BodyLimits) -> Result<bytes::Bytes, ApiError> {
    let start = Instant::now();
    let mut buf = BytesMut::new();
    loop {
        let earned =
            Duration::from_secs_f64(buf.len() as f64 / limits.min_bytes_per_second.max(1) as f64);
        let deadline = start + limits.read_timeout + earned;
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidBody,
                    format!("the body could not be read: {e}"),
                ));
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::BodyTimeout,
                    format!(
                        "the body arrived too slowly: it must be complete {} ms after the \
                         request, plus one second per {} bytes delivered \
                         (TASKQ_BODY_READ_TIMEOUT_MS, TASKQ_BODY_MIN_BYTES_PER_SECOND)",
                        limits.read_timeout.as_millis(),
                        limits.min_bytes_per_second
                    ),
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limits.max_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the api accepts (TASKQ_MAX_BODY_BYTES)",
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
}
