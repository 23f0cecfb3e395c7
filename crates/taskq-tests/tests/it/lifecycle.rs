//! Submit → MongoDB → Redis → worker → MongoDB → HTTP, for each lifecycle feature.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_core::{TaskId, TaskStatus};
use taskq_worker::{HandlerError, TaskContext};

use crate::harness::{Env, Recorder};

const T: Duration = Duration::from_secs(20);

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// The statuses of a record's history, oldest first.
fn event_statuses(rec: &Value) -> Vec<&str> {
    rec["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn submitted_task_is_durable_then_runs_and_is_recorded() {
    let env = Env::start().await;
    let body = env
        .submit_expect(
            json!({"type": "echo", "payload": {"n": 1, "big": 18446744073709551615u64}}),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(body["status"], "queued");
    let id: TaskId = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    // Before any worker runs: the record is in MongoDB and the task in Redis.
    let stored = env.store.get(id).await.expect("get").expect("record");
    assert_eq!(stored.record.status, TaskStatus::Queued);
    assert_eq!(env.redis_total("default").await, 1);

    let w = env.default_worker();
    let rec = env.wait_status(id, TaskStatus::Succeeded, T).await;
    assert_eq!(
        rec["result"],
        json!({"n": 1, "big": 18446744073709551615u64})
    );
    assert_eq!(rec["attempts"], 1);
    assert!(rec["started_at"].is_string() && rec["finished_at"].is_string());
    assert_eq!(event_statuses(&rec), ["queued", "running", "succeeded"]);
    // Finished tasks leave Redis.
    assert_eq!(env.redis_total("default").await, 0);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_submit_accepts_valid_items_in_order() {
    let env = Env::start().await;
    let tasks: Vec<_> = (0..250)
        .map(|i| json!({"type": "noop", "payload": i}))
        .collect();
    let (status, body) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 250);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["status"], "queued");
    }
    assert_eq!(env.total_records().await, 250);
    assert_eq!(env.redis_total("default").await, 250);
    let w = env.default_worker();
    let ids: Vec<TaskId> = results
        .iter()
        .filter_map(|r| r["id"].as_str()?.parse().ok())
        .collect();
    env.wait_status(ids[249], TaskStatus::Succeeded, T).await;
    taskq_testkit::wait_until(T, Duration::from_millis(50), || async {
        env.counts().await.get(&TaskStatus::Succeeded) == Some(&250)
    })
    .await
    .then_some(())
    .expect("all 250 succeeded");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_and_scheduled_tasks_run_at_their_time() {
    let env = Env::start().await;
    let w = env.default_worker();
    let delayed = env.submit(json!({"type": "noop", "delay_ms": 1500})).await;
    let at = (Utc::now() + chrono::Duration::milliseconds(1200)).to_rfc3339();
    let scheduled = env.submit(json!({"type": "noop", "run_at": at})).await;
    for id in [delayed, scheduled] {
        let rec = env.record(id).await;
        assert_eq!(rec["status"], "scheduled", "{rec}");
    }
    for id in [delayed, scheduled] {
        let rec = env.wait_status(id, TaskStatus::Succeeded, T).await;
        let due = time(&rec["scheduled_at"]);
        let started = time(&rec["started_at"]);
        assert!(started >= due, "started {started} before its time {due}");
        assert_eq!(
            event_statuses(&rec),
            ["scheduled", "queued", "running", "succeeded"]
        );
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn high_priority_runs_before_normal_before_low() {
    let env = Env::start().await;
    let mut ids = Vec::new();
    for p in ["low", "normal", "high", "low", "normal", "high"] {
        ids.push((p, env.submit(json!({"type": "rec", "priority": p})).await));
    }
    let rec = Recorder::default();
    let mut registry = Env::builtins();
    rec.register(&mut registry, "rec");
    let mut settings = Env::settings("default");
    settings.concurrency = 1;
    settings.fetch_batch = 1;
    let w = env.worker(settings, registry);
    for (_, id) in &ids {
        env.wait_status(*id, TaskStatus::Succeeded, T).await;
    }
    let order: Vec<&str> = rec
        .runs()
        .iter()
        .map(|(id, _, _)| {
            ids.iter()
                .find(|(_, i)| i == id)
                .map(|(p, _)| *p)
                .expect("known")
        })
        .collect();
    assert_eq!(order, ["high", "high", "normal", "normal", "low", "low"]);
    w.shutdown().await;
}

async fn submit_to_queues(env: &Env, per_queue: usize) {
    for q in ["critical", "default", "low"] {
        let tasks: Vec<_> = (0..per_queue)
            .map(|_| json!({"type": "rec", "queue": q}))
            .collect();
        let (status, body) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

async fn queue_order(env: &Env, strict: bool, per_queue: usize) -> Vec<String> {
    let rec = Recorder::default();
    let mut registry = Env::builtins();
    rec.register(&mut registry, "rec");
    let mut settings = Env::settings("critical=6,default=3,low=1");
    settings.queues = taskq_core::QueueSelection::new(
        "critical=6,default=3,low=1".parse().expect("weights"),
        strict,
    );
    settings.concurrency = 1;
    settings.fetch_batch = 1;
    let w = env.worker(settings, registry);
    let total = (per_queue * 3) as u64;
    assert!(
        taskq_testkit::wait_until(T, Duration::from_millis(50), || async {
            env.counts().await.get(&TaskStatus::Succeeded).copied() == Some(total)
        })
        .await,
        "all tasks should succeed"
    );
    w.shutdown().await;
    let runs = rec.runs();
    let mut queues = Vec::new();
    for (id, _, _) in runs {
        let r = env.store.get(id).await.expect("get").expect("record");
        queues.push(r.record.queue.to_string());
    }
    queues
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_queues_drain_in_weight_order() {
    let env = Env::start().await;
    submit_to_queues(&env, 20).await;
    let order = queue_order(&env, true, 20).await;
    let expected: Vec<String> = ["critical", "default", "low"]
        .iter()
        .flat_map(|q| std::iter::repeat_n(q.to_string(), 20))
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_queues_share_by_weight_without_starving() {
    let env = Env::start().await;
    submit_to_queues(&env, 150).await;
    let order = queue_order(&env, false, 150).await;
    // While all three queues have work (the first 150 runs), each is served roughly in
    // proportion to its weight, and none starves.
    let head = &order[..150];
    let n = |q: &str| head.iter().filter(|x| *x == q).count();
    let (c, d, l) = (n("critical"), n("default"), n("low"));
    assert!(
        c > d && d > l && l > 0,
        "critical {c}, default {d}, low {l}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_with_backoff_then_die_and_can_be_retried() {
    let env = Env::start().await;
    let healed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut registry = Env::builtins();
    let h = healed.clone();
    registry.register("flaky", move |ctx: TaskContext| {
        let healed = h.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            if healed {
                Ok(Some(json!({"attempt": ctx.attempt})))
            } else {
                Err(HandlerError::retry(format!(
                    "broken on attempt {}",
                    ctx.attempt
                )))
            }
        }
    });
    let w = env.worker(Env::settings("default"), registry);
    let id = env
        .submit(json!({"type": "flaky", "max_attempts": 3, "backoff": {"initial_ms": 100, "max_ms": 400, "jitter": 0.0}}))
        .await;
    let rec = env.wait_status(id, TaskStatus::Dead, T).await;
    assert_eq!(rec["attempts"], 3);
    assert_eq!(rec["last_error"], "broken on attempt 3");
    let events: Vec<(String, u64)> = rec["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["status"].as_str().unwrap_or("").to_owned(),
                e["attempt"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let retrying: Vec<_> = events.iter().filter(|(s, _)| s == "retrying").collect();
    assert_eq!(retrying.len(), 2, "{events:?}");
    // The backoff delays double: 100 ms then 200 ms between the failure and the retry.
    let at = |status: &str, attempt: u64| {
        rec["events"]
            .as_array()
            .and_then(|es| {
                es.iter()
                    .find(|e| e["status"] == status && e["attempt"] == attempt)
            })
            .map(|e| time(&e["at"]))
            .expect("event")
    };
    assert!(at("running", 2) - at("retrying", 1) >= chrono::Duration::milliseconds(100));
    assert!(at("running", 3) - at("retrying", 2) >= chrono::Duration::milliseconds(200));

    // A dead task is kept until retried; retrying a non-dead task is a conflict.
    let (status, body) = env.get("/v1/tasks?status=dead").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tasks"][0]["id"], id.to_string());
    healed.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = env.post(&format!("/v1/tasks/{id}/retry"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rec = env.wait_status(id, TaskStatus::Succeeded, T).await;
    assert_eq!(rec["result"], json!({"attempt": 1}));
    let (status, body) = env.post(&format!("/v1/tasks/{id}/retry"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (status, _) = env
        .post(&format!("/v1/tasks/{}/retry", TaskId::new()), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn non_retryable_errors_die_at_once() {
    let env = Env::start().await;
    let w = env.default_worker();
    let id = env
        .submit(json!({"type": "fail", "payload": {"permanent": true}, "max_attempts": 5}))
        .await;
    let rec = env.wait_status(id, TaskStatus::Dead, T).await;
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["last_error"], "fail handler failed attempt 1");
    // A task of a type no handler knows fails with a clear error too.
    let id = env
        .submit(json!({"type": "nobody-handles-this", "max_attempts": 1}))
        .await;
    let rec = env.wait_status(id, TaskStatus::Dead, T).await;
    assert!(
        rec["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no handler registered")
    );
    w.shutdown().await;
}

/// A payload comes back as it was sent, numbers included, through MongoDB, Redis and a
/// handler (`echo` returns its payload as the result); a number that taskq could not
/// keep exactly is refused, in a single submit and in a batch item alike.
#[tokio::test(flavor = "multi_thread")]
async fn payload_numbers_come_back_exactly_or_are_refused() {
    let env = Env::start().await;
    let w = env.default_worker();
    let payload = r#"{"u64": 18446744073709551615, "i64": -9223372036854775808,
        "tenth": 0.1, "huge": 1e308, "tiny": 5e-324, "third": 0.3333333333333333,
        "nested": [9007199254740993, -0.5]}"#;
    let single = format!(r#"{{"type": "echo", "payload": {payload}}}"#);
    let (status, body) = env
        .post_raw("/v1/tasks", Some("application/json"), single.into_bytes())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id: TaskId = body["id"].as_str().expect("id").parse().expect("task id");
    env.wait_status(id, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    let text = env
        .http
        .get(format!("{}/v1/tasks/{id}", env.api))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    for literal in [
        "18446744073709551615",
        "-9223372036854775808",
        "0.1",
        "1e+308", // the same number, as serde_json writes it
        "5e-324",
        "0.3333333333333333",
        "[9007199254740993,-0.5]",
    ] {
        // Once in the payload, once in the result.
        assert_eq!(text.matches(literal).count(), 2, "{literal} in {text}");
    }

    let big = "123456789012345678901234567890";
    let single = format!(r#"{{"type": "echo", "payload": {{"n": {big}}}}}"#);
    let (status, body) = env
        .post_raw("/v1/tasks", Some("application/json"), single.into_bytes())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "inexact_number", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(big)),
        "{body}"
    );
    let batch = format!(
        r#"{{"tasks": [{{"type": "echo", "payload": {{"n": {big}}}}}, {{"type": "echo", "payload": 3.14159265358979323846}}, {{"type": "noop"}}]}}"#
    );
    let (status, body) = env
        .post_raw(
            "/v1/tasks/batch",
            Some("application/json"),
            batch.into_bytes(),
        )
        .await;
    assert_eq!(status.as_u16(), 207, "{body}");
    assert_eq!(
        body["results"][0]["error"]["code"], "inexact_number",
        "{body}"
    );
    assert_eq!(
        body["results"][1]["error"]["code"], "inexact_number",
        "{body}"
    );
    assert!(body["results"][2]["id"].is_string(), "{body}");
    w.shutdown().await;
}

/// Concurrent single submits: every request is answered with its own task, each task is
/// in both stores, and each runs once, whatever queue it went to.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_single_submits_each_get_their_own_durable_task() {
    let env = Env::start().await;
    let recorder = Recorder::default();
    let mut registry = Env::builtins();
    recorder.register(&mut registry, "rec");
    let w = env.worker(Env::settings("q0,q1,q2"), registry);
    let answers = futures::future::join_all((0..300).map(|i| {
        let env = &env;
        async move {
            let rec = env
                .submit_expect(
                    json!({"type": "rec", "queue": format!("q{}", i % 3), "payload": {"i": i}}),
                    StatusCode::CREATED,
                )
                .await;
            assert_eq!(rec["payload"]["i"], i, "answered with another task: {rec}");
            assert_eq!(rec["queue"], format!("q{}", i % 3));
            rec["id"]
                .as_str()
                .expect("id")
                .parse::<TaskId>()
                .expect("id")
        }
    }))
    .await;
    let mut unique = answers.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 300);
    for id in &answers {
        env.wait_status(*id, TaskStatus::Succeeded, Duration::from_secs(60))
            .await;
    }
    let runs = recorder.runs();
    assert_eq!(runs.len(), 300, "each task runs once");
    w.shutdown().await;
}
