//! The CLI against a fake api that follows each endpoint's contract and records every
//! request, so tests check both what the CLI sends and what it makes of the answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::support::{
    assert_contains, jsonl_file, path_str, submit_json, taskq, taskq_line, taskq_out, taskq_with,
};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query, as sent.
    target: String,
    authorization: Option<String>,
    idempotency_key: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    token: Option<&'static str>,
}

struct FakeApi {
    url: String,
    fake: Fake,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApi {
    async fn start() -> Self {
        Self::start_with(Fake::default()).await
    }

    async fn start_with(fake: Fake) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = Router::new().fallback(handle).with_state(fake.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake api");
        });
        Self { url, fake, server }
    }

    fn seen(&self) -> Vec<Seen> {
        self.fake.seen.lock().expect("lock").clone()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn record(id: &str, kind: &str, status: &str) -> Value {
    json!({
        "id": id,
        "queue": "default",
        "type": kind,
        "payload": {"n": 1},
        "priority": "normal",
        "status": status,
        "attempts": 1,
        "max_attempts": 5,
        "timeout_ms": 600000,
        "backoff": {"initial_ms": 1000, "max_ms": 600000, "multiplier": 2.0, "jitter": 0.2},
        "last_error": if status == "dead" { json!("boom") } else { Value::Null },
        "result": null,
        "created_at": "2026-03-21T10:00:00Z",
        "scheduled_at": "2026-03-21T10:00:00Z",
        "started_at": null,
        "finished_at": null,
        "updated_at": "2026-03-21T10:00:01Z",
        "events": [
            {"status": "queued", "at": "2026-03-21T10:00:00Z", "attempt": 0},
            {"status": status, "at": "2026-03-21T10:00:01Z", "attempt": 1, "worker": "w-7", "error": "boom"}
        ]
    })
}

fn queue(name: &str, paused: bool) -> Value {
    json!({
        "name": name,
        "paused": paused,
        "counts": {"scheduled": 1, "queued": 20, "running": 3, "retrying": 4, "dead": 5},
        "processed_1m": 600,
        "failed_1m": 7,
        "limits": {"max_concurrent": 4, "max_running_per_key": 1, "burst": null},
        "keys": {"active": 2, "busiest": [
            {"key": "acme", "tasks": 9, "running": 1},
            {"key": "zeta", "tasks": 1, "running": 0}
        ]}
    })
}

/// Every route of the contract in one function.
async fn handle(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let get_header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        target: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: get_header("authorization"),
        idempotency_key: get_header("idempotency-key"),
        body: body.clone(),
    });
    if let Some(token) = fake.token
        && get_header("authorization") != Some(format!("Bearer {token}"))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
    }
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    match (method, path.as_slice()) {
        (_, ["broken", ..]) => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>502 Bad Gateway</body></html>",
        )
            .into_response(),
        (Method::POST, ["v1", "tasks"]) => {
            let kind = body["type"].as_str().unwrap_or("");
            if get_header("idempotency-key").as_deref() == Some("seen") {
                reply(StatusCode::OK, record("existing-1", kind, "queued"))
            } else if kind == "bad" {
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    "`type`: must be 1-128 of [A-Za-z0-9_.:/-]",
                )
            } else {
                let mut r = record("new-1", kind, "queued");
                for f in ["queue", "priority", "payload"] {
                    if !body[f].is_null() {
                        r[f] = body[f].clone();
                    }
                }
                reply(StatusCode::CREATED, r)
            }
        }
        (Method::POST, ["v1", "tasks", "batch"]) => {
            let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
            if tasks.len() > 3 {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch_too_large",
                    "4 tasks in one batch; the limit is 3 (TASKQ_MAX_BATCH)",
                );
            }
            let results: Vec<Value> = tasks
                .iter()
                .enumerate()
                .map(|(i, t)| match t["type"].as_str() {
                    Some(k) if !k.is_empty() => {
                        json!({"index": i, "id": format!("id-{k}"), "status": "queued"})
                    }
                    _ => {
                        json!({"index": i, "error": {"code": "invalid_field", "message": "`type`: must not be empty"}})
                    }
                })
                .collect();
            let accepted = results.iter().filter(|r| r.get("id").is_some()).count();
            let rejected = results.len() - accepted;
            let mut body = json!({"accepted": accepted, "rejected": rejected, "results": results});
            let status = match (accepted, rejected) {
                (_, 0) => StatusCode::CREATED,
                (0, _) => {
                    body["error"] = json!({"code": "invalid_request", "message": "no task in the batch is valid; see `results`"});
                    StatusCode::BAD_REQUEST
                }
                _ => StatusCode::MULTI_STATUS,
            };
            reply(status, body)
        }
        (Method::GET, ["v1", "tasks"]) => {
            let q: Vec<(String, String)> = serde_urlencoded_pairs(uri.query().unwrap_or_default());
            let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let limit: usize = get("limit").and_then(|l| l.parse().ok()).unwrap_or(2);
            let start: usize = get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
            let all: Vec<Value> = (0..5)
                .map(|i| record(&format!("t-{i}"), "noop", "queued"))
                .collect();
            let end = (start + limit).min(all.len());
            let next = (end < all.len()).then(|| end.to_string());
            reply(
                StatusCode::OK,
                json!({"tasks": all[start..end], "next_cursor": next}),
            )
        }
        (Method::GET, ["v1", "tasks", "slow"]) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            reply(StatusCode::OK, record("slow", "noop", "queued"))
        }
        (Method::GET, ["v1", "tasks", "missing"]) => {
            error(StatusCode::NOT_FOUND, "not_found", "no task missing")
        }
        (Method::GET, ["v1", "tasks", id]) => reply(StatusCode::OK, record(id, "email", "dead")),
        (Method::POST, ["v1", "tasks", "alive", "retry"]) => error(
            StatusCode::CONFLICT,
            "conflict",
            "task alive is queued; only dead tasks can be retried",
        ),
        (Method::POST, ["v1", "tasks", id, "retry"]) => {
            reply(StatusCode::OK, record(id, "email", "queued"))
        }
        (Method::POST, ["v1", "tasks", "running", "cancel"]) => {
            reply(StatusCode::ACCEPTED, record("running", "email", "running"))
        }
        (Method::POST, ["v1", "tasks", "done", "cancel"]) => error(
            StatusCode::CONFLICT,
            "conflict",
            "task done is succeeded; it cannot be cancelled",
        ),
        (Method::POST, ["v1", "tasks", id, "cancel"]) => {
            reply(StatusCode::OK, record(id, "email", "cancelled"))
        }
        (Method::GET, ["v1", "queues"]) => reply(
            StatusCode::OK,
            json!({"queues": [queue("default", false), queue("critical", true)]}),
        ),
        (Method::GET, ["v1", "queues", "nope"]) => {
            error(StatusCode::NOT_FOUND, "not_found", "no queue nope")
        }
        (Method::GET, ["v1", "queues", name]) => reply(StatusCode::OK, queue(name, false)),
        (Method::POST, ["v1", "queues", name, action @ ("pause" | "resume")]) => {
            reply(StatusCode::OK, queue(name, *action == "pause"))
        }
        (Method::POST, ["v1", "queues", _, "retry-dead"]) => {
            reply(StatusCode::OK, json!({"retried": 3}))
        }
        (Method::POST, ["v1", "queues", _, "purge-dead"]) => {
            reply(StatusCode::OK, json!({"purged": 2}))
        }
        (Method::POST, ["v1", "admin", "recover"]) => {
            reply(StatusCode::OK, json!({"enqueued": 4, "already_present": 1}))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

/// `a=1&b=2` as pairs (values in these tests need no decoding).
fn serde_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

#[tokio::test]
async fn submit_sends_every_option_and_the_token() {
    let api = FakeApi::start_with(Fake {
        token: Some("s3cret"),
        ..Fake::default()
    })
    .await;
    let run = taskq_with(
        Some(&api.url),
        &concat!(
            r#"submit email --payload {"to":"a@example.test"} --queue critical --priority high"#,
            " --delay-ms 5000 --max-attempts 3 --timeout-ms 1000 --idempotency-key k-1",
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        &[("TASKQ_TOKEN", "s3cret")],
        None,
    )
    .await;
    let out = run.ok();
    assert!(out.starts_with("task new-1 submitted\n"), "{out}");
    assert_contains(
        out,
        &[
            "\nstatus           queued\n",
            "\nqueue            critical\n",
        ],
    );
    assert!(!out.contains("s3cret") && !run.stderr.contains("s3cret"));
    let seen = api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].target, "/v1/tasks");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(seen[0].idempotency_key.as_deref(), Some("k-1"));
    assert_eq!(
        seen[0].body,
        json!({
            "type": "email", "payload": {"to": "a@example.test"}, "queue": "critical",
            "priority": "high", "delay_ms": 5000, "max_attempts": 3, "timeout_ms": 1000
        })
    );
}

