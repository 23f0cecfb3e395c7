//! The api's one error type. Every failure leaves as `{"error": {"code", "message"}}`
//! with a stable machine-readable [`ErrorCode`]; 5xx bodies never carry internal detail
//! (that goes to the log).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

/// The machine-readable `code` of an error answer. Clients match on these names, so they
/// are part of the api: a name is never changed or reused for another meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: well-formed JSON of the wrong shape (not an object, a wrong type, a missing,
    /// unknown or duplicate field), or an empty batch.
    InvalidRequest,
    /// 400: the body could not be read.
    InvalidBody,
    /// 400: a value out of range or malformed.
    InvalidField,
    /// 400: an unknown or malformed query parameter.
    InvalidQuery,
    /// 400: the path's task id is not a task id.
    InvalidId,
    /// 400: the path's queue name is not a queue name.
    InvalidQueue,
    /// 400: a path parameter is not valid percent-encoded UTF-8.
    InvalidPath,
    /// 413: the payload or the body is larger than the api accepts.
    PayloadTooLarge,
    /// 413: more tasks in one batch than `TASKQ_MAX_BATCH`.
    BatchTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 401: no valid bearer token.
    Unauthorized,
    /// 403: the token's role may not do this.
    Forbidden,
    /// 404: no such task, queue or route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: the task's state does not allow it, or a concurrent submit holds the
    /// idempotency key.
    Conflict,
    /// 503: the request took longer than `TASKQ_REQUEST_TIMEOUT_MS`.
    Timeout,
    /// 503: Redis or MongoDB is unavailable.
    Unavailable,
    /// 500: a bug or corrupt data (the detail is in the log).
    Internal,
    /// 400: the request is not valid HTTP/1.1 (its request line, a header field, a
    /// control character such as NUL in a header value); answered before routing.
    MalformedRequest,
    /// 414: the request URI is too long; answered before routing.
    UriTooLong,
    /// 431: the request's header fields are too large or too many; answered before
    /// routing.
    HeadersTooLarge,
    /// 400: a JSON number that would not keep its meaning (an integer beyond 64 bits, a
    /// decimal beyond a double's precision).
    InexactNumber,
    /// 408: the body arrived too slowly (`TASKQ_BODY_READ_TIMEOUT_MS`,
    /// `TASKQ_BODY_MIN_BYTES_PER_SECOND`).
    BodyTimeout,
    /// 400: a flow whose `depends_on` do not form a DAG of known tasks (a cycle, an
    /// unknown name or id, a self-dependency, a duplicate), or that is too large.
    InvalidFlow,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 25] = [
        Self::InvalidJson,
        Self::InvalidRequest,
        Self::InvalidBody,
        Self::InvalidField,
        Self::InvalidQuery,
        Self::InvalidId,
        Self::InvalidQueue,
        Self::InvalidPath,
        Self::PayloadTooLarge,
        Self::BatchTooLarge,
        Self::UnsupportedMediaType,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::Timeout,
        Self::Unavailable,
        Self::Internal,
        Self::MalformedRequest,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::InexactNumber,
        Self::BodyTimeout,
        Self::InvalidFlow,
    ];

    /// The name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidBody => "invalid_body",
            Self::InvalidField => "invalid_field",
            Self::InvalidQuery => "invalid_query",
            Self::InvalidId => "invalid_id",
            Self::InvalidQueue => "invalid_queue",
            Self::InvalidPath => "invalid_path",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BatchTooLarge => "batch_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::MalformedRequest => "malformed_request",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::InexactNumber => "inexact_number",
            Self::BodyTimeout => "body_timeout",
            Self::InvalidFlow => "invalid_flow",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a handler answering with a JSON body returns.
pub type JsonResult<T> = Result<Json<T>, ApiError>;

/// An error answer.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    /// A backing service failed: 503, detail logged only.
    pub fn unavailable(service: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %err, service, "backing service error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("{service} is unavailable; retry later"),
        )
    }

    /// 503 when whether a task absent from Redis ran cannot be told yet: `queue`'s outbox
    /// holds more updates than can be read (its writers are behind).
    pub fn outbox_behind(queue: &taskq_core::QueueName) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "queue {queue}'s outbox holds more updates than can be read to tell whether a task ran; retry once the workers applied them"
            ),
        )
    }

    /// A bug or corrupt data: 500, detail logged only.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
        )
    }

    /// This error with `outcome`, what the failed operation left behind, in place of the
    /// message's advice (a 503 says "retry later"); 5xx detail stays in the log.
    pub fn with_outcome(self, outcome: &str) -> Self {
        let cause = self
            .message
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        Self {
            message: format!("{cause}; {outcome}"),
            ..self
        }
    }

    /// The `error` member of this error's body.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The 401 answer of every operation that needs a token (added by
/// [`crate::openapi`] to each route of a guarded group).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum AuthErrors {
    #[response(status = 401, description = "No valid bearer token.")]
    Unauthorized(ErrorBody),
}

