//! Operating taskq: cancel, delete, queue stats, pause and resume, dead-letter operations and
//! recovery after Redis lost everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use taskq_core::{TaskId, TaskStatus};
use taskq_store::ListFilter;
use taskq_testkit::{wait_for, wait_until};
use taskq_worker::{HandlerError, TaskContext};

use crate::harness::{Env, Overlap, answer, broker_via_proxy, serve_api};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_waiting_and_running_tasks_but_not_finished_ones() {
    let env = Env::start().await;
    let queued = env.submit(json!({"type": "noop"})).await;
    let scheduled = env.submit(json!({"type": "noop", "delay_ms": 60000})).await;
    for id in [queued, scheduled] {
        let (status, body) = env.post(&format!("/v1/tasks/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "cancelled");
        assert!(body["finished_at"].is_string());
    }
    assert_eq!(
        env.redis_total("default").await,
        0,
        "cancelled tasks leave Redis"
    );

    // A running handler sees the signal.
    let observed = Arc::new(AtomicBool::new(false));
    let mut registry = Env::builtins();
    let o = observed.clone();
    registry.register("long", move |ctx: TaskContext| {
        let o = o.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => Ok(None),
                _ = ctx.cancelled() => {
                    o.store(true, Ordering::SeqCst);
                    Err(HandlerError::retry("stopped"))
                }
            }
        }
    });
    let w = env.worker(Env::settings("default"), registry);
    let running = env.submit(json!({"type": "long"})).await;
    env.wait_status(running, TaskStatus::Running, T).await;
    let (status, body) = env
        .post(&format!("/v1/tasks/{running}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rec = env.wait_status(running, TaskStatus::Cancelled, T).await;
    assert!(
        observed.load(Ordering::SeqCst),
        "the handler saw the cancellation"
    );
    assert_eq!(rec["attempts"], 1);

    // The queued and scheduled ones never ran.
    for id in [queued, scheduled] {
        let rec = env.record(id).await;
        assert_eq!(rec["status"], "cancelled");
        assert_eq!(rec["attempts"], 0);
        assert!(rec["started_at"].is_null());
    }
    // Finished tasks cannot be cancelled.
    let done = env.submit(json!({"type": "noop"})).await;
    env.wait_status(done, TaskStatus::Succeeded, T).await;
    for id in [done, queued] {
        let (status, body) = env.post(&format!("/v1/tasks/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "conflict");
    }
    let (status, _) = env
        .post(&format!("/v1/tasks/{}/cancel", TaskId::new()), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = env.post("/v1/tasks/nope/cancel", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_finished_tasks_and_refuses_unfinished_ones() {
    let env = Env::start().await;
    let delete = |id: TaskId| {
        let env = &env;
        async move {
            env.request(Method::DELETE, &format!("/v1/tasks/{id}"), None, Vec::new())
                .await
        }
    };
    // Unfinished tasks (queued, scheduled) are a conflict and stay in both stores.
    let queued = env.submit(json!({"type": "noop"})).await;
    let scheduled = env.submit(json!({"type": "noop", "delay_ms": 60000})).await;
    for id in [queued, scheduled] {
        let (status, body) = delete(id).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "conflict");
    }
    assert_eq!(env.record(queued).await["status"], "queued");
    assert_eq!(env.record(scheduled).await["status"], "scheduled");
    assert_eq!(env.redis_total("default").await, 2);

    // Finished tasks are deleted: cancelled, succeeded and dead alike.
    let (status, body) = env
        .post(&format!("/v1/tasks/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let w = env.worker(Env::settings("default"), Env::builtins());
    let done = env.submit(json!({"type": "noop"})).await;
    let dead = env.submit(json!({"type": "fail", "max_attempts": 1})).await;
    env.wait_status(done, TaskStatus::Succeeded, T).await;
    env.wait_status(dead, TaskStatus::Dead, T).await;
    for id in [queued, done, dead] {
        let (status, body) = delete(id).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_eq!(body, Value::Null, "a 204 has no body");
        let (status, _) = env.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // A second delete finds nothing.
        let (status, body) = delete(id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    w.shutdown().await;
    // Only the scheduled task is left, in both stores.
    assert_eq!(env.total_records().await, 1);
    assert_eq!(env.record(scheduled).await["status"], "scheduled");
    assert_eq!(env.redis_total("default").await, 1);
    let (status, _) = delete(TaskId::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting frees the task's idempotency key: once its submit is past the enqueue
    // deadline, a repeat of the key submits a new task (a conflict until then).
    let task = json!({"type": "noop", "idempotency_key": "delete-me"});
    let first = env.submit(task.clone()).await;
    let (status, body) = env
        .post(&format!("/v1/tasks/{first}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = delete(first).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let again = wait_for(T, Duration::from_millis(250), || async {
        let (status, body) = env.post("/v1/tasks", task.clone()).await;
        match status {
            StatusCode::CREATED => Some(body),
            StatusCode::CONFLICT => None,
            other => panic!("a repeat of a deleted task's key: {other} {body}"),
        }
    })
    .await
    .expect("a repeat of the deleted task's key was never accepted");
    assert_ne!(again["id"], first.to_string(), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_queue_keeps_accepting_but_runs_nothing_until_resumed() {
    let env = Env::start().await;
    let w = env.default_worker();
    let first = env.submit(json!({"type": "noop"})).await;
    env.wait_status(first, TaskStatus::Succeeded, T).await;
    let (status, body) = env.post("/v1/queues/default/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    let held = env.submit(json!({"type": "noop"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.record(held).await["status"], "queued");
    let (_, q) = env.get("/v1/queues/default").await;
    assert_eq!(q["paused"], true);
    assert_eq!(q["counts"]["queued"], 1);
    let (status, body) = env.post("/v1/queues/default/resume", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], false);
    env.wait_status(held, TaskStatus::Succeeded, T).await;
    let (status, _) = env.post("/v1/queues/nosuchqueue/pause", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = env.post("/v1/queues/%7Bx%7D/pause", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_report_counts_per_state_and_recent_throughput() {
    let env = Env::start().await;
    env.submit(json!({"type": "noop", "queue": "mail", "delay_ms": 60000}))
        .await;
    let w = env.worker(Env::settings("default,mail"), Env::builtins());
    let ok = env.submit(json!({"type": "noop", "queue": "mail"})).await;
    let dead = env
        .submit(json!({"type": "fail", "queue": "mail", "max_attempts": 1}))
        .await;
    env.wait_status(ok, TaskStatus::Succeeded, T).await;
    env.wait_status(dead, TaskStatus::Dead, T).await;
    let (status, body) = env.get("/v1/queues").await;
    assert_eq!(status, StatusCode::OK);
    let mail = body["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "mail"))
        .cloned()
        .expect("mail queue");
    assert_eq!(mail["counts"]["scheduled"], 1);
    assert_eq!(mail["counts"]["queued"], 0);
    assert_eq!(mail["counts"]["dead"], 1);
    assert_eq!(mail["processed_1m"], 1);
    assert_eq!(mail["failed_1m"], 1);
    assert_eq!(mail["paused"], false);
    let (status, _) = env.get("/v1/queues/unknown").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_can_be_retried_or_purged_per_queue() {
    let env = Env::start().await;
    let healed = Arc::new(AtomicBool::new(false));
    let mut registry = Env::builtins();
    let h = healed.clone();
    registry.register("flaky", move |_ctx: TaskContext| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            if ok {
                Ok(None)
            } else {
                Err(HandlerError::permanent("broken"))
            }
        }
    });
    let w = env.worker(Env::settings("a,b"), registry);
    let mut a = Vec::new();
    for _ in 0..5 {
        a.push(env.submit(json!({"type": "flaky", "queue": "a"})).await);
    }
    let b = env.submit(json!({"type": "flaky", "queue": "b"})).await;
    for id in a.iter().chain([&b]) {
        env.wait_status(*id, TaskStatus::Dead, T).await;
    }
    healed.store(true, Ordering::SeqCst);
    let (status, body) = env.post("/v1/queues/a/retry-dead", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["retried"], 5);
    for id in &a {
        env.wait_status(*id, TaskStatus::Succeeded, T).await;
    }
    let (status, body) = env.post("/v1/queues/b/purge-dead", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["purged"], 1);
    let (status, _) = env.get(&format!("/v1/tasks/{b}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    w.shutdown().await;
}

/// The queue-wide retry loses Redis after it moved the first dead tasks to `queued` in
/// MongoDB and before their enqueue: the 503 must be true, so every task it did not
/// queue in Redis is `dead` again (with its attempts and finish time), and calling again
/// retries exactly those.
#[tokio::test(flavor = "multi_thread")]
async fn retry_dead_that_loses_redis_midway_leaves_the_rest_dead() {
    const N: u64 = 600; // more than one page of 500, so the cut lands inside the first
    let env = Env::start().await;
    let mut registry = Env::builtins();
    registry.register("broken", |_ctx: TaskContext| async {
        Err(HandlerError::permanent("broken"))
    });
    let w = env.worker(Env::settings("a"), registry);
    let tasks: Vec<_> = (0..N)
        .map(|_| json!({"type": "broken", "queue": "a", "max_attempts": 1}))
        .collect();
    let (status, body) = env.post("/v1/tasks/batch", json!({ "tasks": tasks })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            env.counts().await.get(&TaskStatus::Dead).copied() == Some(N)
        })
        .await,
        "{:?}",
        env.counts().await
    );
    // No worker takes the retried tasks: Redis shows exactly what was queued.
    w.shutdown().await;

    // A second api whose Redis connection runs through a proxy.
    let (proxy, broker) = broker_via_proxy(&env).await;
    let (api, stop) = serve_api(taskq_api::AppState::new(broker, env.store.clone())).await;
    let retry = tokio::spawn({
        let req = env.http.post(format!("{api}/v1/queues/a/retry-dead"));
        async move {
            let resp = req.send().await.expect("retry-dead");
            let status = resp.status();
            (
                status,
                resp.json::<serde_json::Value>().await.expect("json"),
            )
        }
    });
    // Cut Redis as soon as the first task is `queued` in MongoDB: its page's enqueue
    // comes after the whole page is requeued there.
    let queued = ListFilter {
        status: Some(TaskStatus::Queued),
        kind: None,
        queue: Some("a".parse().expect("queue")),
        ..ListFilter::default()
    };
    assert!(
        wait_until(T, Duration::from_millis(1), || async {
            !env.store
                .list(&queued, 1, None)
                .await
                .expect("list")
                .tasks
                .is_empty()
        })
        .await,
        "retry-dead never requeued a task"
    );
    proxy.cut();
    let (status, body) = retry.await.expect("retry-dead task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    // What MongoDB calls queued is in Redis; everything else is dead as before.
    let counts = env.counts().await;
    let dead = counts.get(&TaskStatus::Dead).copied().unwrap_or(0);
    let queued_records = counts.get(&TaskStatus::Queued).copied().unwrap_or(0);
    assert_eq!(dead + queued_records, N, "{counts:?}");
    assert!(
        dead > 0,
        "the cut came too late to test anything: {counts:?}"
    );
    assert_eq!(
        env.redis_total("a").await,
        queued_records,
        "records queued in MongoDB but not in Redis: {counts:?}"
    );
    let page = env
        .store
        .list(
            &ListFilter {
                status: Some(TaskStatus::Dead),
                ..queued.clone()
            },
            1000,
            None,
        )
        .await
        .expect("dead tasks");
    for t in &page.tasks {
        assert_eq!(t.attempts, 1, "{t:?}");
        assert!(t.finished_at.is_some(), "{t:?}");
    }

    // Calling again (Redis back) retries exactly the rest.
    proxy.restore();
    let (status, body) = env.post("/v1/queues/a/retry-dead", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["retried"], dead, "{body}");
    assert_eq!(env.redis_total("a").await, N);
    assert_eq!(
        env.counts().await.get(&TaskStatus::Queued).copied(),
        Some(N)
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_rebuilds_redis_after_it_lost_everything_mid_run() {
    let env = Env::start().await;
    let mut settings = Env::settings("default");
    settings.concurrency = 32;
    settings.lease = Duration::from_secs(2);
    let w = env.worker(settings, Env::builtins());
    for _ in 0..10 {
        let tasks: Vec<_> = (0..1000)
            .map(|_| json!({"type": "sleep", "payload": {"ms": 1}}))
            .collect();
        let (status, body) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let delayed = env.submit(json!({"type": "noop", "delay_ms": 1500})).await;
    assert!(
        wait_until(T, Duration::from_millis(20), || async {
            env.counts()
                .await
                .get(&TaskStatus::Succeeded)
                .copied()
                .unwrap_or(0)
                > 1000
        })
        .await
    );
    // Redis loses everything.
    env.flush_redis().await;
    let (status, body) = env.post("/v1/admin/recover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["enqueued"].as_u64().unwrap_or(0) > 0, "{body}");
    assert!(
        wait_until(
            Duration::from_secs(120),
            Duration::from_millis(200),
            || async { env.counts().await.get(&TaskStatus::Succeeded).copied() == Some(10_001) }
        )
        .await,
        "{:?}",
        env.counts().await
    );
    assert_eq!(env.record(delayed).await["status"], "succeeded");
    w.shutdown().await;
}

/// A task that ran to its end in Redis while its record still says `queued` (its
/// updates wait in the queue's outbox: no worker's writer runs) is not enqueued again by
/// a recovery: it runs once, and its record ends `succeeded` after one attempt.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_leaves_a_task_whose_final_update_is_on_its_way() {
    let env = Env::start().await;
    let id = env.submit(json!({"type": "noop"})).await;
    env.succeed_in_redis_only("default", id).await;

    let (status, body) = env.post("/v1/admin/recover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"enqueued": 0, "already_present": 0, "finishing": 1})
    );
    assert_eq!(env.redis_total("default").await, 0);

    let w = env.default_worker();
    let rec = env
        .wait_status(id, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rec_later = env.record(id).await;
    assert_eq!(rec_later["status"], "succeeded", "{rec_later:#}");
    assert_eq!(rec["attempts"], 1, "{rec:#}");
    assert_eq!(rec_later["attempts"], 1, "{rec_later:#}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_on_a_healthy_redis_duplicates_nothing() {
    let env = Env::start().await;
    for i in 0..50 {
        let delay = if i % 2 == 0 { 0 } else { 60_000 };
        env.submit(json!({"type": "noop", "delay_ms": delay})).await;
    }
    let (status, body) = env.post("/v1/admin/recover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"enqueued": 0, "already_present": 50, "finishing": 0})
    );
    let c = env
        .broker
        .counts(&"default".parse().expect("q"))
        .await
        .expect("counts");
    assert_eq!((c.queued, c.scheduled), (25, 25));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_original_task_even_under_a_race() {
    let env = Env::start().await;
    // Header or field, same effect.
    let (status, first) = answer(
        env.http
            .post(format!("{}/v1/tasks", env.api))
            .header("idempotency-key", "order-42")
            .json(&json!({"type": "noop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let again = env
        .submit_expect(
            json!({"type": "noop", "idempotency_key": "order-42"}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["idempotency_key"], "order-42");
    // The same key in another queue is another task.
    env.submit_expect(
        json!({"type": "noop", "queue": "b", "idempotency_key": "order-42"}),
        StatusCode::CREATED,
    )
    .await;
    // Header and field disagreeing is a client error.
    let resp = env
        .http
        .post(format!("{}/v1/tasks", env.api))
        .header("idempotency-key", "x-1")
        .json(&json!({"type": "noop", "idempotency_key": "x-2"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Twenty concurrent submits with one key, through two api instances sharing the
    // stores: one task is created and enqueued, every answer names it.
    let second = Env::start().await;
    let (second_api, _second_stop) = serve_api(taskq_api::AppState::new(
        env.broker.clone(),
        env.store.clone(),
    ))
    .await;
    drop(second);
    let calls = (0..20).map(|i| {
        let base = if i % 2 == 0 {
            env.api.clone()
        } else {
            second_api.clone()
        };
        let http = env.http.clone();
        async move {
            let resp = http
                .post(format!("{base}/v1/tasks"))
                .json(&json!({"type": "noop", "idempotency_key": "race"}))
                .send()
                .await
                .expect("submit");
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.expect("json");
            (status, body["id"].as_str().unwrap_or_default().to_owned())
        }
    });
    let answers = futures::future::join_all(calls).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, id)| s.is_success() && *id == answers[0].1),
        "{answers:?}"
    );
    // Three tasks in default: order-42 and race; one in b.
    assert_eq!(env.redis_total("default").await, 2);
    assert_eq!(env.total_records().await, 3);

    // In a batch, a repeated key reports the original task.
    let body = env
        .post_expect(
            "/v1/tasks/batch",
            json!({"tasks": [{"type": "noop", "idempotency_key": "race"}, {"type": "noop"}]}),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(body["results"][0]["id"], answers[0].1.as_str());
    assert_eq!(body["results"][0]["duplicate"], true);
    assert_eq!(env.total_records().await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_claims_live_in_redis_and_mongodb_backs_them_up() {
    let env = Env::start().await;
    let queue: taskq_core::QueueName = "default".parse().expect("queue");
    // A submit elsewhere holds the key in Redis and has not written its task yet: a repeat
    // waits for it, then answers 409 and writes nothing.
    let elsewhere = TaskId::new();
    let held = env
        .broker
        .claim_idempotency_key(&queue, "held", elsewhere, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(held, None);
    let keyed = json!({"type": "noop", "idempotency_key": "held"});
    let body = env.submit_expect(keyed.clone(), StatusCode::CONFLICT).await;
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert_eq!(env.total_records().await, 0);
    assert_eq!(env.redis_total("default").await, 0);
    // Once that submit gives up its claim, the key is free.
    assert!(
        env.broker
            .drop_idempotency_claim(&queue, "held", elsewhere)
            .await
            .expect("drop")
    );
    let first = env.submit_expect(keyed.clone(), StatusCode::CREATED).await;
    let id: TaskId = first["id"].as_str().expect("id").parse().expect("id");
    // The winner keeps its claim (for the retention window) ...
    let holder = env
        .broker
        .claim_idempotency_key(&queue, "held", TaskId::new(), Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(holder, Some(id));

    // ... and when Redis loses every claim, MongoDB's unique index still answers with the
    // original task (one that has run: a task whose submit may still be in flight is no
    // answer).
    let w = env.default_worker();
    env.wait_status(id, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    w.shutdown().await;
    env.flush_redis().await;
    let again = env.submit_expect(keyed, StatusCode::OK).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(env.total_records().await, 1);
    assert_eq!(env.redis_total("default").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_is_free_again_after_its_retention() {
    let env = Env::start_with(|s| taskq_api::AppState {
        idempotency_ttl: Duration::from_millis(800),
        ..s
    })
    .await;
    let body = json!({"type": "noop", "idempotency_key": "daily-1"});
    let (status, first) = env.post("/v1/tasks", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = env.post("/v1/tasks", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    // Past the window both the Redis claim and the record's hold on the key are over.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, later) = env.post("/v1/tasks", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{later}");
    assert_ne!(later["id"], first["id"]);
    // The new task holds the key now.
    let (status, repeat) = env.post("/v1/tasks", body).await;
    assert_eq!(status, StatusCode::OK, "{repeat}");
    assert_eq!(repeat["id"], later["id"]);
    assert_eq!(env.total_records().await, 2);
    assert_eq!(env.redis_total("default").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_limits_hold_across_workers() {
    let env = Env::start().await;
    // Bad limits are refused.
    for bad in [
        json!({"max_dispatches_per_second": 0}),
        json!({"max_concurrent": 0}),
        json!({"burst": 3}),
        json!({"max_concurrency": 2}),
    ] {
        let (status, body) = env.put("/v1/queues/limited/limits", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let limits = json!({"max_concurrent": 2, "max_dispatches_per_second": 10, "burst": 1});
    let (status, body) = env.put("/v1/queues/limited/limits", &limits).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limits"]["max_concurrent"], 2);

    // Two workers with eight slots each still run at most two at a time.
    let overlap = Overlap::default();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut registry = Env::builtins();
        // Longer than the rate's spacing, so only the concurrency limit caps overlap.
        overlap.register(&mut registry, "hold", Duration::from_millis(300));
        let mut settings = Env::settings("limited");
        settings.concurrency = 8;
        workers.push(env.worker(settings, registry));
    }
    let tasks: Vec<_> = (0..30)
        .map(|_| json!({"type": "hold", "queue": "limited"}))
        .collect();
    let (status, _) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            env.counts().await.get(&TaskStatus::Succeeded).copied() == Some(30)
        })
        .await
    );
    assert_eq!(overlap.peak(), 2, "the concurrency limit held and was used");
    // 10 dispatches per second with a burst of 1: no second holds more than 11 starts.
    let (_, page) = env.get("/v1/tasks?queue=limited&limit=100").await;
    let mut starts: Vec<chrono::DateTime<chrono::Utc>> = page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["started_at"].as_str()?.parse().ok())
        .collect();
    starts.sort();
    assert_eq!(starts.len(), 30);
    for (i, s) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|t| **t - *s < chrono::Duration::seconds(1))
            .count();
        assert!(within <= 11, "{within} starts within one second from {s}");
    }
    for w in workers {
        w.shutdown().await;
    }
}
