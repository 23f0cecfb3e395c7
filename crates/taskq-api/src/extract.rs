//! Extractors whose rejections use the api's error format.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

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
            "the body must be a JSON object",
        ));
    }
    Ok(value)
}

/// A path parameter; one that is not valid percent-encoded UTF-8 is `invalid_path` (axum's
/// own rejection would answer in plain text).
#[derive(Debug)]
pub struct PathParam<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParam<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|rej| ApiError::bad_request(ErrorCode::InvalidPath, rej.body_text()))
    }
}

/// Query parameters; unknown or malformed ones are `invalid_query`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|rej| ApiError::bad_request(ErrorCode::InvalidQuery, rej.body_text()))
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
    fn floats_parse_exactly() {
        // The next double after 1e6, as a correct encoder writes it: without serde_json's
        // `float_roundtrip` it reads back as 1e6 and passes a `<= 1e6` check.
        let v: serde_json::Value =
            parse_json(br#"{"r": 1000000.0000000001}"#).unwrap_or_else(|e| panic!("{}", e.message));
        assert!(v["r"].as_f64().is_some_and(|r| r > 1_000_000.0), "{v}");
    }
}
