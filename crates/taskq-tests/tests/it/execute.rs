//! Execution guarantees: panics, timeouts, graceful shutdown, leases after a crash,
//! MongoDB outages, exactly-once in normal operation, and the http handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use taskq_core::{TaskId, TaskStatus};
use taskq_testkit::{ChildGuard, mongo_uri, wait_until, workspace_bin};
use taskq_worker::{HandlerError, TaskContext};

use crate::harness::{Env, Overlap, serve_router, store_via_proxy, strings};

const T: Duration = Duration::from_secs(30);

async fn all_succeeded(env: &Env, n: u64, timeout: Duration) -> bool {
    wait_until(timeout, Duration::from_millis(100), || async {
        env.counts().await.get(&TaskStatus::Succeeded).copied() == Some(n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_fails_only_its_attempt() {
    let env = Env::start().await;
    let mut settings = Env::settings("default");
    settings.concurrency = 4;
    let w = env.worker(settings, Env::builtins());
    let long = env
        .submit(json!({"type": "sleep", "payload": {"ms": 800}}))
        .await;
    let boom = env
        .submit(json!({"type": "fail", "payload": {"panic": true}, "max_attempts": 2, "backoff": {"initial_ms": 10}}))
        .await;
    let rec = env.wait_status(boom, TaskStatus::Dead, T).await;
    assert_eq!(rec["attempts"], 2);
    assert!(
        rec["last_error"]
            .as_str()
            .unwrap_or("")
            .starts_with("handler panicked: fail handler asked to panic"),
        "{rec}"
    );
    // The slot running beside it finished normally, and the worker keeps taking work.
    env.wait_status(long, TaskStatus::Succeeded, T).await;
    let after = env.submit(json!({"type": "noop"})).await;
    env.wait_status(after, TaskStatus::Succeeded, T).await;
    w.shutdown().await;
}

/// A handler's progress reports reach its record while it runs, readable through the
/// api; a retry's reports replace the failed attempt's; a finished task keeps the last
/// report written while it ran.
#[tokio::test(flavor = "multi_thread")]
async fn progress_is_readable_while_a_task_runs() {
    let env = Env::start().await;
    let mut registry = Env::builtins();
    registry.register("steps", |ctx: TaskContext| async move {
        ctx.report_progress(json!({"attempt": ctx.attempt}))
            .map_err(|e| HandlerError::permanent(e.to_string()))?;
        // Past the worker's next progress write.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        if ctx.attempt == 1 {
            return Err(HandlerError::retry("first attempt fails"));
        }
        Ok(None)
    });
    let w = env.worker(Env::settings("default"), registry);
    let sleeper = env
        .submit(json!({"type": "sleep", "payload": {"ms": 3000, "progress_every_ms": 100}}))
        .await;
    // Two different reports seen while the task runs: the record follows the handler.
    let deadline = tokio::time::Instant::now() + T;
    let mut seen: Vec<u64> = Vec::new();
    while seen.len() < 2 {
        let rec = env.record(sleeper).await;
        assert_ne!(
            rec["status"], "succeeded",
            "finished before two reports were seen: {rec}"
        );
        if rec["status"] == "running" {
            let p = &rec["progress"];
            if let Some(slept) = p["value"]["slept_ms"].as_u64() {
                assert_eq!(p["attempt"], 1, "{rec}");
                assert_eq!(p["value"]["ms"], 3000, "{rec}");
                if seen.last() != Some(&slept) {
                    seen.push(slept);
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "progress seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen[0] < seen[1], "{seen:?}");
    let done = env.wait_status(sleeper, TaskStatus::Succeeded, T).await;
    let at = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("not a time: {v}"))
    };
    assert!(
        at(&done["progress"]["at"]) <= at(&done["finished_at"]),
        "{done}"
    );
    assert!(
        done["progress"]["value"]["slept_ms"].as_u64() >= seen.last().copied(),
        "{done}"
    );

    let steps = env
        .submit(json!({"type": "steps", "max_attempts": 2, "backoff": {"initial_ms": 1500, "jitter": 0.0}}))
        .await;
    let first = env.wait_status(steps, TaskStatus::Retrying, T).await;
    assert_eq!(
        first["progress"],
        json!({"attempt": 1, "value": {"attempt": 1}, "at": first["progress"]["at"]})
    );
    let done = env.wait_status(steps, TaskStatus::Succeeded, T).await;
    assert_eq!(done["progress"]["attempt"], 2, "{done}");
    assert_eq!(done["progress"]["value"], json!({"attempt": 2}), "{done}");
    // No report after the end: the record stays as it is.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(env.record(steps).await["progress"], done["progress"]);
    w.shutdown().await;
}

/// The worker's fetch loops share its slots: however many tasks are queued, no more
/// attempts run at once than `concurrency`, and every slot is used.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_runs_at_most_its_slots_at_once_and_fills_them() {
    let env = Env::start().await;
    let overlap = Overlap::default();
    let mut registry = Env::builtins();
    overlap.register(&mut registry, "hold", Duration::from_millis(20));
    let mut settings = Env::settings("default");
    settings.concurrency = 3;
    let w = env.worker(settings, registry);
    let tasks: Vec<_> = (0..200).map(|_| json!({"type": "hold"})).collect();
    let (status, body) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(all_succeeded(&env, 200, T).await);
    assert_eq!(overlap.peak(), 3, "at most 3 at once, and 3 reached");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_attempt_is_cancelled_and_fails() {
    let env = Env::start().await;
    let dropped = Arc::new(AtomicBool::new(false));
    let mut registry = Env::builtins();
    let d = dropped.clone();
    registry.register("hang", move |_ctx: TaskContext| {
        // Dropped when the worker cancels the handler's future.
        struct OnDrop(Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let guard = OnDrop(d.clone());
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(None)
        }
    });
    let w = env.worker(Env::settings("default"), registry);
    let id = env
        .submit(json!({"type": "hang", "timeout_ms": 300, "max_attempts": 1}))
        .await;
    let rec = env.wait_status(id, TaskStatus::Dead, T).await;
    assert_eq!(rec["last_error"], "timed out after 300 ms");
    assert!(
        wait_until(T, Duration::from_millis(20), || async {
            dropped.load(Ordering::SeqCst)
        })
        .await
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_short_tasks_and_releases_long_ones() {
    let env = Env::start().await;
    let mut settings = Env::settings("default");
    settings.shutdown_grace = Duration::from_millis(3000);
    settings.concurrency = 16;
    let w = env.worker(settings, Env::builtins());
    // Several long ones, each of whose handlers returns an error the moment it sees the
    // stop signal: none of those errors may count.
    let mut long = Vec::new();
    for _ in 0..8 {
        long.push(
            env.submit(json!({"type": "sleep", "payload": {"ms": 60000}}))
                .await,
        );
    }
    for id in &long {
        env.wait_status(*id, TaskStatus::Running, T).await;
    }
    // The short one starts last, so the shutdown begins while it runs: waiting for it
    // before the long ones had started could see it finished already on a loaded machine.
    let short = env
        .submit(json!({"type": "sleep", "payload": {"ms": 1000}}))
        .await;
    env.wait_status(short, TaskStatus::Running, T).await;
    w.shutdown().await;
    // The short task finished inside the grace period.
    assert_eq!(env.record(short).await["status"], "succeeded");
    // The long ones went back to their queue, not counted as failures.
    for id in &long {
        let rec = env.record(*id).await;
        assert_eq!(rec["status"], "queued", "{rec}");
        assert_eq!(rec["attempts"], 0);
        assert!(rec["last_error"].is_null());
    }
    assert_eq!(
        env.broker
            .counts(&"default".parse().expect("q"))
            .await
            .expect("counts")
            .queued,
        8
    );
    // Nothing was fetched after the shutdown began.
    let later = env.submit(json!({"type": "noop"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.record(later).await["status"], "queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_task_completes_elsewhere_after_its_lease() {
    let env = Env::start().await;
    let mut worker = ChildGuard::spawn_logged(
        "taskq-worker",
        std::process::Command::new(workspace_bin("taskq-worker"))
            .env(
                "TASKQ_LISTEN",
                format!("127.0.0.1:{}", taskq_testkit::free_port()),
            )
            .env("TASKQ_REDIS_URL", env.redis.url())
            .env("TASKQ_MONGODB_URI", mongo_uri())
            .env("TASKQ_MONGODB_DATABASE", &env.db)
            .env("TASKQ_LEASE_MS", "1000")
            .env("TASKQ_WORKER_ID", "doomed"),
    );
    let id = env
        .submit(json!({"type": "sleep", "payload": {"ms": 2500}}))
        .await;
    let rec = env.wait_status(id, TaskStatus::Running, T).await;
    let first_run = rec["events"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["status"] == "running"));
    assert_eq!(
        first_run.map(|e| e["worker"].clone()),
        Some(json!("doomed")),
        "{rec:#}"
    );
    // The heartbeat keeps the 1 s lease alive while the handler runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.redis_total("default").await, 1);
    assert_eq!(env.record(id).await["status"], "running");
    worker.kill_9();

    let mut settings = Env::settings("default");
    settings.worker_id = "survivor".into();
    let w = env.worker(settings, Env::builtins());
    let rec = env.wait_status(id, TaskStatus::Succeeded, T).await;
    assert_eq!(rec["attempts"], 2, "{rec}");
    let events = rec["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["status"] == "queued"
            && e["error"]
                .as_str()
                .unwrap_or("")
                .starts_with("lease expired")),
        "{rec:#}"
    );
    assert_eq!(
        events.last().map(|e| e["worker"].clone()),
        Some(json!("survivor"))
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_updates_wait_out_a_mongodb_outage() {
    let env = Env::start().await;
    let (proxy, flaky_store) = store_via_proxy(&env).await;
    let mut settings = Env::settings("default");
    settings.concurrency = 8;
    let w = env.worker_with_store(settings, Env::builtins(), flaky_store);
    let tasks: Vec<_> = (0..200)
        .map(|_| json!({"type": "sleep", "payload": {"ms": 20}}))
        .collect();
    let (status, _) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED);
    // Cut MongoDB off from the worker mid-run.
    assert!(
        wait_until(T, Duration::from_millis(10), || async {
            env.counts()
                .await
                .get(&TaskStatus::Succeeded)
                .copied()
                .unwrap_or(0)
                > 10
        })
        .await
    );
    proxy.cut();
    // Tasks keep running (Redis is the only thing on the hot path)...
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            env.redis_total("default").await == 0
        })
        .await
    );
    // Read after the outage lasted a while: were the worker's writes reaching MongoDB
    // after all (a cut that cut nothing), every record would be `succeeded` by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = env
        .counts()
        .await
        .get(&TaskStatus::Succeeded)
        .copied()
        .unwrap_or(0);
    assert!(
        during < 200,
        "records were written while MongoDB was cut off: {during} of 200 succeeded"
    );
    proxy.restore();
    // ...and every held update lands once MongoDB is back.
    assert!(
        all_succeeded(&env, 200, T).await,
        "{:?}",
        env.counts().await
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_run_ten_thousand_tasks_exactly_once() {
    let env = Env::start().await;
    let runs: Arc<Mutex<HashMap<TaskId, u32>>> = Arc::default();
    let total = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for i in 0..4 {
        let mut registry = Env::builtins();
        let (r, t) = (runs.clone(), total.clone());
        registry.register("count", move |ctx: TaskContext| {
            *r.lock().expect("lock").entry(ctx.id).or_default() += 1;
            t.fetch_add(1, Ordering::Relaxed);
            async { Ok(None) }
        });
        let mut settings = Env::settings("default");
        settings.worker_id = format!("w{i}");
        settings.concurrency = 16;
        workers.push(env.worker(settings, registry));
    }
    for _ in 0..10 {
        let tasks: Vec<_> = (0..1000).map(|_| json!({"type": "count"})).collect();
        let (status, body) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert!(
        all_succeeded(&env, 10_000, Duration::from_secs(120)).await,
        "{:?}",
        env.counts().await
    );
    for w in workers {
        w.shutdown().await;
    }
    let runs = runs.lock().expect("lock");
    assert_eq!(runs.len(), 10_000);
    assert_eq!(total.load(Ordering::Relaxed), 10_000);
    assert!(runs.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_handler_maps_status_codes_to_outcomes() {
    use axum::http::{HeaderMap, StatusCode as S};
    use axum::routing::post;
    // (body, traceparent) of every webhook call.
    type Calls = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: Calls = Arc::default();
    let s = seen.clone();
    let hook = axum::Router::new().route(
        "/hook/{code}",
        post(
            move |axum::extract::Path(code): axum::extract::Path<u16>,
                  headers: HeaderMap,
                  body: String| {
                let s = s.clone();
                async move {
                    let tp = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    s.lock().expect("lock").push((body, tp));
                    (
                        S::from_u16(code).unwrap_or(S::INTERNAL_SERVER_ERROR),
                        "hook says hi",
                    )
                }
            },
        ),
    );
    let addr = serve_router(hook).await;

    let env = Env::start().await;
    let allow = format!("http://127.0.0.1:{}/hook/", addr.port());
    let w = env.worker(Env::settings("default"), Env::builtins_allowing(&allow));
    let url = |code: u16| format!("http://127.0.0.1:{}/hook/{code}", addr.port());
    let task = |code: u16| {
        json!({"type": "http", "max_attempts": 2, "backoff": {"initial_ms": 10},
               "payload": {"url": url(code), "body": {"code": code}}})
    };
    let ok = env.submit(task(200)).await;
    let not_found = env.submit(task(404)).await;
    let throttled = env.submit(task(429)).await;
    let broken = env.submit(task(503)).await;
    let forbidden_url = env
        .submit(json!({"type": "http", "payload": {"url": "http://10.1.2.3/x"}}))
        .await;
    let rec = env.wait_status(ok, TaskStatus::Succeeded, T).await;
    assert_eq!(
        rec["result"],
        json!({"status": 200, "body": "hook says hi"})
    );
    let rec = env.wait_status(not_found, TaskStatus::Dead, T).await;
    assert_eq!(rec["attempts"], 1, "4xx is not retried: {rec}");
    for id in [throttled, broken] {
        let rec = env.wait_status(id, TaskStatus::Dead, T).await;
        assert_eq!(rec["attempts"], 2, "429 and 5xx are retried: {rec}");
    }
    let rec = env.wait_status(forbidden_url, TaskStatus::Dead, T).await;
    assert_eq!(rec["attempts"], 1);
    assert!(
        rec["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("allow-list")
    );
    // A traceparent given on submit reaches the webhook.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = env
        .http
        .post(format!("{}/v1/tasks", env.api))
        .header("traceparent", tp)
        .json(&task(200))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id: TaskId = resp.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    env.wait_status(id, TaskStatus::Succeeded, T).await;
    assert!(
        seen.lock()
            .expect("lock")
            .iter()
            .any(|(_, t)| t.as_deref() == Some(tp))
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_errors_can_ask_for_a_later_retry() {
    let env = Env::start().await;
    let mut registry = Env::builtins();
    registry.register("later", |ctx: TaskContext| async move {
        if ctx.attempt == 1 {
            Err(HandlerError::RetryAfter {
                message: "come back later".into(),
                after: Duration::from_millis(700),
            })
        } else {
            Ok(None)
        }
    });
    let w = env.worker(Env::settings("default"), registry);
    let id = env
        .submit(json!({"type": "later", "backoff": {"initial_ms": 1}}))
        .await;
    let rec = env.wait_status(id, TaskStatus::Succeeded, T).await;
    let events = rec["events"].as_array().expect("events");
    let at = |s: &str, a: u64| {
        events
            .iter()
            .find(|e| e["status"] == s && e["attempt"] == a)
            .and_then(|e| {
                e["at"]
                    .as_str()?
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .ok()
            })
            .expect("event")
    };
    assert!(at("running", 2) - at("retrying", 1) >= chrono::Duration::milliseconds(700));
    w.shutdown().await;
}

/// A task that ran and finished in Redis while its worker could not write to MongoDB is
/// absent from Redis with its record still submit-pending, its updates waiting in the
/// outbox. Another worker's submit check must not take it for a submit that never reached
/// Redis: the record is never cancelled, and ends `succeeded` once MongoDB is back.
#[tokio::test(flavor = "multi_thread")]
async fn the_submit_check_leaves_tasks_whose_updates_wait_in_the_outbox() {
    let env = Env::start().await;
    let (proxy, flaky_store) = store_via_proxy(&env).await;
    let mut settings = Env::settings("default");
    settings.submit_check_interval = Duration::from_secs(3600);
    let runner = env.worker_with_store(settings, Env::builtins(), flaky_store);
    let warm = env.submit(json!({"type": "noop"})).await;
    env.wait_status(warm, TaskStatus::Succeeded, T).await;

    proxy.cut();
    let id = env.submit(json!({"type": "noop"})).await;
    // It runs and leaves Redis; its updates wait in the outbox.
    assert!(
        wait_until(T, Duration::from_millis(20), || async {
            env.redis_total("default").await == 0
        })
        .await
    );
    // A worker of another queue, whose submit check looks at every queue's records.
    let mut check = Env::settings("elsewhere");
    check.submit_grace = Duration::from_millis(300);
    check.submit_check_interval = Duration::from_millis(100);
    let checker = env.worker(check, Env::builtins());
    // Many rounds past the grace period: the record is still as the api wrote it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rec = env.record(id).await;
    assert_eq!(rec["status"], "queued", "{rec:#}");

    proxy.restore();
    env.wait_status(id, TaskStatus::Succeeded, T).await;
    let rec = env.record(id).await;
    let statuses: Vec<&str> = strings(&rec["events"], "status");
    assert_eq!(statuses, ["queued", "running", "succeeded"], "{rec:#}");
    checker.shutdown().await;
    runner.shutdown().await;
}
