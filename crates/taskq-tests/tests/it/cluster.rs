//! The api and a worker on a three-master Redis Cluster: every queue's keys share its
//! `{queue}` hash tag, so each operation touches one slot while queues spread over nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use taskq_core::{TaskId, TaskStatus};
use taskq_testkit::wait_until;
use taskq_worker::{HandlerError, TaskContext};

use crate::harness::{Env, strings};

const T: Duration = Duration::from_secs(30);

fn id_of(v: &serde_json::Value) -> TaskId {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_works_on_a_redis_cluster() {
    let env = Env::start_on_cluster().await;
    let queues = ["critical", "default", "emails", "reports"];

    // Batch submit across queues (one Redis round trip per node), with priorities and a
    // delay; idempotent and single submits.
    let mut tasks = Vec::new();
    for q in queues {
        for p in ["high", "normal", "low"] {
            tasks.push(json!({"type": "echo", "queue": q, "priority": p, "payload": {"q": q}}));
        }
    }
    tasks.push(json!({"type": "noop", "queue": "reports", "delay_ms": 300}));
    let (status, body) = env.post("/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let batch: Vec<TaskId> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(batch.len(), 13);
    let welcome = json!({"type": "noop", "queue": "emails", "idempotency_key": "welcome-7"});
    let first = env
        .submit_expect(welcome.clone(), StatusCode::CREATED)
        .await;
    let again = env.submit_expect(welcome, StatusCode::OK).await;
    assert_eq!(again["id"], first["id"]);

    // Cancel a scheduled task before any worker runs.
    let (_, later) = env
        .post(
            "/v1/tasks",
            json!({"type": "noop", "queue": "critical", "delay_ms": 60_000}),
        )
        .await;
    let later = id_of(&later);
    let (status, body) = env
        .post(&format!("/v1/tasks/{later}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");

    // Pause one queue, limit another, then start a worker on all four.
    let (status, body) = env.post("/v1/queues/emails/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    let resp = env
        .http
        .put(format!("{}/v1/queues/reports/limits", env.api))
        .json(&json!({"max_concurrent": 1, "max_dispatches_per_second": 100}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::OK);
    // `flaky` fails until `healed` is set.
    let healed = Arc::new(AtomicBool::new(false));
    let mut registry = Env::builtins();
    let h = healed.clone();
    registry.register("flaky", move |_ctx: TaskContext| {
        let outcome = match h.load(Ordering::SeqCst) {
            true => Ok(None),
            false => Err(HandlerError::retry("not yet")),
        };
        async move { outcome }
    });
    let w = env.worker(
        Env::settings("critical=6,default=3,emails=1,reports=1"),
        registry,
    );
    for id in &batch {
        let (_, rec) = env.get(&format!("/v1/tasks/{id}")).await;
        if rec["queue"] == "emails" {
            continue;
        }
        env.wait_status(*id, TaskStatus::Succeeded, T).await;
    }
    // The paused queue kept its tasks ...
    let (_, emails) = env.get("/v1/queues/emails").await;
    assert_eq!(emails["counts"]["queued"], 4, "{emails}");
    // ... until it is resumed.
    let (status, _) = env.post("/v1/queues/emails/resume", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for id in &batch {
        env.wait_status(*id, TaskStatus::Succeeded, T).await;
    }
    env.wait_status(id_of(&first), TaskStatus::Succeeded, T)
        .await;
    let rec = env.record(batch[0]).await;
    assert_eq!(rec["result"], json!({"q": "critical"}));

    // Retries, the dead-letter queue and its retry on the cluster.
    let (_, doomed) = env
        .post(
            "/v1/tasks",
            json!({"type": "flaky", "queue": "default", "max_attempts": 2,
                   "backoff": {"initial_ms": 10, "max_ms": 20}}),
        )
        .await;
    let doomed = id_of(&doomed);
    let dead = env.wait_status(doomed, TaskStatus::Dead, T).await;
    assert_eq!(dead["attempts"], 2, "{dead}");
    healed.store(true, Ordering::SeqCst);
    let (status, body) = env.post("/v1/queues/default/retry-dead", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["retried"], 1);
    env.wait_status(doomed, TaskStatus::Succeeded, T).await;

    // Queue overview, and a recovery that finds nothing to add.
    let (status, body) = env.get("/v1/queues").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Vec<&str> = strings(&body["queues"], "name");
    for q in queues {
        assert!(listed.contains(&q), "{q} missing from {body}");
    }
    assert!(
        wait_until(T, Duration::from_millis(50), || async {
            let (_, d) = env.get("/v1/queues/default").await;
            d["processed_1m"].as_u64().unwrap_or(0) >= 4
        })
        .await
    );
    let (status, body) = env.post("/v1/admin/recover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enqueued"], 0, "{body}");
    for q in queues {
        assert_eq!(env.redis_total(q).await, 0, "{q}");
    }
    w.shutdown().await;
}