#[tokio::test]
async fn a_missing_token_is_the_apis_error_and_a_token_is_never_printed() {
    let api = FakeApi::start_with(Fake {
        token: Some("s3cret"),
        ..Fake::default()
    })
    .await;
    let run = taskq(&api.url, &["get", "x"]).await;
    assert_eq!(
        run.error_line(),
        "error: missing or wrong bearer token (unauthorized, HTTP 401)"
    );
    assert_eq!(api.seen()[0].authorization, None);
    let run = taskq_with(
        Some(&api.url),
        &["get", "x"],
        &[("TASKQ_TOKEN", "wrong-token")],
        None,
    )
    .await;
    run.error_line();
    assert!(!run.stderr.contains("wrong-token") && !run.stdout.contains("wrong-token"));
}

#[tokio::test]
async fn submit_sends_only_the_options_given_and_run_at_as_rfc3339() {
    let api = FakeApi::start().await;
    taskq(
        &api.url,
        &["submit", "noop", "--run-at", "2030-01-01T09:00:00+01:00"],
    )
    .await
    .ok();
    let seen = api.seen();
    assert_eq!(
        seen[0].body,
        json!({"type": "noop", "run_at": "2030-01-01T09:00:00+01:00"})
    );
    assert_eq!(seen[0].idempotency_key, None);
    assert_eq!(seen[0].authorization, None);
}

