//! The worker when an attempt goes wrong around its handler: a handler that panics
//! before it returns its future, an attempt that lost its lease finishing while the
//! same worker runs the task's next attempt, a cancel that arrives just before a
//! retryable failure, finished attempts that wait for a slow acknowledgement, and a
//! dequeue whose reply is lost. Each test drives the exact interleaving with signals
//! from its handlers (or a proxy in front of Redis) and checks the records and the
//! handler runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use taskq_core::{QueueName, TaskId, TaskStatus};
use taskq_redis::QueueKeys;
use taskq_testkit::wait_until;
use taskq_worker::{Handler, HandlerError, HandlerFuture, Registry, TaskContext};
use tokio::sync::{Notify, mpsc};

use crate::harness::{Env, broker_via_proxy};

const T: Duration = Duration::from_secs(30);

/// The hash key of task `id` of `queue`.
fn task_key(queue: &str, id: TaskId) -> String {
    let q: QueueName = queue.parse().expect("queue");
    QueueKeys::new(&q).task(&id)
}

/// A handler whose `call` panics before it returns a future.
struct PanicsBeforeItsFuture;

impl Handler for PanicsBeforeItsFuture {
    fn call(&self, _ctx: TaskContext) -> HandlerFuture {
        panic!("no future for you");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_panics_before_returning_its_future_fails_its_attempt() {
    let env = Env::start().await;
    let mut registry = Env::builtins();
    registry.register("panics-early", PanicsBeforeItsFuture);
    let w = env.worker(Env::settings("default"), registry);
    let id = env
        .submit(json!({"type": "panics-early", "max_attempts": 1}))
        .await;
    let rec = env.wait_final(id, T).await;
    assert_eq!(rec["status"], "dead", "{rec:#}");
    assert_eq!(rec["attempts"], 1, "{rec:#}");
    assert_eq!(rec["last_error"], "handler panicked: no future for you");
    assert!(
        wait_until(T, Duration::from_millis(20), || async {
            w.worker.in_flight() == 0
        })
        .await,
        "the attempt is still in flight"
    );
    // The worker keeps taking work.
    let after = env.submit(json!({"type": "noop"})).await;
    env.wait_status(after, TaskStatus::Succeeded, T).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_that_lost_its_lease_does_not_end_the_next_attempts_heartbeat() {
    const LEASE: Duration = Duration::from_millis(1000);
    const WORKER: &str = "w-faults";
    let env = Env::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<u32>();
    let release_first = Arc::new(Notify::new());
    let mut registry = Registry::new();
    let release = release_first.clone();
    registry.register("twice", move |ctx: TaskContext| {
        let started = started_tx.clone();
        let release = release.clone();
        async move {
            let _ = started.send(ctx.attempt);
            if ctx.attempt == 1 {
                release.notified().await;
                return Ok(Some(json!("first")));
            }
            // Longer than a lease: only heartbeats keep this attempt's lease.
            tokio::time::sleep(LEASE * 3).await;
            Ok(Some(json!("second")))
        }
    });
    let mut settings = Env::settings("default");
    settings.worker_id = WORKER.into();
    settings.lease = LEASE;
    let w = env.worker(settings, registry);
    let id = env
        .submit(json!({"type": "twice", "max_attempts": 2}))
        .await;
    assert_eq!(
        tokio::time::timeout(T, started.recv()).await.ok().flatten(),
        Some(1)
    );

    // Attempt 1's lease expires (only while attempt 1 still holds it: never attempt
    // 2's), so the reaper gives the task back to its queue and the worker takes it again.
    let mut conn = env.redis_conn().await;
    let q: QueueName = "default".parse().expect("queue");
    let expire = redis::Script::new(
        r"
if redis.call('HGET', KEYS[1], 'lease') == ARGV[1] then
  redis.call('ZADD', KEYS[2], 'XX', 0, ARGV[2])
end
return 0
",
    );
    let second = tokio::time::timeout(T, async {
        loop {
            let _: i64 = expire
                .key(task_key("default", id))
                .key(QueueKeys::new(&q).lease())
                .arg(format!("{WORKER}:1"))
                .arg(id.to_string())
                .invoke_async(&mut conn)
                .await
                .expect("expire the first lease");
            tokio::select! {
                a = started.recv() => return a,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
    .await
    .ok()
    .flatten();
    assert_eq!(second, Some(2));
    // Attempt 1 finishes while attempt 2 runs; its outcome is discarded.
    release_first.notify_one();

    let rec = env.wait_final(id, T).await;
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(rec["attempts"], 2, "{rec:#}");
    assert_eq!(rec["result"], "second", "{rec:#}");
    let expirations = rec["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["error"]
                .as_str()
                .is_some_and(|s| s.starts_with("lease expired"))
        })
        .count();
    assert_eq!(expirations, 1, "only the first lease expired: {rec:#}");
    assert!(
        wait_until(T, Duration::from_millis(20), || async {
            w.worker.in_flight() == 0
        })
        .await
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_flagged_before_a_retryable_failure_ends_the_task_cancelled() {
    let env = Env::start().await;
    // A task of the same key waits behind the cancelled one: its key must be freed.
    env.set_limits("default", json!({"max_running_per_key": 1}))
        .await;
    let id = env
        .submit(json!({"type": "fails-once-cancelled", "key": "k", "max_attempts": 3}))
        .await;
    let next = env.submit(json!({"type": "noop", "key": "k"})).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let conn = env.redis_conn().await;
    let flag_key = task_key("default", id);
    let mut registry = Env::builtins();
    let r = runs.clone();
    registry.register("fails-once-cancelled", move |ctx: TaskContext| {
        let runs = r.clone();
        let mut conn = conn.clone();
        let key = flag_key.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if ctx.attempt > 1 {
                return Ok(Some(json!("ran again")));
            }
            // Fails the moment the cancel is flagged, before the worker's next check.
            loop {
                let flag: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("cancel")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| HandlerError::permanent(format!("reading the flag: {e}")))?;
                if flag.as_deref() == Some("1") {
                    return Err(HandlerError::RetryAfter {
                        message: "failed after the cancel".into(),
                        after: Duration::ZERO,
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let w = env.worker(Env::settings("default"), registry);
    env.wait_status(id, TaskStatus::Running, T).await;
    let (status, body) = env.post(&format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let rec = env.wait_final(id, T).await;
    assert_eq!(rec["status"], "cancelled", "{rec:#}");
    assert_eq!(rec["attempts"], 1, "{rec:#}");
    env.wait_status(next, TaskStatus::Succeeded, T).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(env.redis_total("default").await, 0);
    w.shutdown().await;
}

/// While one queue's acknowledgement keeps failing (the completer retries it for up to
/// a lease), another queue's finished attempt waits for the completer: its lease must
/// not expire meanwhile. The failing acknowledgement is made by turning the first
/// task's hash into a string while its handler runs, so the ACK script fails at its
/// first read and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_attempt_keeps_its_lease_while_it_waits_for_its_acknowledgement() {
    const LEASE: Duration = Duration::from_millis(1000);
    let env = Env::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<&'static str>();
    let stuck_go = Arc::new(Notify::new());
    let waiting_go = Arc::new(Notify::new());
    let waiting_runs = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let started = started_tx.clone();
        let go = stuck_go.clone();
        let next = waiting_go.clone();
        registry.register("stuck", move |_ctx: TaskContext| {
            let started = started.clone();
            let go = go.clone();
            let next = next.clone();
            async move {
                let _ = started.send("stuck");
                go.notified().await;
                next.notify_one();
                Ok(None)
            }
        });
    }
    {
        let go = waiting_go.clone();
        let runs = waiting_runs.clone();
        registry.register("waiting", move |ctx: TaskContext| {
            let started = started_tx.clone();
            let go = go.clone();
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if ctx.attempt > 1 {
                    return Ok(None);
                }
                let _ = started.send("waiting");
                go.notified().await;
                // The stuck task's acknowledgement has begun by now.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(None)
            }
        });
    }
    let mut settings = Env::settings("qa,qb");
    settings.lease = LEASE;
    settings.concurrency = 4;
    let w = env.worker(settings, registry);
    let stuck = env
        .submit(json!({"type": "stuck", "queue": "qa", "max_attempts": 3}))
        .await;
    let waiting = env
        .submit(json!({"type": "waiting", "queue": "qb", "max_attempts": 3}))
        .await;
    for _ in 0..2 {
        assert!(
            tokio::time::timeout(T, started.recv())
                .await
                .ok()
                .flatten()
                .is_some()
        );
    }
    let mut conn = env.redis_conn().await;
    let _: () = redis::cmd("SET")
        .arg(task_key("qa", stuck))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("break the stuck task's hash");
    stuck_go.notify_one();

    let rec = env.wait_final(waiting, T).await;
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(rec["attempts"], 1, "{rec:#}");
    assert_eq!(waiting_runs.load(Ordering::SeqCst), 1);
    w.shutdown().await;
}

/// A dequeue that leased a task but whose reply was lost (held by a proxy, then the
/// connection cut) is repeated under its name and answers with that task: it runs at
/// once on its only attempt, instead of staying leased to nobody until the reaper
/// counts an attempt it never ran and it ends dead.
#[tokio::test(flavor = "multi_thread")]
async fn a_dequeue_whose_reply_is_lost_still_runs_the_tasks_it_leased() {
    let env = Env::start().await;
    // The dequeue script is loaded first, so the worker's first call runs it (a call
    // answered NOSCRIPT would lease nothing).
    let other: QueueName = "elsewhere".parse().expect("queue");
    env.lease(&other, 1, Duration::from_secs(1), "loader").await;
    let id = env.submit(json!({"type": "noop", "max_attempts": 1})).await;
    let (proxy, broker) = broker_via_proxy(&env).await;
    proxy.hold_replies_after(b":call:");
    let mut settings = Env::settings("default");
    settings.lease = Duration::from_secs(6);
    let w = env.worker_with(settings, Env::builtins(), broker, env.store.clone());
    // Leased in Redis (read directly), its reply held by the proxy.
    let mut conn = env.redis_conn().await;
    let key = task_key("default", id);
    let leased = wait_until(T, Duration::from_millis(10), || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let state: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("state")
                .query_async(&mut conn)
                .await
                .expect("state");
            state.as_deref() == Some("running")
        }
    })
    .await;
    assert!(leased, "the worker's dequeue never leased the task");
    proxy.sever();
    proxy.thaw();
    let rec = env.wait_final(id, T).await;
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(rec["attempts"], 1, "{rec:#}");
    // The call's record of what it leased expires with the lease.
    let calls: Vec<String> = redis::cmd("KEYS")
        .arg("taskq:{default}:call:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    for call in calls {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&call)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!((0..=6_000).contains(&ttl), "{call} kept for {ttl} ms");
    }
    w.shutdown().await;
}
