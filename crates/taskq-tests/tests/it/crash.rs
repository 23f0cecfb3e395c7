//! Records after crashes: worker processes killed with SIGKILL over and over, and
//! submits whose Redis half never happened. Each test checks the records against what
//! really happened, never against taskq's own word: the executions are counted by an
//! HTTP server of the test that the built-in `http` handler calls, and the phantom
//! records are made by cutting Redis off from the api.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use taskq_core::{TaskId, TaskStatus};
use taskq_redis::{Broker, RedisConfig};
use taskq_testkit::{ChaosProxy, ChildGuard, free_port, mongo_uri, wait_until, workspace_bin};

use crate::harness::{Env, answer, kill_in_turn, serve_router};

/// Executions per task id, as the `http` handler's calls reached the test's server.
pub(crate) type Log = Arc<Mutex<HashMap<TaskId, u32>>>;

/// Starts an HTTP server that counts each call by its `taskq-task-id` header and answers
/// 200 after `delay`. Returns its base URL and the log.
pub(crate) async fn execution_log(delay: Duration) -> (String, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let app = axum::Router::new().route(
        "/hit",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let l = l.clone();
            async move {
                tokio::time::sleep(delay).await;
                if let Some(id) = headers
                    .get("taskq-task-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<TaskId>().ok())
                {
                    *l.lock().expect("log").entry(id).or_default() += 1;
                }
                "ok"
            }
        }),
    );
    let url = format!("http://{}", serve_router(app).await);
    (url, log)
}

/// A `taskq-worker` process on `env`'s Redis and database.
fn worker_process(env: &Env, name: &str, allow: &str) -> ChildGuard {
    worker_process_with(env, name, allow, &mongo_uri(), &[])
}

/// A `taskq-worker` process on `env`'s Redis and database, reaching MongoDB at `mongodb`,
/// with `extra` environment variables.
pub(crate) fn worker_process_with(
    env: &Env,
    name: &str,
    allow: &str,
    mongodb: &str,
    extra: &[(&str, &str)],
) -> ChildGuard {
    ChildGuard::spawn_logged(
        name,
        Command::new(workspace_bin("taskq-worker"))
            .env("TASKQ_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("TASKQ_REDIS_URL", env.redis.url())
            .env("TASKQ_MONGODB_URI", mongodb)
            .env("TASKQ_MONGODB_DATABASE", &env.db)
            .env("TASKQ_CONCURRENCY", "16")
            .env("TASKQ_LEASE_MS", "2000")
            .env("TASKQ_REAP_INTERVAL_MS", "200")
            .env("TASKQ_OUTBOX_CLAIM_IDLE_MS", "1000")
            .env("TASKQ_HTTP_ALLOW", allow)
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn records_match_the_executions_after_workers_are_killed_again_and_again() {
    const TASKS: usize = 3_000;
    let env = Env::start().await;
    let (url, log) = execution_log(Duration::from_millis(30)).await;
    let allow = format!("{url}/");
    let mut workers: Vec<ChildGuard> = (0..3)
        .map(|i| worker_process(&env, &format!("taskq-worker-{i}"), &allow))
        .collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| json!({"type": "http", "payload": {"url": format!("{url}/hit")}, "max_attempts": 20}))
        .collect();
    let mut ids = Vec::with_capacity(TASKS);
    for chunk in tasks.chunks(1000) {
        let (status, v) = env.post("/v1/tasks/batch", json!({"tasks": chunk})).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        for r in v["results"].as_array().expect("results") {
            ids.push(r["id"].as_str().expect("id").parse::<TaskId>().expect("id"));
        }
    }

    // Kill a worker every 600 ms, ten times, and start a fresh one in its place.
    let kills = kill_in_turn(&mut workers, 10, Duration::from_millis(600), |i, round| {
        worker_process(&env, &format!("taskq-worker-{i}-{round}"), &allow)
    })
    .await;
    let last_kill = Instant::now();

    // Every task runs, and every record reaches the state Redis decided within seconds
    // of the work being done, with no manual step.
    let done = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async { env.counts().await.get(&TaskStatus::Succeeded).copied() == Some(TASKS as u64) },
    )
    .await;
    let settled_after = last_kill.elapsed();
    let counts = env.counts().await;
    assert!(done, "records did not all succeed: {counts:?}");
    let ran = log.lock().expect("log").clone();
    // The independent log agrees with the records: each task ran at least once, and only
    // tasks in flight when a worker died ran twice (16 slots per killed worker).
    for id in &ids {
        assert!(
            ran.get(id).copied().unwrap_or(0) >= 1,
            "task {id} never ran"
        );
    }
    assert_eq!(ran.len(), TASKS, "executions of unknown tasks");
    let duplicates: u32 = ran.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= kills * 16,
        "{duplicates} duplicate executions for {kills} kills"
    );
    // Nothing is left in Redis but trimmed outbox entries.
    assert_eq!(env.redis_total("default").await, 0);
    // Look at the records of the tasks that ran twice: their history shows the lost
    // attempt, and they still ended succeeded.
    for (id, n) in ran.iter().filter(|(_, n)| **n > 1).take(20) {
        let rec = env.record(*id).await;
        assert_eq!(rec["status"], "succeeded", "{rec:#}");
        assert!(
            rec["attempts"].as_u64().unwrap_or(0) >= u64::from(*n),
            "{rec:#}"
        );
    }
    eprintln!(
        "{TASKS} tasks, {kills} kills, {duplicates} duplicate executions; all records settled {settled_after:?} after the last kill"
    );
    for w in &mut workers {
        w.terminate();
    }
}

