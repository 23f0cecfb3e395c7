//! Group commit of single submits: concurrent `POST /v1/tasks` share writes, and each is
//! still answered only once its own task is in both stores; a submit given up before its
//! group's enqueue never runs.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use taskq_api::AppState;
use taskq_core::{QueueName, TaskId, TaskStatus};
use taskq_testkit::wait_until;

use crate::harness::{
    Env, broker_via_proxy, metric_value, ready_within, scrape_metrics, serve_api, store_via_proxy,
};

/// The api's count of accepted `noop` submits to queue `default`.
const SUBMITTED_NOOP: &str = "taskq_tasks_submitted_total{queue=\"default\",type=\"noop\"}";

/// `taskq_api_submit_group_size` `_count` and `_sum` from the api's metrics.
async fn group_sizes(env: &Env) -> (f64, f64) {
    let text = scrape_metrics(&env.http, &env.api).await;
    (
        metric_value(&text, "taskq_api_submit_group_size_count"),
        metric_value(&text, "taskq_api_submit_group_size_sum"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_single_submits_share_writes_and_each_is_answered_once_durable() {
    let env = Env::start().await;
    let submits = (0..200).map(|i| {
        let env = &env;
        async move {
            let queue = if i % 2 == 0 { "default" } else { "other" };
            let v = env
                .submit_expect(
                    json!({"type": "noop", "queue": queue, "payload": {"i": i}}),
                    StatusCode::CREATED,
                )
                .await;
            let id: TaskId = v["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
            // Answered: the record is in MongoDB and the task in Redis already.
            let rec = env.store.get(id).await.expect("get").expect("record");
            assert_eq!(rec.record.status, TaskStatus::Queued);
            let q: QueueName = queue.parse().expect("queue");
            let (_, present) = env.broker.present(&q, &[id]).await.expect("present");
            assert_eq!(present, vec![true], "task {id} not in redis when answered");
            assert_eq!(rec.record.payload, json!({"i": i}));
            id
        }
    });
    let ids: HashSet<TaskId> = futures::future::join_all(submits)
        .await
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 200);
    let (groups, grouped) = group_sizes(&env).await;
    assert_eq!(grouped, 200.0, "every submit went through a group");
    assert!(
        groups < 200.0,
        "no two of 200 concurrent submits shared a write ({groups} groups)"
    );
    // Each submit's stages are timed once each, and each accepted submit counted.
    let text = scrape_metrics(&env.http, &env.api).await;
    assert_eq!(metric_value(&text, SUBMITTED_NOOP), 100.0);
    for stage in ["wait", "insert", "enqueue"] {
        let series = format!("taskq_api_submit_stage_seconds_count{{stage=\"{stage}\"}}");
        assert_eq!(metric_value(&text, &series), 200.0, "{series}");
    }
    let w = env.worker(Env::settings("default,other"), Env::builtins());
    let done = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let counts = env.store.count_by_status(None).await.expect("counts");
            counts.get(&TaskStatus::Succeeded).copied() == Some(200)
        },
    )
    .await;
    assert!(done, "not every grouped submit ran");
    w.shutdown().await;
}

/// Sends a submit to the api at `api` that must be given up (answered with an error).
async fn submit_given_up(env: &Env, api: &str) {
    let resp = env
        .http
        .post(format!("{api}/v1/tasks"))
        .json(&json!({"type": "noop", "payload": {"given": "up"}}))
        .send()
        .await
        .expect("request");
    assert_ne!(resp.status(), StatusCode::CREATED);
}

/// Waits (at most 10 s) until the given-up submit's record is removed.
async fn record_removed(env: &Env) {
    let gone = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { env.total_records().await == 0 },
    )
    .await;
    let counts = env.counts().await;
    assert!(gone, "the given-up submit's record stayed: {counts:?}");
}

/// A second later, the given-up submit's task is in Redis neither queued nor running,
/// and no record came back.
async fn nothing_left(env: &Env) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = env
        .broker
        .counts(&"default".parse().expect("queue"))
        .await
        .expect("counts");
    assert_eq!(c.queued + c.running, 0, "{c:?}");
    assert_eq!(env.total_records().await, 0);
}

/// A submit whose request times out while MongoDB holds its group's insert (the store
/// frozen) is answered with an error; when the insert then completes, the submit is
/// left out of the enqueue and its record removed, so it never runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_given_up_before_its_enqueue_never_runs() {
    let env = Env::start().await;
    let (proxy, frozen_store) = store_via_proxy(&env).await;
    frozen_store.ping().await.expect("store via proxy");
    let state = AppState {
        request_timeout: Duration::from_millis(800),
        ..AppState::new(env.broker.clone(), frozen_store)
    };
    let (api, stop) = serve_api(state).await;
    proxy.freeze();
    submit_given_up(&env, &api).await;
    proxy.thaw();
    let w = env.default_worker();
    // The insert lands after the thaw; then the record goes again.
    record_removed(&env).await;
    // Nothing reached Redis: nothing ran or exists.
    nothing_left(&env).await;
    w.shutdown().await;
    stop.cancel();
}

/// A submit whose request times out while its enqueue waits on Redis (the api's Redis
/// held after the group's insert) is answered with an error; when the enqueue then
/// lands, the task is taken back out of Redis and its record removed, so it never runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_given_up_during_its_enqueue_never_runs() {
    let env = Env::start().await;
    let (proxy, broker) = broker_via_proxy(&env).await;
    let state = AppState {
        request_timeout: Duration::from_millis(800),
        ..AppState::new(broker, env.store.clone())
    };
    let (api, stop) = serve_api(state).await;
    assert!(ready_within(&env.http, &api, Duration::from_secs(10)).await);
    proxy.freeze();
    submit_given_up(&env, &api).await;
    // The record was written before the enqueue was held.
    assert_eq!(env.total_records().await, 1);
    proxy.thaw();
    record_removed(&env).await;
    // Answered with an error, so not counted as accepted.
    let text = scrape_metrics(&env.http, &api).await;
    assert_eq!(metric_value(&text, SUBMITTED_NOOP), 0.0);
    // Its task left Redis too: a worker started now finds nothing to run.
    let w = env.default_worker();
    nothing_left(&env).await;
    w.shutdown().await;
    stop.cancel();
}
