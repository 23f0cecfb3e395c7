//! Observability end to end: OTLP traces from the real api and worker binaries into an
//! OTLP/gRPC receiver run by the test, Prometheus metrics that move, readiness that
//! follows Redis, JSON logs with trace and task ids, and no secrets in any output.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_core::{TaskId, TaskStatus};
use taskq_testkit::otlp::{Receiver, Span};
use taskq_testkit::{ChildGuard, free_port, mongo_uri, wait_until, workspace_bin};

use crate::harness::{Env, live, metric_value, ready_within, scrape_metrics, serve_router};

const T: Duration = Duration::from_secs(30);

/// The api and worker binaries of one test.
struct Binaries {
    api: ChildGuard,
    worker: ChildGuard,
    api_url: String,
    worker_url: String,
}

fn spawn_binaries(env: &Env, extra: &[(&str, String)], mongodb_uri: &str) -> Binaries {
    let api_port = free_port();
    let worker_port = free_port();
    let common = |cmd: &mut Command| {
        cmd.env("TASKQ_REDIS_URL", env.redis.url())
            .env("TASKQ_MONGODB_URI", mongodb_uri)
            .env("TASKQ_MONGODB_DATABASE", &env.db)
            .env("TASKQ_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("TASKQ_AUTH", "off")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        for (k, v) in extra {
            cmd.env(k, v);
        }
    };
    let mut api = Command::new(workspace_bin("taskq-api"));
    common(&mut api);
    api.env("TASKQ_LISTEN", format!("127.0.0.1:{api_port}"));
    let mut worker = Command::new(workspace_bin("taskq-worker"));
    common(&mut worker);
    worker.env("TASKQ_LISTEN", format!("127.0.0.1:{worker_port}"));
    Binaries {
        api: ChildGuard::spawn_logged("taskq-api", &mut api),
        worker: ChildGuard::spawn_logged("taskq-worker", &mut worker),
        api_url: format!("http://127.0.0.1:{api_port}"),
        worker_url: format!("http://127.0.0.1:{worker_port}"),
    }
}

async fn ready(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() == StatusCode::OK)
        .unwrap_or(false)
}

