//! `GET /v1/tasks/{id}?wait=…`: answered when the task finishes (woken through Redis
//! pub/sub, on every api), at its deadline otherwise; and the result contract.
//!
//! Each waiting request is started before the task can finish (no worker yet, or the
//! task not yet cancelled) and the test waits until the api has registered it, so the
//! wake-up path, not the first read, is what answers. Waits are long (60 s) and the
//! answers are checked to come well before them: only a wake-up can do that, since no
//! waiter reads MongoDB again before its deadline.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_api::AppState;
use taskq_api::wait::Waits;
use taskq_core::{TaskId, TaskStatus};
use taskq_redis::{Broker, RedisConfig};
use taskq_store::StatusUpdate;
use taskq_testkit::{free_port, mongo_uri, wait_until};
use taskq_worker::TaskContext;
use tokio::task::JoinHandle;

use crate::harness::{Env, api_process, ready_within, serve_api};

const T: Duration = Duration::from_secs(30);
/// Well under the 60 s waits: an answer before it came from a wake-up.
const WOKEN_WITHIN: Duration = Duration::from_secs(40);

/// An [`Env`] and its api's waiters.
async fn env_with_waits() -> (Env, Waits) {
    let mut waits = None;
    let env = Env::start_with(|s| {
        waits = Some(s.waits.clone());
        s
    })
    .await;
    (env, waits.expect("state built"))
}

/// A second api on `env`'s Redis (its own connections) and database, and its waiters.
async fn second_api(
    env: &Env,
    redis: &RedisConfig,
) -> (String, Waits, tokio_util::sync::CancellationToken) {
    let broker = Broker::connect(redis).await.expect("redis");
    let state = AppState::new(broker, env.store.clone());
    let waits = state.waits.clone();
    let (url, stop) = serve_api(state).await;
    (url, waits, stop)
}

/// `GET {api}/v1/tasks/{id}?wait={wait}` in the background: status, body, time taken.
fn get_waiting(api: &str, id: TaskId, wait: &str) -> JoinHandle<(StatusCode, Value, Duration)> {
    let url = format!("{api}/v1/tasks/{id}?wait={wait}");
    tokio::spawn(async move {
        let started = Instant::now();
        let resp = reqwest::get(url).await.expect("request");
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, started.elapsed())
    })
}

/// Waits until `waits` has waiters for `n` tasks.
async fn until_waiting(waits: &Waits, n: usize) {
    assert!(
        wait_until(T, Duration::from_millis(10), || async {
            waits.tasks() == n
        })
        .await,
        "{} tasks have waiters, expected {n}",
        waits.tasks()
    );
}

