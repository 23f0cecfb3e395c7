//! Built-in handlers: `http` (a webhook dispatcher in the style of Cloud Tasks) and the
//! demo handlers `noop`, `sleep`, `fail` and `echo`.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::handler::{HandlerError, HandlerResult, Registry, TaskContext};

/// Registers the demo handlers and the HTTP dispatcher.
pub fn register_builtins(registry: &mut Registry, http: HttpHandler) {
    registry.register("noop", |_ctx: TaskContext| async { Ok(None) });
    registry.register(
        "echo",
        |ctx: TaskContext| async move { Ok(Some(ctx.payload)) },
    );
    registry.register("sleep", sleep);
    registry.register("fail", fail);
    registry.register("http", move |ctx: TaskContext| {
        let h = http.clone();
        async move { h.dispatch(ctx).await }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepArgs {
    ms: u64,
    /// Report `{"slept_ms", "ms"}` as progress every this many milliseconds.
    progress_every_ms: Option<u64>,
}

/// `sleep`: waits `{"ms": N}` milliseconds, or until the worker cancels the attempt;
/// with `"progress_every_ms": M` it reports `{"slept_ms": …, "ms": N}` as its progress
/// every M milliseconds.
async fn sleep(ctx: TaskContext) -> HandlerResult {
    let args: SleepArgs = ctx.payload_as()?;
    let total = Duration::from_millis(args.ms);
    let every = match args.progress_every_ms {
        Some(0) => {
            return Err(HandlerError::permanent(
                "`progress_every_ms` must be above 0",
            ));
        }
        Some(m) => Duration::from_millis(m),
        None => total,
    };
    let start = tokio::time::Instant::now();
    loop {
        let slept = start.elapsed().min(total);
        if args.progress_every_ms.is_some() {
            let report = json!({"slept_ms": slept.as_millis() as u64, "ms": args.ms});
            ctx.report_progress(report)
                .map_err(|e| HandlerError::permanent(e.to_string()))?;
        }
        if slept >= total {
            return Ok(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(every.min(total - slept)) => {}
            _ = ctx.cancelled() => return Err(HandlerError::retry("cancelled while sleeping")),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FailArgs {
    /// Fail this many attempts, then succeed. Absent: fail every attempt.
    times: Option<u32>,
    /// Fail with a non-retryable error.
    permanent: bool,
    /// Panic instead of returning an error.
    panic: bool,
}

/// `fail`: fails `{"times": N}` attempts then succeeds, or always; `"permanent": true`
/// makes the failure non-retryable and `"panic": true` panics instead.
async fn fail(ctx: TaskContext) -> HandlerResult {
    let args: FailArgs = if ctx.payload.is_null() {
        FailArgs::default()
    } else {
        ctx.payload_as()?
    };
    if args.times.is_some_and(|n| ctx.attempt > n) {
        return Ok(Some(json!({"succeeded_on_attempt": ctx.attempt})));
    }
    if args.panic {
        panic!("fail handler asked to panic on attempt {}", ctx.attempt);
    }
    let msg = format!("fail handler failed attempt {}", ctx.attempt);
    Err(if args.permanent {
        HandlerError::permanent(msg)
    } else {
        HandlerError::retry(msg)
    })
}

/// URLs the `http` handler may call: each entry allows one scheme, host and port, and
/// every path under its own.
#[derive(Clone, Debug, Default)]
pub struct UrlAllowList(Vec<Url>);

impl UrlAllowList {
    /// Parses a comma-separated list such as `https://hooks.example.com/,http://10.0.0.5:8080/api/`.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let u = Url::parse(s).map_err(|e| format!("allow-list entry `{s}`: {e}"))?;
                if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                    return Err(format!(
                        "allow-list entry `{s}` must be an http(s) URL with a host"
                    ));
                }
                Ok(u)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `url` falls under an entry (same scheme, host and port; path below it).
    pub fn allows(&self, url: &Url) -> bool {
        self.0.iter().any(|a| {
            a.scheme() == url.scheme()
                && a.host_str() == url.host_str()
                && a.port_or_known_default() == url.port_or_known_default()
                && url.path().starts_with(a.path())
                && url.username().is_empty()
                && url.password().is_none()
        })
    }
}

/// The `http` handler: POSTs `body` as JSON to `url`.
#[derive(Clone, Debug)]
pub struct HttpHandler {
    client: reqwest::Client,
    allow: UrlAllowList,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpArgs {
    url: String,
    #[serde(default)]
    body: Value,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// Longest response body kept in the task's result.
const MAX_RESULT_BODY: usize = 4096;

impl HttpHandler {
    pub fn new(allow: UrlAllowList, request_timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("taskq-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, allow })
    }

    /// One delivery. 2xx succeeds; 408, 429 and 5xx retry (429 and 503 honour
    /// `Retry-After` seconds); other 4xx are permanent; connection errors and timeouts
    /// retry.
    pub async fn dispatch(&self, ctx: TaskContext) -> HandlerResult {
        let args: HttpArgs = ctx.payload_as()?;
        let url = Url::parse(&args.url)
            .map_err(|e| HandlerError::permanent(format!("invalid url: {e}")))?;
        if !self.allow.allows(&url) {
            return Err(HandlerError::permanent(format!(
                "url {} is not in the worker's allow-list (TASKQ_HTTP_ALLOW)",
                redact(&url)
            )));
        }
        let mut req = self
            .client
            .post(url.clone())
            .json(&args.body)
            .header("taskq-task-id", ctx.id.to_string())
            .header("taskq-attempt", ctx.attempt.to_string());
        if let Some(tp) = &ctx.traceparent {
            req = req.header("traceparent", tp);
        }
        for (k, v) in &args.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| {
            HandlerError::retry(format!(
                "request to {} failed: {}",
                redact(&url),
                e.without_url()
            ))
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = resp.text().await.unwrap_or_default();
        if body.len() > MAX_RESULT_BODY {
            let mut end = MAX_RESULT_BODY;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
        }
        let code = status.as_u16();
        if status.is_success() {
            return Ok(Some(json!({"status": code, "body": body})));
        }
        let message = format!("{} answered {code}", redact(&url));
        match (code, retry_after) {
            (408 | 429 | 500..=599, Some(after)) => {
                Err(HandlerError::RetryAfter { message, after })
            }
            (408 | 429 | 500..=599, None) => Err(HandlerError::retry(message)),
            _ => Err(HandlerError::permanent(message)),
        }
    }
}

/// The URL without query or credentials, for messages that end up in task records.
fn redact(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::ProgressError;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn allow_list_matches_origin_and_path_prefix() {
        let allow = UrlAllowList::parse("https://hooks.example.com/v1/, http://127.0.0.1:8080/")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(allow.allows(&url("https://hooks.example.com/v1/x?y=1")));
        assert!(!allow.allows(&url("https://hooks.example.com/v2/x")));
        assert!(!allow.allows(&url("http://hooks.example.com/v1/x")));
        assert!(!allow.allows(&url("https://hooks.example.com.evil.io/v1/")));
        assert!(allow.allows(&url("http://127.0.0.1:8080/anything")));
        assert!(!allow.allows(&url("http://127.0.0.1:8081/anything")));
        assert!(!allow.allows(&url("http://user:pw@127.0.0.1:8080/")));
        assert!(UrlAllowList::parse("ftp://x/").is_err());
        assert!(
            UrlAllowList::parse("")
                .map(|a| a.is_empty())
                .unwrap_or(false)
        );
    }

    #[tokio::test]
    async fn sleep_reports_its_progress_when_asked() {
        let ctx = TaskContext::for_test("sleep", json!({"ms": 250, "progress_every_ms": 100}));
        assert_eq!(sleep(ctx.clone()).await, Ok(None));
        assert_eq!(
            ctx.unwritten_progress(),
            Some(json!({"slept_ms": 250, "ms": 250}))
        );
        let quiet = TaskContext::for_test("sleep", json!({"ms": 10}));
        assert_eq!(sleep(quiet.clone()).await, Ok(None));
        assert_eq!(quiet.unwritten_progress(), None);
        let zero = TaskContext::for_test("sleep", json!({"ms": 10, "progress_every_ms": 0}));
        assert!(matches!(sleep(zero).await, Err(HandlerError::Permanent(_))));
    }

    #[test]
    fn progress_reports_are_bounded_json() {
        let ctx = TaskContext::for_test("t", Value::Null);
        assert_eq!(ctx.report_progress(json!({"done": 1})), Ok(()));
        assert_eq!(ctx.report_progress(40), Ok(()));
        assert_eq!(ctx.unwritten_progress(), Some(json!(40)), "the latest wins");
        let big = "x".repeat(taskq_core::Progress::MAX_BYTES);
        assert!(matches!(
            ctx.report_progress(&big),
            Err(ProgressError::TooLarge { bytes, .. }) if bytes == taskq_core::Progress::MAX_BYTES + 2
        ));
        let mut not_json = std::collections::HashMap::new();
        not_json.insert((1, 2), 3);
        assert!(matches!(
            ctx.report_progress(not_json),
            Err(ProgressError::NotJson(_))
        ));
        assert_eq!(
            ctx.unwritten_progress(),
            Some(json!(40)),
            "refused reports change nothing"
        );
    }

    #[tokio::test]
    async fn fail_handler_fails_then_succeeds() {
        let mut ctx = TaskContext::for_test("fail", json!({"times": 2}));
        ctx.attempt = 2;
        assert!(matches!(
            fail(ctx.clone()).await,
            Err(HandlerError::Retry(_))
        ));
        ctx.attempt = 3;
        assert!(fail(ctx).await.is_ok());
        let ctx = TaskContext::for_test("fail", json!({"permanent": true}));
        assert!(matches!(fail(ctx).await, Err(HandlerError::Permanent(_))));
        let ctx = TaskContext::for_test("fail", json!({"tiems": 1}));
        assert!(matches!(fail(ctx).await, Err(HandlerError::Permanent(_))));
    }
}