/// The 401 and 403 answers of every admin-only operation (added by [`crate::openapi`] to
/// each route of the admin group).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum AdminAuthErrors {
    #[response(status = 401, description = "No valid bearer token.")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The token's role is not `admin`.")]
    Forbidden(ErrorBody),
}

/// The 400 and 404 answers of the operations on one queue, `/v1/queues/{name}/...`.
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum QueueNameErrors {
    #[response(
        status = 400,
        description = "`name` is not a valid queue name (`invalid_queue`)."
    )]
    InvalidName(ErrorBody),
    #[response(status = 404, description = "No such queue.")]
    Unknown(ErrorBody),
}

/// The 400 and 404 answers of the operations on one task, `/v1/tasks/{id}/...`.
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum TaskIdErrors {
    #[response(status = 400, description = "`id` is not a task id (`invalid_id`).")]
    InvalidId(ErrorBody),
    #[response(status = 404, description = "No such task.")]
    Unknown(ErrorBody),
}

/// The 400 and 404 answers of the operations on one flow, `/v1/flows/{id}/...`.
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum FlowIdErrors {
    #[response(status = 400, description = "`id` is not a flow id (`invalid_id`).")]
    InvalidId(ErrorBody),
    #[response(status = 404, description = "No such flow.")]
    Unknown(ErrorBody),
}

/// The 413 and 415 answers of the operations that take a JSON body ([`crate::extract`];
/// added by [`crate::openapi`] to each operation with a request body, unless it documents
/// its own).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum JsonBodyErrors {
    #[response(status = 413, description = "The body is larger than the api accepts.")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "The body is not `application/json`.")]
    NotJson(ErrorBody),
}

/// The 400 of the operations that take query parameters ([`crate::extract::QueryParams`];
/// added by [`crate::openapi`] to each operation with a query parameter, unless it
/// documents its own 400).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum QueryErrors {
    #[response(
        status = 400,
        description = "An unknown or malformed query parameter (`invalid_query`)."
    )]
    Invalid(ErrorBody),
}

/// The 503 of a read of records (see [`crate::health`]; added by [`crate::openapi`] to
/// each route of the reads group that does not document its own).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum RecordsUnavailable {
    #[response(
        status = 503,
        description = "MongoDB is unavailable, or the request timed out."
    )]
    Unavailable(ErrorBody),
}

/// The 503 of an operation on both stores that leaves nothing to say about what it kept
/// (added by [`crate::openapi`] to each route of the submit and admin groups that does
/// not document its own).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum StoresUnavailable {
    #[response(
        status = 503,
        description = "Redis or MongoDB is unavailable, or the request timed out."
    )]
    Unavailable(ErrorBody),
}

/// The 503 of an operation that needs no store: only the request timeout answers it
/// (added by [`crate::openapi`] to each operation that does not document its own 503).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub enum TimedOut {
    #[response(status = 503, description = "The request timed out.")]
    Timeout(ErrorBody),
}

/// What went wrong: a stable machine-readable `code` and a message for people.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        // Every 503 (a store down, a request timeout) says when to come back.
        crate::health::with_retry_after((self.status, Json(body)).into_response())
    }
}

impl From<taskq_core::ValidationError> for ApiError {
    fn from(e: taskq_core::ValidationError) -> Self {
        match e {
            taskq_core::ValidationError::PayloadTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                e.to_string(),
            ),
            taskq_core::ValidationError::Field { .. } => {
                Self::bad_request(ErrorCode::InvalidField, e.to_string())
            }
        }
    }
}

impl From<taskq_store::Error> for ApiError {
    fn from(e: taskq_store::Error) -> Self {
        match e {
            taskq_store::Error::Mongo(_) => Self::unavailable("mongodb", &e),
            _ => Self::internal(&e),
        }
    }
}

impl From<taskq_redis::BrokerError> for ApiError {
    fn from(e: taskq_redis::BrokerError) -> Self {
        Self::unavailable("redis", &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_wire_names() {
        // The names clients match on; changing one breaks them.
        let wire = [
            "invalid_json",
            "invalid_request",
            "invalid_body",
            "invalid_field",
            "invalid_query",
            "invalid_id",
            "invalid_queue",
            "invalid_path",
            "payload_too_large",
            "batch_too_large",
            "unsupported_media_type",
            "unauthorized",
            "forbidden",
            "not_found",
            "method_not_allowed",
            "conflict",
            "timeout",
            "unavailable",
            "internal",
            "malformed_request",
            "uri_too_long",
            "headers_too_large",
            "inexact_number",
            "body_timeout",
            "invalid_flow",
        ];
        assert_eq!(ErrorCode::ALL.len(), wire.len());
        for (code, name) in ErrorCode::ALL.into_iter().zip(wire) {
            assert_eq!(code.as_str(), name);
            assert_eq!(serde_json::to_value(code).ok(), Some(name.into()));
            let back: ErrorCode =
                serde_json::from_value(name.into()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, code);
        }
    }
}