#[tokio::test]
async fn submit_reads_the_payload_from_a_file_or_stdin() {
    let api = FakeApi::start().await;
    let file = jsonl_file(r#"{"big": [1, 2, 3]}"#);
    taskq(
        &api.url,
        &["submit", "noop", "--payload-file", path_str(&file)],
    )
    .await
    .ok();
    taskq_with(
        Some(&api.url),
        &["submit", "noop", "--payload-file", "-"],
        &[],
        Some(b"\"from stdin\""),
    )
    .await
    .ok();
    let seen = api.seen();
    assert_eq!(seen[0].body["payload"], json!({"big": [1, 2, 3]}));
    assert_eq!(seen[1].body["payload"], json!("from stdin"));

    let bad = jsonl_file("{nope");
    let run = taskq(
        &api.url,
        &["submit", "noop", "--payload-file", path_str(&bad)],
    )
    .await;
    assert!(run.error_line().contains("is not valid JSON"), "{run:?}");
    let run = taskq_line(
        &api.url,
        "submit noop --payload-file /nonexistent/payload.json",
    )
    .await;
    assert!(
        run.error_line()
            .starts_with("error: cannot read /nonexistent/payload.json: "),
        "{run:?}"
    );
    assert_eq!(api.seen().len(), 2, "bad payload files send nothing");
}

#[tokio::test]
async fn submit_says_when_the_idempotency_key_returned_an_existing_task() {
    let api = FakeApi::start().await;
    let run = taskq(&api.url, &["submit", "noop", "--idempotency-key", "seen"]).await;
    let out = run.ok();
    assert!(
        out.starts_with(
            "task existing-1 already existed for idempotency key \"seen\": no new task was created\n"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn json_output_is_the_apis_json() {
    let api = FakeApi::start().await;
    let v = taskq(&api.url, &["submit", "noop", "--output", "json"])
        .await
        .json();
    assert_eq!(v["id"], "new-1");
    assert_eq!(v["events"][0]["status"], "queued");
    let v = taskq(&api.url, &["get", "abc", "-o", "json"]).await.json();
    assert_eq!(v, record("abc", "email", "dead"));
    // The environment variables work like the flags.
    let v = taskq_with(
        None,
        &["queues"],
        &[("TASKQ_API", &api.url), ("TASKQ_OUTPUT", "json")],
        None,
    )
    .await
    .json();
    assert_eq!(v["queues"][1]["name"], "critical");
}

#[tokio::test]
async fn api_errors_are_one_line_and_exit_1() {
    let api = FakeApi::start().await;
    let run = taskq(&api.url, &["submit", "bad"]).await;
    assert_eq!(
        run.error_line(),
        "error: `type`: must be 1-128 of [A-Za-z0-9_.:/-] (invalid_field, HTTP 400)"
    );
    assert_eq!(run.stdout, "");
    let run = taskq(&api.url, &["get", "missing"]).await;
    assert_eq!(
        run.error_line(),
        "error: no task missing (not_found, HTTP 404)"
    );
    let run = taskq(&api.url, &["get", "missing", "-o", "json"]).await;
    assert_eq!(
        run.error_line(),
        "error: no task missing (not_found, HTTP 404)"
    );
    assert_eq!(run.stdout, "");
}

#[tokio::test]
async fn usage_errors_exit_2_and_send_nothing() {
    let api = FakeApi::start().await;
    for args in [
        vec!["submit"],
        vec!["submit", "noop", "--payload", "{nope"],
        vec!["submit", "noop", "--priority", "urgent"],
        vec![
            "submit",
            "noop",
            "--delay-ms",
            "1",
            "--run-at",
            "2030-01-01T00:00:00Z",
        ],
        vec!["submit", "noop", "--run-at", "tomorrow"],
        vec!["submit", "noop", "--file", "x.jsonl"],
        vec!["submit", "--file", "x.jsonl", "--batch-size", "0"],
        vec!["list", "--limit", "5000"],
        vec!["get"],
        vec!["frobnicate"],
        vec!["--output", "yaml", "queues"],
    ] {
        let run = taskq(&api.url, &args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
    }
    assert!(api.seen().is_empty());
    let run = taskq_with(None, &["--api", "not a url", "recover"], &[], None).await;
    assert_eq!(run.code, Some(2), "{run:?}");
}

#[tokio::test]
async fn an_unreachable_api_is_one_line_and_exit_1() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = taskq(&url, &["get", "abc"]).await;
    let line = run.error_line();
    assert!(
        line.starts_with(&format!("error: cannot reach the api at {url}: ")),
        "{line}"
    );
    assert!(line.contains("refused"), "{line}");
    assert_eq!(run.stdout, "");
}

#[tokio::test]
async fn a_slow_api_times_out_in_one_line() {
    let api = FakeApi::start().await;
    let run = taskq(&api.url, &["get", "slow", "--request-timeout-ms", "200"]).await;
    assert_eq!(
        run.error_line(),
        format!(
            "error: cannot reach the api at {}: no answer within 200 ms (--request-timeout-ms)",
            api.url
        )
    );
}

#[tokio::test]
async fn an_answer_that_is_not_the_apis_is_one_line() {
    let api = FakeApi::start().await;
    let base = format!("{}/broken", api.url);
    let run = taskq(&base, &["get", "abc"]).await;
    assert_eq!(
        run.error_line(),
        format!("error: unexpected answer from the api at {base} (HTTP 502): the body is not JSON")
    );
    // A base URL with a path prefix is kept in front of every route.
    assert_eq!(api.seen()[0].target, "/broken/v1/tasks/abc");
}

#[tokio::test]
async fn get_shows_fields_and_events() {
    let api = FakeApi::start().await;
    let out = taskq_out(&api.url, "get t-9").await;
    assert!(
        out.starts_with("id               t-9\ntype             email\n"),
        "{out}"
    );
    assert_contains(
        &out,
        &[
            "\nlast error       boom\n",
            "\ncreated (UTC)    2026-03-21 10:00:00\n",
        ],
    );
    assert!(
        out.ends_with(
            "events:\n\
             AT (UTC)             STATUS  ATTEMPT  WORKER  ERROR\n\
             2026-03-21 10:00:00  queued  0        -       -\n\
             2026-03-21 10:00:01  dead    1        w-7     boom\n"
        ),
        "{out}"
    );
    // Ids are one path segment, whatever they contain.
    taskq(&api.url, &["get", "a/b c"]).await.ok();
    assert_eq!(api.seen()[1].target, "/v1/tasks/a%2Fb%20c");
}

#[tokio::test]
async fn list_passes_filters_and_shows_the_next_cursor() {
    let api = FakeApi::start().await;
    let out = taskq_out(
        &api.url,
        "list --status dead --type email --queue critical --limit 2",
    )
    .await;
    assert_eq!(
        api.seen()[0].target,
        "/v1/tasks?status=dead&type=email&queue=critical&limit=2"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("ID   TYPE  QUEUE    STATUS"), "{out}");
    assert!(
        lines[1].starts_with("t-0  noop  default  queued  normal    1/5"),
        "{out}"
    );
    assert_eq!(
        lines[3],
        "more tasks: add --cursor 2 for the next page, or --all"
    );

    let v = taskq(&api.url, &["list", "--cursor", "4", "-o", "json"])
        .await
        .json();
    assert_eq!(v["tasks"][0]["id"], "t-4");
    assert_eq!(v["next_cursor"], Value::Null);
    assert_eq!(api.seen()[1].target, "/v1/tasks?cursor=4");
}

#[tokio::test]
async fn list_all_follows_the_cursors() {
    let api = FakeApi::start().await;
    let v = taskq(&api.url, &["list", "--all", "-o", "json"])
        .await
        .json();
    let ids: Vec<&str> = v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["t-0", "t-1", "t-2", "t-3", "t-4"]);
    assert_eq!(v["next_cursor"], Value::Null);
    let targets: Vec<String> = api.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/v1/tasks", "/v1/tasks?cursor=2", "/v1/tasks?cursor=4"]
    );
    let out = taskq_out(&api.url, "list --all").await;
    assert_eq!(out.lines().count(), 6, "{out}");
    assert!(!out.contains("more tasks"), "{out}");
}

#[tokio::test]
async fn retry_and_its_conflict() {
    let api = FakeApi::start().await;
    let out = taskq_out(&api.url, "retry d-1").await;
    assert!(
        out.starts_with("task d-1 will run again from attempt 1\n"),
        "{out}"
    );
    assert!(out.contains("\nstatus           queued\n"), "{out}");
    assert_eq!(api.seen()[0].method, Method::POST);
    assert_eq!(api.seen()[0].target, "/v1/tasks/d-1/retry");
    let run = taskq(&api.url, &["retry", "alive"]).await;
    assert_eq!(
        run.error_line(),
        "error: task alive is queued; only dead tasks can be retried (conflict, HTTP 409)"
    );
}

#[tokio::test]
async fn cancel_tells_cancelled_from_signalled() {
    let api = FakeApi::start().await;
    let out = taskq_out(&api.url, "cancel q-1").await;
    assert!(out.starts_with("task q-1 cancelled\n"), "{out}");
    assert!(out.contains("\nstatus           cancelled\n"), "{out}");
    let out = taskq_out(&api.url, "cancel running").await;
    assert!(
        out.starts_with("task running is running: its worker was asked to stop it"),
        "{out}"
    );
    let run = taskq(&api.url, &["cancel", "done"]).await;
    assert_eq!(
        run.error_line(),
        "error: task done is succeeded; it cannot be cancelled (conflict, HTTP 409)"
    );
    assert_eq!(api.seen()[0].target, "/v1/tasks/q-1/cancel");
}

#[tokio::test]
async fn queues_are_listed_and_shown() {
    let api = FakeApi::start().await;
    let out = taskq_out(&api.url, "queues").await;
    assert_eq!(
        out,
        "NAME      PAUSED  SCHEDULED  QUEUED  RUNNING  RETRYING  DEAD  PROCESSED/1M  FAILED/1M  KEYS\n\
         default   no      1          20      3        4         5     600           7          2\n\
         critical  yes     1          20      3        4         5     600           7          2\n"
    );
    let out = taskq_out(&api.url, "queues low").await;
    assert!(
        out.ends_with(
            "limits: max_concurrent=4 max_running_per_key=1\n\
             busiest keys:\n\
             KEY   TASKS  RUNNING\n\
             acme  9      1\n\
             zeta  1      0\n"
        ),
        "{out}"
    );
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("low   no ")),
        "{out}"
    );
    assert_eq!(api.seen()[1].target, "/v1/queues/low");
    let run = taskq(&api.url, &["queues", "nope"]).await;
    assert_eq!(
        run.error_line(),
        "error: no queue nope (not_found, HTTP 404)"
    );
    let v = taskq(&api.url, &["queues", "low", "-o", "json"])
        .await
        .json();
    assert_eq!(v, queue("low", false));
}