async fn record(http: &reqwest::Client, base: &str, id: TaskId) -> Value {
    http.get(format!("{base}/v1/tasks/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_runs_from_the_submit_request_through_every_attempt() {
    let (recv, otlp) = Receiver::start().await;
    // A webhook that fails its first call and records every traceparent it gets.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (c, s) = (calls.clone(), seen.clone());
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                    s.lock().expect("lock").push(tp.to_owned());
                }
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let hook_addr = serve_router(hook).await;

    let env = Env::start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("TASKQ_HTTP_ALLOW", format!("http://{hook_addr}/")),
        // Spans are exported whatever the log filter: the api logs nothing below `warn`
        // here, and the worker only its executor's lines (checked below).
        ("RUST_LOG", "warn,taskq_worker::executor=info".to_owned()),
    ];
    let mut bins = spawn_binaries(&env, &otel, &mongo_uri());
    let http = reqwest::Client::new();
    assert!(ready_within(&http, &bins.api_url, T).await);
    assert!(ready_within(&http, &bins.worker_url, T).await);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = http
        .post(format!("{}/v1/tasks", bins.api_url))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(
            &json!({"type": "http", "max_attempts": 3, "backoff": {"initial_ms": 10},
                      "payload": {"url": format!("http://{hook_addr}/hook")}}),
        )
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id: TaskId = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            record(&http, &bins.api_url, id).await["status"] == TaskStatus::Succeeded.as_str()
        })
        .await
    );
    // Shutting down flushes the exporters.
    bins.api.terminate();
    bins.worker.terminate();
    assert!(
        bins.api.wait_timeout(T).is_some_and(|s| s.success()),
        "{}",
        bins.api.log()
    );
    assert!(
        bins.worker.wait_timeout(T).is_some_and(|s| s.success()),
        "{}",
        bins.worker.log()
    );

    let spans = recv.spans();
    let ours: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let request = ours
        .iter()
        .find(|s| s.name == "POST /v1/tasks")
        .unwrap_or_else(|| panic!("no request span in {spans:#?}"));
    assert_eq!(request.service, "taskq-api");
    assert_eq!(
        request.parent, caller_span,
        "the incoming traceparent is honoured"
    );
    let enqueue = ours
        .iter()
        .find(|s| s.name == "task.enqueue")
        .unwrap_or_else(|| panic!("no enqueue span in {ours:#?}"));
    assert_eq!(enqueue.parent, request.span_id);
    assert_eq!(enqueue.attrs.get("task.id"), Some(&id.to_string()));
    let mut attempts: Vec<&&Span> = ours.iter().filter(|s| s.name == "task.process").collect();
    attempts.sort_by_key(|s| s.attrs.get("task.attempt").cloned());
    assert_eq!(attempts.len(), 2, "{ours:#?}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.service, "taskq-worker");
        assert_eq!(
            a.parent, request.span_id,
            "each attempt is a child of the submit span"
        );
        assert_eq!(a.attrs.get("task.id"), Some(&id.to_string()));
        assert_eq!(a.attrs.get("task.type").map(String::as_str), Some("http"));
        assert_eq!(
            a.attrs.get("task.queue").map(String::as_str),
            Some("default")
        );
        assert_eq!(a.attrs.get("task.attempt"), Some(&(i + 1).to_string()));
    }
    assert_eq!(
        attempts[0].attrs.get("task.outcome").map(String::as_str),
        Some("failed")
    );
    assert!(
        attempts[0]
            .attrs
            .get("error.message")
            .is_some_and(|e| e.contains("503"))
    );
    assert_eq!(
        attempts[1].attrs.get("task.outcome").map(String::as_str),
        Some("succeeded")
    );
    // The handler's outgoing requests carry the attempt's own span as parent.
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    for (tp, a) in seen.iter().zip(&attempts) {
        assert_eq!(tp, &format!("00-{trace_id}-{}-01", a.span_id));
    }

    // JSON logs carry the task id and the trace id, on the worker's side too.
    let log = bins.worker.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "attempt failed")
        .unwrap_or_else(|| panic!("no JSON 'attempt failed' line in:\n{log}"));
    assert_eq!(line["span"]["task.id"], id.to_string(), "{line}");
    assert_eq!(line["span"]["trace_id"], trace_id, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_as_tasks_run() {
    let env = Env::start().await;
    let w = env.default_worker();
    // The worker's own metrics server, as the binary serves it.
    let router = taskq_worker::health_router(w.worker.clone());
    let worker_url = format!("http://{}", serve_router(router).await);

    let scrape = |base: String| {
        let http = env.http.clone();
        async move { scrape_metrics(&http, &base).await }
    };
    let value = metric_value;
    let before = scrape(worker_url.clone()).await;
    assert_eq!(value(&before, "taskq_worker_inflight "), 0.0);
    assert_eq!(value(&before, "taskq_worker_slots "), 16.0, "{before}");

    let ok = env.submit(json!({"type": "echo", "payload": 1})).await;
    let bad = env
        .submit(json!({"type": "fail", "max_attempts": 2, "backoff": {"initial_ms": 10}}))
        .await;
    let later = env.submit(json!({"type": "noop", "delay_ms": 60000})).await;
    env.wait_status(ok, TaskStatus::Succeeded, T).await;
    env.wait_status(bad, TaskStatus::Dead, T).await;
    assert_eq!(env.record(later).await["status"], "scheduled");

    let api = scrape(env.api.clone()).await;
    let worker = scrape(worker_url.clone()).await;
    let echo = "{queue=\"default\",type=\"echo\"}";
    let fail = "{queue=\"default\",type=\"fail\"}";
    let scheduled = "taskq_queue_depth{queue=\"default\",state=\"scheduled\"}";
    assert_values(
        &api,
        &[
            (format!("taskq_tasks_submitted_total{echo}"), 1.0),
            (
                "taskq_http_requests_total{method=\"POST\",route=\"/v1/tasks\",status=\"201\"}"
                    .to_owned(),
                3.0,
            ),
            (scheduled.to_owned(), 1.0),
        ],
    );
    assert!(
        api.contains("taskq_http_request_duration_seconds_bucket{"),
        "{api}"
    );
    assert_values(
        &worker,
        &[
            (format!("taskq_tasks_started_total{echo}"), 1.0),
            (format!("taskq_tasks_succeeded_total{echo}"), 1.0),
            (format!("taskq_tasks_failed_total{fail}"), 2.0),
            (format!("taskq_tasks_retried_total{fail}"), 1.0),
            (format!("taskq_tasks_dead_total{fail}"), 1.0),
            (format!("taskq_task_duration_seconds_count{echo}"), 1.0),
            (
                "taskq_task_wait_seconds_count{queue=\"default\"}".to_owned(),
                3.0,
            ),
            (scheduled.to_owned(), 1.0),
        ],
    );
    assert!(
        value(&worker, "taskq_store_flush_duration_seconds_count") > 0.0,
        "{worker}"
    );
    w.shutdown().await;
}

/// Asserts that each series in `want` has its value in the Prometheus text `text`.
fn assert_values(text: &str, want: &[(String, f64)]) {
    for (series, value) in want {
        assert_eq!(metric_value(text, series), *value, "{series} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_redis() {
    let mut env = Env::start().await;
    let w = env.default_worker();
    let router = taskq_worker::health_router(w.worker.clone());
    let worker_url = format!("http://{}", serve_router(router).await);
    let http = env.http.clone();
    let api = env.api.clone();
    for base in [&api, &worker_url] {
        assert!(ready_within(&http, base, T).await, "{base}");
        assert!(live(&http, base).await, "{base} is not live");
    }
    env.redis.stop();
    for base in [&api, &worker_url] {
        assert!(
            wait_until(T, Duration::from_millis(100), || async {
                !ready(&http, base).await
            })
            .await,
            "{base} stayed ready without Redis"
        );
        // Liveness does not depend on Redis.
        assert!(live(&http, base).await, "{base} is not live");
    }
    env.redis.restart();
    for base in [&api, &worker_url] {
        assert!(ready_within(&http, base, T).await, "{base}");
    }
    // A draining worker is not ready.
    let worker = w.worker.clone();
    w.shutdown().await;
    assert!(worker.ready(Duration::from_secs(2)).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    let env = Env::start().await;
    let secret = "s3cr3t-Pa55word";
    let addr = taskq_testkit::mongo_addr();
    // Credentials the server will refuse: the binaries log connection errors.
    let uri =
        format!("mongodb://taskq:{secret}@{addr}/?authSource=admin&serverSelectionTimeoutMS=500");
    let token = "admin-token-0123456789-secret";
    let mut bins = spawn_binaries(
        &env,
        &[
            ("RUST_LOG", "debug".to_owned()),
            ("TASKQ_AUTH", "on".to_owned()),
            ("TASKQ_TOKENS", format!("admin:{token}")),
        ],
        &uri,
    );
    let http = reqwest::Client::new();
    let wrong_token = "wrong-token-0123456789";
    // Let both run into the authentication failure and retry a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The right token passes authentication and the submit reaches MongoDB, which
    // refuses the credentials: 503. The wrong one stops at authentication: 401. Either
    // answer proves the request went through the layers that log it.
    for (bearer, status) in [
        (token, StatusCode::SERVICE_UNAVAILABLE),
        (wrong_token, StatusCode::UNAUTHORIZED),
    ] {
        let answer = http
            .post(format!("{}/v1/tasks", bins.api_url))
            .bearer_auth(bearer)
            .json(&json!({"type": "noop"}))
            .send()
            .await
            .expect("the api answers a submit");
        assert_eq!(answer.status(), status);
    }
    bins.api.terminate();
    bins.worker.terminate();
    bins.api.wait_timeout(T);
    bins.worker.wait_timeout(T);
    let (api_log, worker_log) = (bins.api.log(), bins.worker.log());
    // The api logged the requests themselves (at debug), so the checks below read a log
    // that had the chance to leak the tokens.
    assert!(
        api_log.contains("/v1/tasks"),
        "the api did not log the requests:\n{api_log}"
    );
    for (name, log) in [("api", &api_log), ("worker", &worker_log)] {
        assert!(!log.trim().is_empty(), "{name} logged nothing");
        for (what, secret) in [
            ("the MongoDB password", secret),
            ("the API token", token),
            ("the refused API token", wrong_token),
        ] {
            assert!(!log.contains(secret), "{name} logged {what}:\n{log}");
        }
    }
    // `--help` shows where the URI comes from, not its value.
    let help = Command::new(workspace_bin("taskq-api"))
        .arg("--help")
        .env("TASKQ_MONGODB_URI", &uri)
        .output()
        .expect("help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains(secret));
    let help = Command::new(workspace_bin("taskq-api"))
        .arg("--help")
        .env("TASKQ_TOKENS", format!("admin:{token}"))
        .output()
        .expect("help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains(token));
}