/// A submit whose enqueue failed while Redis was unreachable, and whose undo in Redis
/// failed too, keeps its record cancelled with reason `submit_failed`. A record whose
/// api died right after inserting it (the record is inserted here as the api does: the
/// exact moment cannot be hit from outside) is found by the workers' submit check and
/// cancelled the same way, and a repeat of its idempotency key then submits the task.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_whose_task_never_reached_redis_ends_cancelled() {
    let env = Env::start().await;
    // A second api whose Redis goes through a proxy that can cut it.
    let proxy = ChaosProxy::start(env.redis.addr());
    let mut cfg = RedisConfig::from_urls(&format!("redis://{}", proxy.addr()), false);
    cfg.response_timeout = Duration::from_millis(500);
    let flaky = Broker::connect(&cfg).await.expect("broker via proxy");
    let state = taskq_api::AppState::new(flaky, env.store.clone());
    let api = format!("http://{}", serve_router(taskq_api::app(state)).await);

    let mut settings = Env::settings("default");
    settings.submit_grace = Duration::from_secs(2);
    settings.submit_check_interval = Duration::from_millis(250);
    let w = env.worker(settings, Env::builtins());
    // The worker has joined the queue (Redis knows the queue from now on).
    let ok = env.submit(json!({"type": "noop"})).await;
    env.wait_status(ok, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;

    // Redis goes away after the api's connection is up: the insert succeeds, the enqueue
    // and its undo fail.
    let http = reqwest::Client::new();
    let (status, warm) = answer(
        http.post(format!("{api}/v1/tasks"))
            .json(&json!({"type": "noop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{warm}");
    let warm: TaskId = warm["id"].as_str().expect("id").parse().expect("id");
    env.wait_status(warm, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    proxy.cut();
    let mut phantoms = Vec::new();
    // With a key, and without one: then there is no Redis claim before the insert, and
    // the record is written.
    let keys = [Some("phantom-1"), Some("phantom-2"), None, None, None];
    for key in keys {
        let mut req = http.post(format!("{api}/v1/tasks"));
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let resp = req
            .json(&json!({"type": "noop"}))
            .send()
            .await
            .expect("submit");
        assert_eq!(
            resp.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "key {key:?}"
        );
    }
    // (The submit check may cancel some of them already.)
    let left = env
        .store
        .list(&taskq_store::ListFilter::default(), 100, None)
        .await
        .expect("list");
    for t in &left.tasks {
        if t.id != ok && t.id != warm {
            phantoms.push(t.id);
        }
    }
    assert_eq!(phantoms.len(), 3, "the failed submits left their records");
    let started = Instant::now();
    for id in &phantoms {
        let rec = env
            .wait_status(*id, TaskStatus::Cancelled, Duration::from_secs(30))
            .await;
        assert!(
            rec["last_error"]
                .as_str()
                .unwrap_or("")
                .starts_with("submit_failed"),
            "{rec:#}"
        );
        assert_eq!(rec["attempts"], 0);
    }
    eprintln!(
        "phantom records cancelled {:?} after being found",
        started.elapsed()
    );
    // A phantom left by an api that died after its insert, with an idempotency key: a
    // repeat of the key within the enqueue deadline is a conflict (the submit may still
    // be under way); once the check cancelled the record and the deadline is past, a
    // repeat submits the task anew, and it runs.
    proxy.restore();
    let keyed = json!({"type": "noop", "idempotency_key": "dead-api"});
    let rec = env.insert_record_only(&keyed).await;
    env.submit_expect(keyed.clone(), StatusCode::CONFLICT).await;
    env.wait_status(rec.id, TaskStatus::Cancelled, Duration::from_secs(30))
        .await;
    let anew = taskq_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(250), || {
        let env = &env;
        let keyed = keyed.clone();
        async move {
            let (status, v) = env.post("/v1/tasks", keyed).await;
            (status != StatusCode::CONFLICT).then_some((status, v))
        }
    })
    .await;
    let (status, v) = anew.expect("every repeat was a conflict");
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id: TaskId = v["id"].as_str().expect("id").parse().expect("id");
    assert_ne!(id, rec.id);
    env.wait_status(id, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    // Tasks that did reach Redis are never touched: the warm-up task and later ones run.
    let later = env.submit(json!({"type": "noop"})).await;
    env.wait_status(later, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    // A backlog task older than the grace period that Redis holds is left alone (no
    // worker serves its queue).
    let waiting = env.submit(json!({"type": "noop", "queue": "slow"})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rec = env.record(waiting).await;
    assert_eq!(rec["status"], "queued", "{rec:#}");
    w.shutdown().await;
}

/// A cancel whose api died right after Redis took the task (the record write never
/// happened; the script is called here as the api calls it) still ends the record
/// `cancelled`: the script put the update in the queue's outbox, and a worker's writer
/// applies it.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_whose_record_write_never_happened_still_ends_cancelled() {
    let env = Env::start().await;
    let w = env.default_worker();
    let id = env
        .submit(json!({"type": "noop", "delay_ms": 3_600_000}))
        .await;
    env.wait_status(id, TaskStatus::Scheduled, Duration::from_secs(30))
        .await;
    let outcome = env
        .broker
        .cancel(&"default".parse().expect("queue"), id)
        .await
        .expect("cancel");
    assert!(
        matches!(
            outcome,
            taskq_redis::CancelOutcome::Cancelled { seq: 2.., .. }
        ),
        "{outcome:?}"
    );
    let rec = env
        .wait_status(id, TaskStatus::Cancelled, Duration::from_secs(30))
        .await;
    assert!(rec["finished_at"].is_string(), "{rec}");
    assert_eq!(env.redis_total("default").await, 0);
    w.shutdown().await;
}

/// A task that ran to its end in Redis while its record still says `queued` (its
/// updates wait in the queue's outbox: no worker's writer runs) cannot be cancelled:
/// the cancel is a conflict, and the record ends `succeeded` once the outbox is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_of_a_task_that_finished_before_its_record_is_a_conflict() {
    let env = Env::start().await;
    let id = env.submit(json!({"type": "noop"})).await;
    env.succeed_in_redis_only("default", id).await;
    assert_eq!(env.record(id).await["status"], "queued");

    let (status, body) = env.post(&format!("/v1/tasks/{id}/cancel"), json!({})).await;
    crate::harness::assert_error("cancel", (status, &body), 409, "conflict");

    let w = env.default_worker();
    env.wait_status(id, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    w.shutdown().await;
}

/// A cancel of a task Redis does not hold (here: Redis lost it) wins over an enqueue of
/// it that was on its way (a recovery or retry that read MongoDB before the cancel): the
/// enqueue skips the task, which never runs, and the record stays `cancelled`.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_of_a_task_absent_from_redis_wins_over_an_enqueue_on_its_way() {
    let env = Env::start().await;
    let id = env
        .submit(json!({"type": "noop", "delay_ms": 3_600_000}))
        .await;
    let before = env.store.get(id).await.expect("get").expect("record");
    env.flush_redis().await;

    let v = env
        .post_expect(&format!("/v1/tasks/{id}/cancel"), json!({}), StatusCode::OK)
        .await;
    assert_eq!(v["status"], "cancelled", "{v:#}");

    let mut late = taskq_redis::EnqueueItem::from_record(&before.record, before.seq + 1);
    late.due_ms = taskq_core::now_ms();
    let added = env.broker.enqueue(&[late]).await.expect("enqueue");
    assert_eq!(
        added,
        vec![false],
        "the late enqueue must skip the cancelled task"
    );
    assert_eq!(env.redis_total("default").await, 0);

    let w = env.default_worker();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rec = env.record(id).await;
    assert_eq!(rec["status"], "cancelled", "{rec:#}");
    assert_eq!(rec["attempts"], 0, "{rec:#}");
    w.shutdown().await;
}