#[tokio::test]
async fn pause_and_resume() {
    let api = FakeApi::start().await;
    let out = taskq_out(&api.url, "pause critical").await;
    assert!(out.starts_with("queue critical paused\nNAME"), "{out}");
    assert!(out.contains("\ncritical  yes"), "{out}");
    let out = taskq_out(&api.url, "resume critical").await;
    assert!(out.starts_with("queue critical resumed\n"), "{out}");
    let targets: Vec<(Method, String)> = api
        .seen()
        .into_iter()
        .map(|s| (s.method, s.target))
        .collect();
    assert_eq!(
        targets,
        [
            (Method::POST, "/v1/queues/critical/pause".to_owned()),
            (Method::POST, "/v1/queues/critical/resume".to_owned())
        ]
    );
}

#[tokio::test]
async fn retry_dead_and_purge_dead() {
    let api = FakeApi::start().await;
    let out = taskq_out(&api.url, "retry-dead critical").await;
    assert_eq!(out, "3 dead tasks of queue critical will run again\n");
    // Without a terminal to ask on, purging needs --yes and sends nothing otherwise.
    let run = taskq(&api.url, &["purge-dead", "critical"]).await;
    assert!(run.error_line().contains("pass --yes"), "{run:?}");
    assert_eq!(api.seen().len(), 1);
    let out = taskq_out(&api.url, "purge-dead critical --yes").await;
    assert_eq!(out, "2 dead tasks of queue critical deleted\n");
    let v = taskq(&api.url, &["purge-dead", "critical", "-y", "-o", "json"])
        .await
        .json();
    assert_eq!(v, json!({"purged": 2}));
    let targets: Vec<String> = api.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/queues/critical/retry-dead",
            "/v1/queues/critical/purge-dead",
            "/v1/queues/critical/purge-dead"
        ]
    );
}

