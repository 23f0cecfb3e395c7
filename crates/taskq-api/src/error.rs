//! The api's one error type. Every failure leaves as `{"error": {"code", "message"}}`
//! with a stable machine-readable code; 5xx bodies never carry internal detail (that
//! goes to the log).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// A backing service failed: 503, detail logged only.
    pub fn unavailable(service: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %err, service, "backing service error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{service} is unavailable; retry later"),
        )
    }

    /// A bug or corrupt data: 500, detail logged only.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
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

/// The 401 and 403 answers of every admin-only operation.
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

/// What went wrong: a stable machine-readable `code` and a message for people.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: `invalid_json`, `invalid_request`, `invalid_body`, `invalid_field`,
    /// `invalid_query`, `invalid_id`, `invalid_queue`, `invalid_path`, `payload_too_large`,
    /// `batch_too_large`, `unsupported_media_type`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `timeout`, `unavailable`, `internal`.
    #[schema(value_type = String, example = "invalid_field")]
    pub code: &'static str,
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
        (self.status, Json(body)).into_response()
    }
}

impl From<taskq_core::ValidationError> for ApiError {
    fn from(e: taskq_core::ValidationError) -> Self {
        match e {
            taskq_core::ValidationError::PayloadTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            taskq_core::ValidationError::Field { .. } => {
                Self::bad_request("invalid_field", e.to_string())
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