/// The answer of a waiting request that a wake-up ended.
async fn woken(req: JoinHandle<(StatusCode, Value, Duration)>) -> Value {
    let (status, body, took) = req.await.expect("request task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took < WOKEN_WITHIN,
        "answered after {took:?}, not woken: {body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_gets_the_result_as_soon_as_the_task_succeeds() {
    let (env, waits) = env_with_waits().await;
    let payload = json!({"order": 42, "lines": ["a", "b"], "big": 18446744073709551615u64});
    let id = env
        .submit(json!({"type": "echo", "payload": payload}))
        .await;
    let req = get_waiting(&env.api, id, "60s");
    until_waiting(&waits, 1).await;
    let w = env.default_worker();
    let rec = woken(req).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["result"], payload, "the result round-trips");
    until_waiting(&waits, 0).await;
    // A finished task is answered at once, whatever the wait.
    let (status, again, took) = get_waiting(&env.api, id, "60").await.expect("request");
    assert_eq!(status, StatusCode::OK);
    assert!(took < WOKEN_WITHIN, "{took:?}");
    assert_eq!(again["result"], payload);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_wakes_when_the_task_dies_or_is_cancelled() {
    let (env, waits) = env_with_waits().await;
    let dies = env
        .submit(json!({"type": "fail", "payload": {"permanent": true}}))
        .await;
    let cancelled = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    let on_dead = get_waiting(&env.api, dies, "60s");
    let on_cancel = get_waiting(&env.api, cancelled, "60000ms");
    until_waiting(&waits, 2).await;
    let w = env.default_worker();
    let rec = woken(on_dead).await;
    assert_eq!(rec["status"], "dead", "{rec}");
    assert_eq!(rec["last_error"], "fail handler failed attempt 1");
    let (status, body) = env
        .post(&format!("/v1/tasks/{cancelled}/cancel"), json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rec = woken(on_cancel).await;
    assert_eq!(rec["status"], "cancelled", "{rec}");
    until_waiting(&waits, 0).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfinished_task_is_answered_at_the_deadline_as_it_stands() {
    let (env, waits) = env_with_waits().await;
    let queued = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    let (status, rec, _) = get_waiting(&env.api, queued, "1500ms")
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK, "{rec}");
    assert_eq!(rec["status"], "queued");
    let w = env.default_worker();
    let running = env
        .submit(json!({"type": "sleep", "payload": {"ms": 60000}}))
        .await;
    env.wait_status(running, TaskStatus::Running, T).await;
    let (status, rec, _) = get_waiting(&env.api, running, "1").await.expect("request");
    assert_eq!(status, StatusCode::OK, "{rec}");
    assert_eq!(rec["status"], "running");
    // `wait=0` is a plain read.
    let (status, rec) = env.get(&format!("/v1/tasks/{running}?wait=0")).await;
    assert_eq!(
        (status, &rec["status"]),
        (StatusCode::OK, &json!("running"))
    );
    until_waiting(&waits, 0).await;
    let (status, _) = env
        .post(&format!("/v1/tasks/{running}/cancel"), json!(null))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_waits_are_refused_with_invalid_query() {
    let (env, waits) = env_with_waits().await;
    let id = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    for bad in ["abc", "61s", "2m", "-1", "", "1.5", "30%20parsecs"] {
        let (status, body) = env.get(&format!("/v1/tasks/{id}?wait={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "wait={bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "wait={bad}: {body}");
    }
    let (status, body) = env.get(&format!("/v1/tasks/{id}?wait=1s&poll=1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");
    let (status, body) = env.get("/v1/tasks/not-an-id?wait=1s").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_id"))
    );
    let (status, body) = env
        .get(&format!("/v1/tasks/{}?wait=1s", TaskId::new()))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    assert_eq!(waits.tasks(), 0, "no refused request left a waiter behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_takes_its_waiter_with_it() {
    let (env, waits) = env_with_waits().await;
    let id = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let gone = client
        .get(format!("{}/v1/tasks/{id}?wait=60s", env.api))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first: {gone:?}");
    until_waiting(&waits, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_on_another_api_wake_for_the_worker_and_for_a_cancel() {
    let (env, waits_a) = env_with_waits().await;
    let (api_b, waits_b, _stop_b) =
        second_api(&env, &RedisConfig::from_urls(&env.redis.url(), false)).await;
    let runs = env.submit(json!({"type": "echo", "payload": "b"})).await;
    let cancelled = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    let on_b_runs = get_waiting(&api_b, runs, "60s");
    let on_b_cancel = get_waiting(&api_b, cancelled, "60s");
    let on_a_runs = get_waiting(&env.api, runs, "60s");
    until_waiting(&waits_b, 2).await;
    until_waiting(&waits_a, 1).await;
    let w = env.default_worker();
    for req in [on_b_runs, on_a_runs] {
        let rec = woken(req).await;
        assert_eq!(
            (&rec["status"], &rec["result"]),
            (&json!("succeeded"), &json!("b"))
        );
    }
    // Cancelled through api A: the waiter on api B wakes.
    let (status, body) = env
        .post(&format!("/v1/tasks/{cancelled}/cancel"), json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(woken(on_b_cancel).await["status"], "cancelled");
    until_waiting(&waits_b, 0).await;
    w.shutdown().await;
}

/// While the subscription is down, finishes go unheard: when it is back, every waiter
/// reads its record again.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_read_again_when_the_subscription_comes_back() {
    let (mut env, waits) = env_with_waits().await;
    let id = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    let req = get_waiting(&env.api, id, "60s");
    until_waiting(&waits, 1).await;
    // Let the subscription be in place (it starts with the first waiter), so the
    // restart below is a reconnect.
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            let mut c = redis::Client::open(env.redis.url())
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("conn");
            let subs: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(taskq_redis::keys::FINISHED)
                .query_async(&mut c)
                .await
                .expect("numsub");
            subs.first().is_some_and(|(_, n)| *n == 1)
        })
        .await,
        "the api never subscribed"
    );
    // A finish written to MongoDB whose notification is lost with Redis.
    let update = StatusUpdate::transition(id, 2, TaskStatus::Succeeded, 1, taskq_core::now());
    env.store.apply(&[update]).await.expect("apply");
    tokio::task::block_in_place(|| env.redis.restart());
    let rec = woken(req).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
}

/// `PUBLISH` reaches the subscribers of every node of a Redis Cluster: three apis, each
/// subscribed through a different node (their seed lists start at different nodes), all
/// wake for one task a worker finishes.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_wake_on_a_redis_cluster_whatever_node_they_listen_on() {
    let env = Env::start_on_cluster().await;
    let urls = env.cluster.as_ref().expect("cluster").urls();
    let mut apis = Vec::new();
    for first in 0..urls.len() {
        let mut order = urls.clone();
        order.rotate_left(first);
        apis.push(second_api(&env, &RedisConfig::from_urls(&order.join(","), true)).await);
    }
    let id = env.submit(json!({"type": "echo", "payload": [1, 2]})).await;
    let mut reqs = Vec::new();
    for (url, waits, _) in &apis {
        reqs.push(get_waiting(url, id, "60s"));
        until_waiting(waits, 1).await;
    }
    let w = env.default_worker();
    for req in reqs {
        let rec = woken(req).await;
        assert_eq!(
            (&rec["status"], &rec["result"]),
            (&json!("succeeded"), &json!([1, 2]))
        );
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_over_the_limit_kills_the_task_with_a_clear_error() {
    let env = Env::start().await;
    let mut registry = Env::builtins();
    registry.register("big", |ctx: TaskContext| async move {
        let n: usize = ctx.payload_as()?;
        Ok(Some(json!("x".repeat(n))))
    });
    let mut settings = Env::settings("default");
    settings.max_result_bytes = 1000;
    let w = env.worker(settings, registry);
    // 998 characters and two quotes: exactly the limit.
    let fits = env
        .submit(json!({"type": "big", "payload": 998, "max_attempts": 3}))
        .await;
    let over = env
        .submit(json!({"type": "big", "payload": 999, "max_attempts": 3}))
        .await;
    let rec = env.wait_status(fits, TaskStatus::Succeeded, T).await;
    assert_eq!(rec["result"].as_str().map(str::len), Some(998));
    let rec = env.wait_status(over, TaskStatus::Dead, T).await;
    assert_eq!(rec["attempts"], 1, "not retried: {rec}");
    assert_eq!(
        rec["last_error"],
        "result too large: 1001 bytes of JSON, more than TASKQ_MAX_RESULT_BYTES (1000)"
    );
    assert!(rec["result"].is_null(), "{rec}");
    w.shutdown().await;
}

/// The `taskq-api` binary: a wait longer than its request timeout is answered at its
/// deadline (not `503 timeout`), and a SIGTERM answers waiting requests at once with
/// the record as it stands.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_binary_answers_waiters_past_its_timeout_and_when_it_drains() {
    let env = Env::start().await;
    let port = free_port();
    let mut api = api_process(
        &env,
        port,
        &mongo_uri(),
        &[("TASKQ_REQUEST_TIMEOUT_MS", "1000")],
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    assert!(
        ready_within(&http, &base, T).await,
        "the api never became ready"
    );
    let id = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    let (status, rec, _) = get_waiting(&base, id, "2500ms").await.expect("request");
    assert_eq!(status, StatusCode::OK, "{rec}");
    assert_eq!(rec["status"], "queued");
    let req = get_waiting(&base, id, "60s");
    // Sent only once the waiter is registered.
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            let body = reqwest::get(format!("{base}/metrics"))
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            body.lines().any(|l| l == "taskq_api_waiting_requests 1")
        })
        .await,
        "the waiter was never registered"
    );
    api.terminate();
    let rec = woken(req).await;
    assert_eq!(rec["status"], "queued", "{rec}");
    assert!(
        api.wait_timeout(T).is_some_and(|s| s.success()),
        "the api did not stop cleanly"
    );
}

/// A waiting request gives its request slot back while it waits: with two slots, four
/// waiters leave room for submits and reads, and take a slot again to answer.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_requests_hold_no_request_slot() {
    let mut waits = None;
    let env = Env::start_with(|s| {
        waits = Some(s.waits.clone());
        AppState {
            max_concurrent_requests: 2,
            ..s
        }
    })
    .await;
    let waits = waits.expect("state built");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(env.submit(json!({"type": "noop", "queue": "idle"})).await);
    }
    let reqs: Vec<_> = ids
        .iter()
        .map(|id| get_waiting(&env.api, *id, "60s"))
        .collect();
    until_waiting(&waits, 4).await;
    // Were the slots held, these would wait until the request timeout (30 s): 503.
    let more = env.submit(json!({"type": "noop", "queue": "idle"})).await;
    assert_eq!(env.record(more).await["status"], "queued");
    for id in &ids {
        let (status, body) = env
            .post(&format!("/v1/tasks/{id}/cancel"), json!(null))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for req in reqs {
        assert_eq!(woken(req).await["status"], "cancelled");
    }
}