#[tokio::test]
async fn recover_reports_counts() {
    let api = FakeApi::start().await;
    let out = taskq_out(&api.url, "recover").await;
    assert_eq!(out, "4 tasks put back into Redis, 1 were already there\n");
    assert_eq!(api.seen()[0].target, "/v1/admin/recover");
    let v = taskq(&api.url, &["recover", "-o", "json"]).await.json();
    assert_eq!(v, json!({"enqueued": 4, "already_present": 1}));
}

#[tokio::test]
async fn batch_chunks_the_file_and_reports_rejected_lines() {
    let api = FakeApi::start().await;
    let file = jsonl_file(
        "{\"type\": \"a\"}\n\n{\"type\": \"\"}\n{\"type\": \"b\"}\n   \n{\"type\": \"c\"}\n{\"payload\": 1}\n",
    );
    let run = taskq(
        &api.url,
        &["submit", "--file", path_str(&file), "--batch-size", "2"],
    )
    .await;
    assert_eq!(run.error_line(), "error: 2 of 5 tasks were rejected");
    assert_eq!(
        run.stdout,
        "3 of 5 tasks accepted, 2 rejected\n\
         LINE  CODE           ERROR\n\
         3     invalid_field  `type`: must not be empty\n\
         7     invalid_field  `type`: must not be empty\n"
    );
    let sent: Vec<Value> = api.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(
        sent,
        [
            json!({"tasks": [{"type": "a"}, {"type": ""}]}),
            json!({"tasks": [{"type": "b"}, {"type": "c"}]}),
            json!({"tasks": [{"payload": 1}]}),
        ]
    );
}

