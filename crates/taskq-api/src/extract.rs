//! Extractors whose rejections use the api's error format.

use std::fmt::Display;
use std::str::FromStr;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use taskq_core::{NewTask, QueueName, TaskId};
use utoipa::IntoParams;

use crate::error::{ApiError, ErrorCode};

/// A JSON object as the request body. A missing content type is accepted; any other than
/// JSON is 415. Malformed JSON is `invalid_json`; well-formed JSON of the wrong shape
/// (not an object, wrong types, missing or unknown fields) is `invalid_request`; a body
/// over the limit is 413.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::UnsupportedMediaType,
                    "send the body as application/json",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the api accepts (TASKQ_MAX_BODY_BYTES)",
                )
            } else {
                ApiError::bad_request(ErrorCode::InvalidBody, rej.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Decodes a JSON object with the api's error codes.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_object(bytes, "the body")
}

/// Decodes `what`, which must be a JSON object, with the api's error codes: one set of
/// rules for a body and for each task of a batch (a duplicate key is `invalid_request`
/// in both, as serde reports it for a struct's fields).
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let value = serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            // serde_json reports some type mismatches (a number where a unit enum such as
            // `priority` is expected) as syntax errors: malformed only if it is not JSON.
            Category::Syntax | Category::Eof | Category::Io
                if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() =>
            {
                ApiError::bad_request(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
            }
            _ => ApiError::bad_request(ErrorCode::InvalidRequest, e.to_string()),
        }
    })?;
    // serde also reads a struct from an array of its fields (`[null, null]`): only an
    // object is a valid body.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!("{what} must be a JSON object"),
        ));
    }
    Ok(value)
}

/// A task as `POST /v1/tasks` takes it, from its JSON text: the same rules for a single
/// submit and for each task of a batch (`what` names it in messages). Every number in
/// it must keep its meaning ([`exact_numbers`]), so a payload comes back as it was sent.
pub fn parse_task(text: &str, what: &str) -> Result<NewTask, ApiError> {
    parse_task_text(text, what)
}

/// [`parse_object`] after the [`exact_numbers`] check.
fn parse_task_text<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, ApiError> {
    if let Err(number) = exact_numbers(text.as_bytes()) {
        return Err(ApiError::bad_request(
            ErrorCode::InexactNumber,
            format!(
                "the number {number} cannot be kept exactly: taskq keeps JSON numbers as \
                 64-bit integers or as doubles (IEEE 754); send it as a string"
            ),
        ));
    }

    parse_object(text.as_bytes(), what)
}

/// The first fields of a flow's task: its name and dependencies; the rest is a task.
#[derive(serde::Deserialize)]
struct FlowItem {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(flatten)]
    task: serde_json::Map<String, serde_json::Value>,
}

/// A task of `POST /v1/flows`: a task as [`parse_task`] reads it, plus its optional
/// `name` and `depends_on`.
pub fn parse_flow_task(text: &str, what: &str) -> Result<(NewTask, taskq_core::FlowRef), ApiError> {
    let item: FlowItem = parse_task_text(text, what)?;
    let task = serde_json::from_value(serde_json::Value::Object(item.task))
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidRequest, format!("{what}: {e}")))?;
    Ok((
        task,
        taskq_core::FlowRef {
            name: item.name,
            depends_on: item.depends_on,
        },
    ))
}

/// Checks that every number in the JSON text `bytes` survives parsing with its meaning:
/// an integer must fit a 64-bit integer (signed or unsigned), a fraction or exponent
/// must be a double whose shortest form means the same decimal (`1.50` and `1.5e0` are
/// `1.5`; `0.1` is kept; `3.14159265358979323846` or `1e-400` are not). Returns the
/// first number that does not. Malformed text passes (the parser reports it).
fn exact_numbers(bytes: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
                if !number_is_exact(token) {
                    return Err(token.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn number_is_exact(token: &str) -> bool {
    if !token.contains(['.', 'e', 'E']) {
        return token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok();
    }
    let Ok(f) = token.parse::<f64>() else {
        return true; // not a number after all: the parser says what is wrong
    };
    if !f.is_finite() {
        return false;
    }
    let shortest = serde_json::to_string(&f).unwrap_or_default();
    decimal(token) == decimal(&shortest)
}

/// A decimal's meaning: `(negative, significant digits, exponent)` with the value
/// `0.<digits> × 10^exponent`, no leading or trailing zero digits; zero is
/// `(false, "", 0)`.
fn decimal(token: &str) -> (bool, String, i64) {
    let (negative, rest) = match token.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, token),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().unwrap_or(0)),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let lead = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    let exponent = exp + int.len() as i64 - lead as i64;
    (negative, significant.to_owned(), exponent)
}

/// A value a route's path parameter names, and the code a malformed one answers with.
pub trait PathValue: FromStr<Err: Display> + Send {
    const INVALID: ErrorCode;
}

impl PathValue for TaskId {
    const INVALID: ErrorCode = ErrorCode::InvalidId;
}

impl PathValue for QueueName {
    const INVALID: ErrorCode = ErrorCode::InvalidQueue;
}

/// A route's one path parameter, parsed: one that is not valid percent-encoded UTF-8 is
/// `invalid_path` (axum's own rejection would answer in plain text), a malformed value
/// is its type's [`PathValue::INVALID`].
#[derive(Debug)]
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: PathValue> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid_path =
            |rej: PathRejection| ApiError::bad_request(ErrorCode::InvalidPath, rej.body_text());
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(invalid_path)?;
        let value = text
            .parse()
            .map_err(|e: T::Err| ApiError::bad_request(T::INVALID, e.to_string()))?;
        Ok(PathParam(value))
    }
}

