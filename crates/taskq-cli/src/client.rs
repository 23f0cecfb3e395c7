//! The HTTP client of the api.
//!
//! It owns the base URL, the bearer token and the request timeout, and turns every
//! outcome into an [`Answer`] or a one-line [`Error`]: the api's error body, an
//! unreachable api, or an answer the api would not give. The token is marked sensitive and
//! never appears in an error; neither do credentials embedded in the base URL.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;

use crate::error::{Error, one_line};

/// A client for one api.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<HeaderValue>,
    timeout: Duration,
}

/// An HTTP answer whose body is JSON (or empty, then `null`).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// A client for the api at `base` (an `http` or `https` URL, possibly with a path
    /// prefix), sending `token` as `Authorization: Bearer …` when it is not blank.
    pub fn new(base: Url, token: Option<&str>, timeout: Duration) -> Result<Self, Error> {
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(Error::input(format!(
                "the api URL must start with http:// or https://, not {}",
                redact(&base)
            )));
        }
        let token = match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    Error::input("TASKQ_TOKEN holds characters that cannot go in an HTTP header")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("taskq-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::input(format!("cannot set up the HTTP client: {}", cause(&e))))?;
        Ok(Self {
            http,
            base,
            token,
            timeout,
        })
    }

    /// The base URL as shown in messages: no credentials, no trailing slash.
    pub fn display_base(&self) -> String {
        redact(&self.base)
    }

    /// The URL of `segments` below the base, each percent-encoded as one path segment
    /// (so an id or queue name can never address another route).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Checked in `new`: an http(s) URL always has path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: HeaderMap,
    ) -> Result<Answer, Error> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self.http.request(method, url).headers(headers);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| Error::BadResponse {
            url: self.display_base(),
            status,
            what: format!("the body could not be read: {}", self.reason(&e)),
        })?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| Error::BadResponse {
                url: self.display_base(),
                status,
                what: "the body is not JSON".into(),
            })?
        };
        Ok(Answer { status, body })
    }

    /// A request with a JSON body; any status but 2xx is an error.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: &Value,
        headers: HeaderMap,
    ) -> Result<Answer, Error> {
        let answer = self
            .send(method, segments, &[], Some(body), headers)
            .await?;
        self.succeeded(answer)
    }

    /// `GET` of a JSON resource.
    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Answer, Error> {
        let answer = self
            .send(Method::GET, segments, query, None, HeaderMap::new())
            .await?;
        self.succeeded(answer)
    }

    /// `POST` without a body, as the api's actions (retry, cancel, pause, …) take.
    pub async fn post_action(&self, segments: &[&str]) -> Result<Answer, Error> {
        self.without_body(Method::POST, segments).await
    }

    /// `DELETE` of a resource.
    pub async fn delete(&self, segments: &[&str]) -> Result<Answer, Error> {
        self.without_body(Method::DELETE, segments).await
    }

    /// A request without a body or query; any status but 2xx is an error.
    async fn without_body(&self, method: Method, segments: &[&str]) -> Result<Answer, Error> {
        let answer = self
            .send(method, segments, &[], None, HeaderMap::new())
            .await?;
        self.succeeded(answer)
    }

    /// `answer` when its status is 2xx, otherwise the error it stands for.
    fn succeeded(&self, answer: Answer) -> Result<Answer, Error> {
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(self.error_of(&answer))
        }
    }

    /// The error an unsuccessful answer stands for: the api's own when the body has the
    /// api's shape, otherwise a [`Error::BadResponse`].
    pub fn error_of(&self, answer: &Answer) -> Error {
        let e = &answer.body["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(code), Some(message)) => Error::api(answer.status, code, message),
            _ => Error::BadResponse {
                url: self.display_base(),
                status: answer.status,
                what: "no taskq error body".into(),
            },
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        Error::Unreachable {
            url: self.display_base(),
            reason: self.reason(e),
        }
    }

    fn reason(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!(
                "no answer within {} ms (--request-timeout-ms)",
                self.timeout.as_millis()
            )
        } else {
            cause(e)
        }
    }
}

/// The innermost cause of `e` (for a refused connection: "Connection refused (os error
/// 111)"), which says more than reqwest's "error sending request for url (…)".
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    one_line(&inner.to_string())
}

/// `url` without user name, password or trailing slash.
fn redact(url: &Url) -> String {
    let mut url = url.clone();
    // Both fail only for URLs that cannot carry credentials anyway.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.as_str().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client(base: &str) -> Client {
        Client::new(Url::parse(base).expect("url"), None, Duration::from_secs(1)).expect("client")
    }

    #[test]
    fn urls_encode_each_segment() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.url(&["v1", "tasks", "a/b?c"]).as_str(),
            "http://127.0.0.1:8080/v1/tasks/a%2Fb%3Fc"
        );
        let c = client("https://example.test/prefix/");
        assert_eq!(
            c.url(&["v1", "queues", "q 1", "pause"]).as_str(),
            "https://example.test/prefix/v1/queues/q%201/pause"
        );
    }

    #[test]
    fn only_http_urls_are_accepted() {
        for bad in ["ftp://example.test", "mailto:a@example.test"] {
            let e = Client::new(Url::parse(bad).expect("url"), None, Duration::from_secs(1))
                .expect_err(bad);
            assert!(e.to_string().contains("http://"), "{e}");
        }
    }

    #[test]
    fn credentials_never_show_in_messages() {
        let c = client("http://user:secret@example.test:8080/");
        assert_eq!(c.display_base(), "http://example.test:8080");
    }

    #[test]
    fn tokens_must_fit_in_a_header() {
        let e = Client::new(
            Url::parse("http://127.0.0.1").expect("url"),
            Some("bad\ntoken"),
            Duration::from_secs(1),
        )
        .expect_err("newline");
        assert!(!e.to_string().contains("bad"), "{e}");
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let c = client("http://127.0.0.1:1");
        let e = c.error_of(&Answer {
            status: 409,
            body: json!({"error": {"code": "conflict", "message": "task x is queued"}}),
        });
        assert_eq!(e.to_string(), "task x is queued (conflict, HTTP 409)");
        let e = c.error_of(&Answer {
            status: 502,
            body: Value::Null,
        });
        assert_eq!(
            e.to_string(),
            "unexpected answer from the api at http://127.0.0.1:1 (HTTP 502): no taskq error body"
        );
    }
}