#[tokio::test]
async fn batch_json_output_merges_the_chunks_with_line_numbers() {
    let api = FakeApi::start().await;
    let file = jsonl_file("{\"type\": \"a\"}\n{\"type\": \"b\"}\n\n{\"type\": \"c\"}\n");
    let v = submit_json(&api.url, &["--file", path_str(&file), "--batch-size", "2"])
        .await
        .json();
    assert_eq!(
        v,
        json!({
            "accepted": 3, "rejected": 0, "not_sent": 0,
            "results": [
                {"index": 0, "line": 1, "id": "id-a", "status": "queued"},
                {"index": 1, "line": 2, "id": "id-b", "status": "queued"},
                {"index": 2, "line": 4, "id": "id-c", "status": "queued"},
            ]
        })
    );
    // Tasks can come from stdin too.
    let run = taskq_with(
        Some(&api.url),
        &["submit", "--file", "-"],
        &[],
        Some(b"{\"type\": \"d\"}\n"),
    )
    .await;
    assert_eq!(run.ok(), "1 of 1 tasks accepted, 0 rejected\n");
}

#[tokio::test]
async fn batch_with_a_line_that_is_not_json_sends_nothing() {
    let api = FakeApi::start().await;
    let file = jsonl_file("{\"type\": \"a\"}\n\n{\"type\": nope}\n{\"type\": \"b\"}\n");
    let run = taskq(&api.url, &["submit", "--file", path_str(&file)]).await;
    let line = run.error_line();
    assert!(
        line.starts_with(&format!(
            "error: {}: line 3: not valid JSON: ",
            file.display()
        )),
        "{line}"
    );
    assert!(line.ends_with("; nothing was sent"), "{line}");
    assert!(api.seen().is_empty());
    let empty = jsonl_file("\n\n");
    let run = taskq(&api.url, &["submit", "--file", path_str(&empty)]).await;
    assert!(run.error_line().contains("no tasks in it"), "{run:?}");
}