/// The `traceparent` the tasks a request creates carry (see
/// [`taskq_telemetry::trace_context::carried`]): the request span's when traces are
/// exported (so attempts become its children), otherwise the caller's well-formed
/// `traceparent` header, passed through unchanged. Never rejects a request.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct TraceContext {
    /// W3C trace context, stored with every task the request creates so their attempts join the trace.
    #[param(nullable = false)]
    pub traceparent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        Ok(TraceContext {
            traceparent: taskq_telemetry::trace_context::carried(&tracing::Span::current(), header),
        })
    }
}

/// Query parameters; unknown or malformed ones are `invalid_query`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|rej| ApiError::bad_request(ErrorCode::InvalidQuery, rej.body_text()))?;
        Ok(QueryParams(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only parsed")]
    struct Body {
        a: Option<u32>,
        b: Option<u32>,
    }

    fn code(bytes: &[u8]) -> &'static str {
        match parse_json::<Body>(bytes) {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        }
    }

    #[test]
    fn only_an_object_is_a_body() {
        assert_eq!(code(br#" {"a": 1}"#), "ok");
        assert_eq!(code(b"{}"), "ok");
        // serde would read these as the struct's fields in order.
        assert_eq!(code(b"[null, null]"), "invalid_request");
        assert_eq!(code(b" [1, 2]"), "invalid_request");
        assert_eq!(code(b"[1, 2"), "invalid_json");
        assert_eq!(code(br#"{"c": 1}"#), "invalid_request");
        assert_eq!(code(b"null"), "invalid_request");
    }

    #[test]
    fn numbers_must_keep_their_meaning() {
        for exact in [
            "0",
            "-0",
            "1",
            "-17",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "1.50",
            "1.5e0",
            "15e-1",
            "1e3",
            "-2.5E+2",
            "0.000",
            "1e308",
            "5e-324",
            "123456789.125",
        ] {
            assert!(number_is_exact(exact), "{exact}");
        }
        for inexact in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "3.14159265358979323846",
            "1e400",
            "1.5e-400",
            "9007199254740993.0",
        ] {
            assert!(!number_is_exact(inexact), "{inexact}");
        }
        assert_eq!(
            exact_numbers(br#"{"a": "1e400 \" 2e999", "b": [1, 2.5]}"#),
            Ok(())
        );
        assert_eq!(
            exact_numbers(br#"{"a": {"b": 123456789012345678901234567890}}"#),
            Err("123456789012345678901234567890".into())
        );
        let big = r#"{"type": "x", "payload": {"a": [123456789012345678901234567890]}}"#;
        assert_eq!(
            parse_task(big, "the body").map(|_| ()).map_err(|e| e.code),
            Err(ErrorCode::InexactNumber)
        );
        let fine = r#"{"type": "x", "payload": {"a": [18446744073709551615, 0.1]}}"#;
        assert!(parse_task(fine, "the body").is_ok());
    }

    #[test]
    fn floats_parse_exactly() {
        // The next double after 1e6, as a correct encoder writes it: without serde_json's
        // `float_roundtrip` it reads back as 1e6 and passes a `<= 1e6` check.
        let v: serde_json::Value =
            parse_json(br#"{"r": 1000000.0000000001}"#).unwrap_or_else(|e| panic!("{}", e.message));
        assert!(v["r"].as_f64().is_some_and(|r| r > 1_000_000.0), "{v}");
    }
}
