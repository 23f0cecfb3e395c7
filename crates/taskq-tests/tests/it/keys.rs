//! Task keys end to end: with `max_running_per_key` 1, many workers and many keys, no
//! two tasks of one key ever run at once and each key's tasks run in submit order
//! (checked on the records' attempt start and finish times); the same on a Redis
//! Cluster; recovery after Redis lost its data keeps each key's order; bad keys and bad
//! limits are refused with 400.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_core::{TaskId, TaskRecord, TaskStatus};
use taskq_store::ListFilter;
use taskq_testkit::wait_until;

use crate::harness::{Env, RunningWorker, assert_error, strings};

/// Sets the queue's `max_running_per_key` (and no other limit).
async fn limit_per_key(env: &Env, queue: &str, n: u32) {
    env.set_limits(queue, json!({"max_running_per_key": n}))
        .await;
}

/// Submits `rounds` tasks of each of `keys` keys (round by round, so keys interleave), in
/// batches; returns the ids per key in submit order. Tasks sleep 1-3 ms, those of every
/// hundredth key 1.5 s: long enough that without the limit a key's next task (taken
/// once the other keys' heads are) would start while its previous one still runs.
async fn submit_keyed(
    env: &Env,
    queue: &str,
    keys: usize,
    rounds: usize,
) -> BTreeMap<String, Vec<TaskId>> {
    let mut bodies = Vec::new();
    for _ in 0..rounds {
        for k in 0..keys {
            bodies.push(json!({
                "type": "sleep", "queue": queue, "key": format!("k-{k}"),
                "payload": {"ms": if k % 100 == 0 { 1500 } else { 1 + k % 3 }},
            }));
        }
    }
    let mut order: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
    for chunk in bodies.chunks(500) {
        let (status, body) = env.post("/v1/tasks/batch", json!({"tasks": chunk})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let results = body["results"].as_array().expect("results");
        for (req, res) in chunk.iter().zip(results) {
            let id: TaskId = res["id"].as_str().expect("id").parse().expect("task id");
            let key = req["key"].as_str().expect("key").to_owned();
            order.entry(key).or_default().push(id);
        }
    }
    order
}

/// Every record of `queue`.
async fn records(env: &Env, queue: &str) -> BTreeMap<TaskId, TaskRecord> {
    let filter = ListFilter {
        queue: Some(queue.parse().expect("queue")),
        ..ListFilter::default()
    };
    let mut out = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = env.store.list(&filter, 1000, cursor).await.expect("list");
        for t in page.tasks {
            out.insert(t.id, t);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// Waits until `n` records are `succeeded`.
async fn wait_succeeded(env: &Env, n: u64, timeout: Duration) {
    let done = wait_until(timeout, Duration::from_millis(200), || async {
        env.counts().await.get(&TaskStatus::Succeeded).copied() == Some(n)
    })
    .await;
    assert!(
        done,
        "not all {n} tasks succeeded: {:?}",
        env.counts().await
    );
}

/// The start and finish of a record's one attempt.
fn span(r: &TaskRecord) -> (DateTime<Utc>, DateTime<Utc>) {
    let started = r
        .started_at
        .unwrap_or_else(|| panic!("{} never started", r.id));
    let finished = r
        .finished_at
        .unwrap_or_else(|| panic!("{} never finished", r.id));
    (started, finished)
}

/// For every key: its tasks ran once each, one at a time, in submit order: each one
/// started at or after the previous one finished.
fn assert_one_at_a_time_in_order(
    order: &BTreeMap<String, Vec<TaskId>>,
    recs: &BTreeMap<TaskId, TaskRecord>,
) {
    for (key, ids) in order {
        let mut previous: Option<(TaskId, DateTime<Utc>)> = None;
        for id in ids {
            let r = &recs[id];
            assert_eq!(r.key.as_deref(), Some(key.as_str()));
            assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
            assert_eq!(r.attempts, 1, "{id} of {key} ran more than once");
            let (started, finished) = span(r);
            if let Some((prev, prev_finished)) = previous {
                assert!(
                    started >= prev_finished,
                    "key {key}: {id} started at {started} before {prev} finished at {prev_finished}"
                );
            }
            previous = Some((*id, finished));
        }
    }
}

fn workers(env: &Env, queue: &str, n: usize, slots: usize) -> Vec<RunningWorker> {
    (0..n)
        .map(|_| {
            let mut s = Env::settings(queue);
            s.concurrency = slots;
            env.worker(s, Env::builtins())
        })
        .collect()
}

async fn one_per_key(env: &Env, queue: &str, keys: usize, rounds: usize, w: usize, slots: usize) {
    limit_per_key(env, queue, 1).await;
    let order = submit_keyed(env, queue, keys, rounds).await;
    let (_, q) = env.get(&format!("/v1/queues/{queue}")).await;
    assert_eq!(q["keys"]["active"], keys, "{q}");
    assert_eq!(
        q["keys"]["busiest"].as_array().map(Vec::len),
        Some(10),
        "{q}"
    );
    assert_eq!(q["limits"]["max_running_per_key"], 1, "{q}");
    let running = workers(env, queue, w, slots);
    let total = (keys * rounds) as u64;
    wait_succeeded(env, total, Duration::from_secs(240)).await;
    for r in running {
        r.shutdown().await;
    }
    let recs = records(env, queue).await;
    assert_eq!(recs.len() as u64, total);
    assert_one_at_a_time_in_order(&order, &recs);
    // A key with no tasks left costs nothing.
    let (_, q) = env.get(&format!("/v1/queues/{queue}")).await;
    assert_eq!(q["keys"]["active"], 0, "{q}");
    // `?key=` lists one key's tasks.
    let (status, page) = env.get("/v1/tasks?key=k-7&limit=100").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<&str> = strings(&page["tasks"], "key");
    assert_eq!(listed, vec!["k-7"; rounds]);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_task_per_key_at_a_time_in_submit_order_across_workers() {
    let env = Env::start().await;
    // 1,000 keys, 3 tasks each, 4 workers of 16 slots.
    one_per_key(&env, "orders", 1000, 3, 4, 16).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_task_per_key_on_a_redis_cluster() {
    let env = Env::start_on_cluster().await;
    one_per_key(&env, "orders", 200, 3, 2, 8).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_after_redis_lost_its_data_keeps_each_keys_order() {
    let env = Env::start().await;
    limit_per_key(&env, "orders", 1).await;
    let order = submit_keyed(&env, "orders", 20, 5).await;
    env.flush_redis().await;
    // The limits went with Redis; set them again, then recover.
    limit_per_key(&env, "orders", 1).await;
    let (status, body) = env.post("/v1/admin/recover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enqueued"], 100, "{body}");
    let (_, q) = env.get("/v1/queues/orders").await;
    assert_eq!(q["keys"]["active"], 20, "{q}");
    let running = workers(&env, "orders", 2, 16);
    wait_succeeded(&env, 100, Duration::from_secs(120)).await;
    for r in running {
        r.shutdown().await;
    }
    assert_one_at_a_time_in_order(&order, &records(&env, "orders").await);
}

/// Redis loses part of its data: the hash of a keyed task that was running. Its key's
/// running count still holds the slot, so with a limit of 1 the key's next task waits for
/// ever; `POST /v1/admin/recover` enqueues the lost task again and recounts the key, and
/// both run.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_after_a_partial_loss_frees_a_key_held_by_a_lost_running_task() {
    let env = Env::start().await;
    limit_per_key(&env, "orders", 1).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        let body = env
            .submit_expect(
                json!({"type": "noop", "queue": "orders", "key": "k", "payload": {"n": n}}),
                StatusCode::CREATED,
            )
            .await;
        ids.push(
            body["id"]
                .as_str()
                .expect("id")
                .parse::<TaskId>()
                .expect("id"),
        );
    }
    // A worker that then vanished took the first task; Redis then lost that task's hash.
    let queue = "orders".parse().expect("queue");
    let taken = env.lease(&queue, 1, Duration::from_secs(60), "gone").await;
    assert_eq!(
        taken.iter().map(|t| t.msg.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let client = redis::Client::open(env.redis.url()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("taskq:{{orders}}:t:{}", ids[0]))
        .query_async(&mut c)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1);

    let w = env.worker(Env::settings("orders"), Env::builtins());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        env.record(ids[1]).await["status"],
        "queued",
        "the key's next task ran although its running slot looked taken"
    );
    let (status, body) = env.post("/v1/admin/recover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enqueued"], 1, "{body}");
    wait_succeeded(&env, 2, Duration::from_secs(20)).await;
    w.shutdown().await;
}

/// Asserts a 400 error answer with `code`, whose message names the key unless the code is
/// `invalid_request`.
#[track_caller]
fn assert_400(what: &str, (status, body): (StatusCode, &Value), code: &str) {
    assert_error(what, (status, body), 400, code);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    if code != "invalid_request" {
        assert!(
            message.contains("key"),
            "{what}: the message names the key: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_and_key_limits_are_refused() {
    let env = Env::start().await;
    let long = "k".repeat(129);
    for key in [json!(""), json!("a b"), json!("{q}"), json!(long), json!(7)] {
        let (status, body) = env
            .post("/v1/tasks", json!({"type": "noop", "key": key}))
            .await;
        let code = if key.is_string() {
            "invalid_field"
        } else {
            "invalid_request"
        };
        assert_400(&format!("submit key {key}"), (status, &body), code);
        let (status, body) = env
            .post(
                "/v1/tasks/batch",
                json!({"tasks": [{"type": "noop", "key": key}]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "batch key {key}: {body}");
        if key.is_string() {
            assert_eq!(
                body["results"][0]["error"]["code"], "invalid_field",
                "batch key {key}: {body}"
            );
        }
    }
    assert_eq!(
        env.total_records().await,
        0,
        "a refused submit wrote a record"
    );
    assert_eq!(env.redis_total("default").await, 0);
    let (status, body) = env.get("/v1/tasks?key=a%20b").await;
    assert_400("list key", (status, &body), "invalid_query");
    let bad_limits = [
        json!(0),
        json!(-1),
        json!(1_000_001),
        json!("x"),
        json!(1.5),
    ]
    .map(|v| json!({"max_running_per_key": v}))
    .into_iter()
    .chain([
        json!({"max_dispatches_per_second_per_key": 0}),
        json!({"max_dispatches_per_second_per_key": -2.5}),
        json!({"max_dispatches_per_second_per_key": "fast"}),
        json!({"burst_per_key": 3}),
        json!({"max_dispatches_per_second_per_key": 2, "burst_per_key": 0}),
    ]);
    for bad in bad_limits {
        let (status, body) = env.put("/v1/queues/default/limits", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit {bad}: {body}");
        assert!(body["error"]["code"].is_string(), "limit {bad}: {body}");
    }
    // A good key is kept on the record and filterable.
    let id = env
        .submit(json!({"type": "noop", "key": "customer-42@eu/1:a"}))
        .await;
    assert_eq!(env.record(id).await["key"], "customer-42@eu/1:a");
    let (_, page) = env.get("/v1/tasks?key=customer-42@eu/1:a").await;
    assert_eq!(page["tasks"][0]["id"], id.to_string(), "{page}");
}
