//! Submits and retries that fail or race part-way, seen from the client that repeats
//! them: a failed submit frees its idempotency key, a repeat never answers for a task
//! whose submit is still in flight, a batch reports each keyed item's failure in its own
//! result, and a queue-wide retry retries each dead task once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_api::AppState;
use taskq_core::{QueueName, TaskId, TaskStatus};
use taskq_redis::{Broker, RedisConfig};
use taskq_store::ListFilter;
use taskq_testkit::{ChaosProxy, wait_until};
use taskq_worker::{HandlerError, TaskContext};

use crate::harness::{Env, answer, broker_via_proxy, ready_within, serve_api, serve_router};

const T: Duration = Duration::from_secs(30);

/// Posts `body` to `{api}/v1/tasks` every 250 ms, as a client retries, while it is
/// answered `409` (a repeat within its original's enqueue deadline) or `503` (the api's
/// Redis connection not back yet), at most 20 s; returns the first other answer.
async fn submit_until_decided(env: &Env, api: &str, body: &Value) -> (StatusCode, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = answer(env.http.post(format!("{api}/v1/tasks")).json(body)).await;
        let retry = [StatusCode::CONFLICT, StatusCode::SERVICE_UNAVAILABLE].contains(&status);
        if !retry || tokio::time::Instant::now() > deadline {
            return (status, v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the api at `api` submits again (its Redis connection is up).
async fn submits_again(env: &Env, api: &str) {
    let (status, v) =
        submit_until_decided(env, api, &json!({"type": "noop", "queue": "warm"})).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

/// Whether `id`'s record is cancelled as a failed submit.
async fn is_submit_failed(env: &Env, id: TaskId) -> bool {
    env.store.get(id).await.ok().flatten().is_some_and(|t| {
        t.record.status == TaskStatus::Cancelled
            && t.record
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(taskq_store::SUBMIT_FAILED))
    })
}

/// Waits until the api's keyed submit `key` in `queue` has written its record and its
/// enqueue has reached Redis; returns the task's id.
async fn landed(env: &Env, queue: &QueueName, key: &str) -> TaskId {
    let found = taskq_testkit::wait_for(T, Duration::from_millis(5), || async {
        let t = env
            .store
            .find_by_idempotency_key(queue, key)
            .await
            .ok()
            .flatten()?;
        let (_, present) = env.broker.present(queue, &[t.record.id]).await.ok()?;
        present
            .first()
            .copied()
            .unwrap_or(false)
            .then_some(t.record.id)
    })
    .await;
    found.unwrap_or_else(|| panic!("the submit of key {key} never reached redis"))
}

/// A keyed submit whose enqueue fails while an update waits in the queue's outbox: its
/// undo cannot tell an absent task from one that already ran, so the record is cancelled
/// (`submit_failed`) rather than deleted. The client's repeat of the key once Redis is
/// healthy creates the task (after `409`s while the original's enqueue deadline runs),
/// and the task runs; the failed submit's record stays cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_whose_enqueue_failed_frees_its_idempotency_key() {
    let env = Env::start().await;
    let queue: QueueName = "default".parse().expect("queue");
    let (proxy, broker) = broker_via_proxy(&env).await;
    let (api, stop) = serve_api(AppState::new(broker, env.store.clone())).await;
    assert!(ready_within(&env.http, &api, T).await, "api not ready");

    // An update no writer has applied yet: a cancel, with no worker serving the queue.
    let other = env.submit(json!({"type": "noop"})).await;
    env.post_expect(
        &format!("/v1/tasks/{other}/cancel"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(env.broker.outbox_len(&queue).await.expect("outbox"), 1);

    // The enqueue (the only request carrying the payload) lands and its reply is held;
    // the task is then taken out of Redis here, as if the enqueue had never arrived, and
    // the api's connection breaks: the enqueue fails, the undo finds no task.
    let body =
        json!({"type": "noop", "idempotency_key": "order-7", "payload": {"m": "x7q-enqueue"}});
    proxy.hold_replies_after(b"x7q-enqueue");
    let submit = tokio::spawn({
        let req = env.http.post(format!("{api}/v1/tasks")).json(&body);
        async move { answer(req).await }
    });
    let failed = landed(&env, &queue, "order-7").await;
    env.broker
        .remove(&[(queue.clone(), failed)])
        .await
        .expect("remove");
    proxy.sever();
    proxy.thaw();
    let (status, v) = submit.await.expect("submit");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        is_submit_failed(&env, failed).await,
        "{:?}",
        env.store.get(failed).await
    );

    // The repeat creates the task.
    let (status, v) = submit_until_decided(&env, &api, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id: TaskId = v["id"].as_str().expect("id").parse().expect("id");
    assert_ne!(id, failed);
    let w = env.default_worker();
    env.wait_status(id, TaskStatus::Succeeded, T).await;
    // The key now answers with the task that ran.
    let (status, v) = submit_until_decided(&env, &api, &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["id"], id.to_string());
    assert!(is_submit_failed(&env, failed).await);
    w.shutdown().await;
    stop.cancel();
}

/// A keyed submit whose enqueue and undo both fail (Redis unreachable) keeps its record
/// cancelled (`submit_failed`) and, its claim not dropped either, the key's claim in
/// Redis. A repeat then answers the original task if Redis did get it (the enqueue's
/// reply was lost: the task runs), and otherwise creates the task anew.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_whose_undo_failed_too_frees_its_key_unless_redis_has_the_task() {
    let env = Env::start().await;
    let queue: QueueName = "default".parse().expect("queue");
    let proxy = ChaosProxy::start(env.redis.addr());
    let mut cfg = RedisConfig::from_urls(&format!("redis://{}", proxy.addr()), false);
    cfg.response_timeout = Duration::from_secs(3);
    let flaky = Broker::connect(&cfg).await.expect("broker via proxy");
    let api = format!(
        "http://{}",
        serve_router(taskq_api::app(AppState::new(flaky, env.store.clone()))).await
    );
    // Each submit's enqueue lands, its reply is held, and Redis becomes unreachable.
    let mut failed = Vec::new();
    for key in ["kept", "lost"] {
        submits_again(&env, &api).await;
        let needle = format!("needle-{key}");
        let body = json!({"type": "noop", "idempotency_key": key, "payload": {"m": needle}});
        proxy.hold_replies_after(needle.as_bytes());
        let submit = tokio::spawn({
            let req = env.http.post(format!("{api}/v1/tasks")).json(&body);
            async move { answer(req).await }
        });
        let id = landed(&env, &queue, key).await;
        proxy.cut();
        let (status, v) = submit.await.expect("submit");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(is_submit_failed(&env, id).await, "{key}");
        proxy.thaw();
        proxy.restore();
        failed.push((body, id));
    }
    let [(kept_body, kept), (lost_body, lost)] = <[_; 2]>::try_from(failed).expect("two");
    // The enqueue of "lost" is taken back out here, as if it had never arrived.
    env.broker
        .remove(&[(queue.clone(), lost)])
        .await
        .expect("remove");

    // Redis holds "kept": its repeat answers that task.
    let (status, v) = submit_until_decided(&env, &api, &kept_body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["id"], kept.to_string());
    // Redis never got "lost": its repeat creates the task.
    let (status, v) = submit_until_decided(&env, &api, &lost_body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let created: TaskId = v["id"].as_str().expect("id").parse().expect("id");
    assert_ne!(created, lost);

    let w = env.default_worker();
    env.wait_status(kept, TaskStatus::Succeeded, T).await;
    env.wait_status(created, TaskStatus::Succeeded, T).await;
    assert!(is_submit_failed(&env, lost).await);
    w.shutdown().await;
}

/// A repeat of a key whose record is still submit-pending without its task in Redis
/// (its submit is in flight: it may yet fail and remove the record) is answered `409`,
/// whichever of Redis's claim and MongoDB's unique index finds the original. Once the
/// original's enqueue deadline is past, the repeat completes that submit.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_of_a_key_whose_submit_is_in_flight_is_a_conflict() {
    let env = Env::start().await;
    let queue: QueueName = "default".parse().expect("queue");
    let body = json!({"type": "noop", "idempotency_key": "in-flight"});
    let rec = env.insert_record_only(&body).await;
    let v = env.submit_expect(body.clone(), StatusCode::CONFLICT).await;
    assert_eq!(v["error"]["code"], "conflict", "{v}");
    assert_eq!(env.total_records().await, 1);
    assert_eq!(env.redis_total("default").await, 0);

    // Past the deadline the repeat takes the submit over and enqueues the task.
    let (status, v) = submit_until_decided(&env, &env.api, &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["id"], rec.id.to_string());
    let (_, present) = env
        .broker
        .present(&queue, &[rec.id])
        .await
        .expect("present");
    assert_eq!(present, vec![true]);
    assert_eq!(env.total_records().await, 1);
}

/// A batch whose keyed item cannot be submitted (a concurrent submit holds its key)
/// reports that item's failure in its result and accepts the rest (`207`); a batch of
/// which nothing was accepted is an error answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_reports_a_keyed_item_that_failed_in_its_result() {
    let env = Env::start().await;
    let queue: QueueName = "default".parse().expect("queue");
    let held = env
        .broker
        .claim_idempotency_key(&queue, "held", TaskId::new(), Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(held, None);

    let (status, body) = env
        .post(
            "/v1/tasks/batch",
            json!({"tasks": [{"type": "noop"}, {"type": "noop", "idempotency_key": "held"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(
        (body["accepted"].clone(), body["rejected"].clone()),
        (json!(1), json!(1)),
        "{body}"
    );
    let first = &body["results"][0];
    assert_eq!(first["status"], "queued", "{body}");
    assert!(first["error"].is_null(), "{body}");
    let id: TaskId = first["id"].as_str().expect("id").parse().expect("id");
    let second = &body["results"][1];
    assert_eq!(second["index"], 1, "{body}");
    assert_eq!(second["error"]["code"], "conflict", "{body}");
    assert!(second["id"].is_null(), "{body}");
    // The accepted item is in both stores; nothing of the other was written.
    assert_eq!(env.total_records().await, 1);
    assert_eq!(env.redis_total("default").await, 1);

    // Nothing accepted: the answer is the items' failure, and nothing was written.
    let (status, body) = env
        .post(
            "/v1/tasks/batch",
            json!({"tasks": [{"type": "noop", "idempotency_key": "held"}, {"type": ""}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert_eq!(body["results"][0]["error"]["code"], "conflict", "{body}");
    assert_eq!(
        body["results"][1]["error"]["code"], "invalid_field",
        "{body}"
    );
    assert_eq!(env.total_records().await, 1);

    let w = env.default_worker();
    env.wait_status(id, TaskStatus::Succeeded, T).await;
    w.shutdown().await;
}

/// A queue-wide retry while a worker runs the retried tasks, which die again at once:
/// every task dead when the call began is retried once, however fast it dies again.
#[tokio::test(flavor = "multi_thread")]
async fn retry_dead_retries_each_dead_task_once_while_they_die_again() {
    const N: usize = 600; // more than one page of 500: the call runs several rounds
    let env = Env::start().await;
    let runs: Arc<Mutex<HashMap<TaskId, u32>>> = Arc::default();
    let mut registry = Env::builtins();
    let r = runs.clone();
    registry.register("broken", move |ctx: TaskContext| {
        *r.lock().expect("runs").entry(ctx.id).or_default() += 1;
        async { Err(HandlerError::permanent("broken")) }
    });
    let w = env.worker(Env::settings("a"), registry);
    let tasks: Vec<_> = (0..N)
        .map(|_| json!({"type": "broken", "queue": "a", "max_attempts": 1}))
        .collect();
    env.post_expect(
        "/v1/tasks/batch",
        json!({ "tasks": tasks }),
        StatusCode::CREATED,
    )
    .await;
    let dead = |env: &Env| {
        let store = env.store.clone();
        async move {
            store
                .count_by_status(None)
                .await
                .expect("counts")
                .get(&TaskStatus::Dead)
                .copied()
                .unwrap_or(0)
        }
    };
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            dead(&env).await == N as u64
        })
        .await,
        "{:?}",
        env.counts().await
    );

    let body = env
        .post_expect("/v1/queues/a/retry-dead", json!({}), StatusCode::OK)
        .await;
    // Every task dies again, and then nothing more runs.
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            dead(&env).await == N as u64 && runs.lock().expect("runs").values().all(|n| *n >= 2)
        })
        .await,
        "{:?}",
        env.counts().await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = runs.lock().expect("runs").clone();
    let again: Vec<_> = runs.iter().filter(|(_, n)| **n != 2).collect();
    assert_eq!(runs.len(), N);
    assert!(again.is_empty(), "tasks not run exactly twice: {again:?}");
    assert_eq!(body["retried"], N, "{body}");
    let page = env
        .store
        .list(
            &ListFilter {
                status: Some(TaskStatus::Dead),
                queue: Some("a".parse().expect("queue")),
                ..ListFilter::default()
            },
            1000,
            None,
        )
        .await
        .expect("dead");
    assert_eq!(page.tasks.len(), N);
    w.shutdown().await;
}