#[tokio::test]
async fn batch_where_no_item_is_valid_still_lists_them() {
    let api = FakeApi::start().await;
    let file = jsonl_file("{\"type\": \"\"}\n{}\n");
    let run = taskq(&api.url, &["submit", "--file", path_str(&file)]).await;
    assert_eq!(run.error_line(), "error: 2 of 2 tasks were rejected");
    assert!(
        run.stdout
            .starts_with("0 of 2 tasks accepted, 2 rejected\n"),
        "{run:?}"
    );
    assert!(run.stdout.contains("\n2     invalid_field"), "{run:?}");
}

#[tokio::test]
async fn batch_stops_at_a_failed_chunk_and_says_where_to_resume() {
    let api = FakeApi::start().await;
    let lines: String = (0..6)
        .map(|i| format!("{{\"type\": \"t{i}\"}}\n"))
        .collect();
    let file = jsonl_file(&lines);
    // Chunks of 4 exceed the fake's batch limit of 3: the first chunk fails as a whole.
    let run = taskq(
        &api.url,
        &["submit", "--file", path_str(&file), "--batch-size", "4"],
    )
    .await;
    assert_eq!(
        run.error_line(),
        "error: the tasks from line 1 on were not sent: \
         4 tasks in one batch; the limit is 3 (TASKQ_MAX_BATCH) (batch_too_large, HTTP 413)"
    );
    assert_eq!(
        run.stdout,
        "0 of 6 tasks accepted, 0 rejected\nnot sent: the tasks from line 1 on (resume from there)\n"
    );
    assert_eq!(api.seen().len(), 1);
    // With chunks of 3 everything goes through, in two requests.
    let run = taskq_with(
        Some(&api.url),
        &["submit", "--file", path_str(&file)],
        &[("TASKQ_BATCH_SIZE", "3")],
        None,
    )
    .await;
    assert_eq!(run.ok(), "6 of 6 tasks accepted, 0 rejected\n");
    assert_eq!(api.seen().len(), 3);
}
