//! Flows end to end: tasks with `depends_on` submitted as one DAG. The order is checked
//! from the records (every task's first start is no earlier than each dependency's
//! finish), and the dependents' handlers read their dependencies' results.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_core::{TaskId, TaskStatus};
use taskq_testkit::{ChildGuard, wait_until};
use taskq_worker::{Registry, TaskContext};

use crate::crash::worker_process_with;
use crate::harness::{Env, strings};

/// The built-ins plus `collect`: returns `{"name": <payload.name>, "deps": [the
/// dependencies' results, ordered by name]}`, read through `dependency_results`.
fn registry() -> Registry {
    let mut r = Env::builtins();
    r.register("collect", |ctx: TaskContext| async move {
        let mut deps: Vec<Value> = ctx
            .dependency_results()
            .await?
            .into_values()
            .map(|v| v.unwrap_or(Value::Null))
            .collect();
        deps.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_owned());
        Ok(Some(json!({"name": ctx.payload["name"], "deps": deps})))
    });
    r
}

fn collect(name: &str, deps: &[&str]) -> Value {
    json!({"name": name, "type": "collect", "payload": {"name": name}, "depends_on": deps})
}

/// Submits a flow; returns its id and its tasks' ids by name.
async fn submit(env: &Env, tasks: Vec<Value>) -> (TaskId, HashMap<String, TaskId>) {
    let (status, v) = env.post("/v1/flows", json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("flow id");
    let names = v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| {
            Some((
                t["name"].as_str()?.to_owned(),
                t["id"].as_str()?.parse().ok()?,
            ))
        })
        .collect();
    (id, names)
}

async fn flow(env: &Env, id: TaskId) -> Value {
    let (status, v) = env.get(&format!("/v1/flows/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

/// Waits until the flow's overall status is `want`; returns the flow.
async fn wait_flow(env: &Env, id: TaskId, want: &str, timeout: Duration) -> Value {
    let done = wait_until(timeout, Duration::from_millis(250), || async {
        flow(env, id).await["status"] == want
    })
    .await;
    let v = flow(env, id).await;
    assert!(done, "flow {id} did not become {want}: {v:#}");
    v
}

/// Every task of the flow started (its first `running` event) no earlier than each of
/// its dependencies finished, from the records. Returns how many edges were checked.
async fn assert_order(env: &Env, flow_id: TaskId) -> usize {
    let tasks = env.store.flow_tasks(flow_id).await.expect("flow tasks");
    let finished: HashMap<TaskId, _> = tasks
        .iter()
        .map(|t| (t.record.id, t.record.finished_at))
        .collect();
    let mut edges = 0;
    for t in &tasks {
        let r = &t.record;
        assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
        let first_start = r
            .events
            .iter()
            .find(|e| e.status == TaskStatus::Running)
            .map(|e| e.at)
            .expect("a running event");
        for dep in r.flow.as_ref().map(|f| &f.depends_on[..]).unwrap_or(&[]) {
            let done = finished[dep].expect("dependency finished");
            assert!(
                first_start >= done,
                "task {} started at {first_start} before its dependency {dep} finished at {done}",
                r.id
            );
            edges += 1;
        }
    }
    edges
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_runs_in_order_and_each_task_reads_its_dependencys_result() {
    let env = Env::start().await;
    let (id, names) = submit(
        &env,
        vec![
            collect("a", &[]),
            collect("b", &["a"]),
            collect("c", &["b"]),
        ],
    )
    .await;
    let v = flow(&env, id).await;
    assert_eq!(v["status"], "running");
    assert_eq!(v["tasks"][1]["status"], "waiting", "{v:#}");
    assert_eq!(v["tasks"][2]["depends_on"][0], names["b"].to_string());
    let w = env.worker(Env::settings("default"), registry());
    let v = wait_flow(&env, id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(v["counts"]["succeeded"], 3, "{v:#}");
    assert_eq!(assert_order(&env, id).await, 2);
    let c = env.record(names["c"]).await;
    assert_eq!(
        c["result"],
        json!({"name": "c", "deps": [{"name": "b", "deps": [{"name": "a", "deps": []}]}]})
    );
    // The record shows the whole way: waiting, then queued, running, succeeded.
    let statuses: Vec<&str> = strings(&c["events"], "status");
    assert_eq!(statuses, ["waiting", "queued", "running", "succeeded"]);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_and_fan_in_joins_every_branch() {
    let env = Env::start().await;
    let mut tasks = vec![collect("a", &[])];
    let branches: Vec<String> = (0..20).map(|i| format!("b{i:02}")).collect();
    for b in &branches {
        tasks.push(collect(b, &["a"]));
    }
    let refs: Vec<&str> = branches.iter().map(String::as_str).collect();
    tasks.push(collect("c", &refs));
    let (id, names) = submit(&env, tasks).await;
    let w = env.worker(Env::settings("default"), registry());
    wait_flow(&env, id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(assert_order(&env, id).await, 40);
    let c = env.record(names["c"]).await;
    let got: Vec<&str> = strings(&c["result"]["deps"], "name");
    assert_eq!(got, refs);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_dependency_cancels_its_dependents_and_a_retry_of_the_flow_runs_them() {
    let env = Env::start().await;
    // `a` fails its first run for good, and succeeds when retried by hand; `d` does not
    // depend on it and succeeds.
    let mut registry = registry();
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    registry.register("once", move |_ctx: TaskContext| {
        let first = !failed.swap(true, std::sync::atomic::Ordering::SeqCst);
        async move {
            if first {
                Err(taskq_worker::HandlerError::permanent("the first run fails"))
            } else {
                Ok(Some(json!({"name": "a"})))
            }
        }
    });
    let (id, names) = submit(
        &env,
        vec![
            json!({"name": "a", "type": "once"}),
            collect("b", &["a"]),
            collect("c", &["b"]),
            collect("d", &[]),
        ],
    )
    .await;
    let w = env.worker(Env::settings("default"), registry);
    let v = wait_flow(&env, id, "failed", Duration::from_secs(30)).await;
    let a = names["a"];
    for t in ["b", "c"] {
        let r = env.record(names[t]).await;
        assert_eq!(r["status"], "cancelled", "{r:#}");
        assert_eq!(r["last_error"], format!("dependency {a} died"), "{r:#}");
        assert_eq!(r["attempts"], 0, "{r:#}");
    }
    assert_eq!(
        v["counts"],
        json!({"cancelled": 2, "dead": 1, "succeeded": 1})
    );

    let (status, r) = env.post(&format!("/v1/flows/{id}/retry"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r, json!({"requeued": 1, "waiting": 2}));
    wait_flow(&env, id, "succeeded", Duration::from_secs(30)).await;
    let c = env.record(names["c"]).await;
    assert_eq!(
        c["result"],
        json!({"name": "c", "deps": [{"name": "b", "deps": [{"name": "a"}]}]})
    );
    assert_eq!(assert_order(&env, id).await, 2);
    w.shutdown().await;
}

/// Retrying one dead task (`POST /v1/tasks/{id}/retry`) puts back to `waiting` the tasks
/// of its flow that were cancelled because it died, and only those: `e`, cancelled
/// because `x` died, stays cancelled until `x` is retried too (through the queue's
/// `retry-dead`).
#[tokio::test(flavor = "multi_thread")]
async fn retrying_one_dead_task_puts_back_the_tasks_its_death_cancelled() {
    let env = Env::start().await;
    let mut registry = registry();
    let runs = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, u32>::new()));
    registry.register("once", move |ctx: TaskContext| {
        let name = ctx.payload["name"].as_str().unwrap_or_default().to_owned();
        let first = {
            let mut runs = runs.lock().expect("runs");
            let n = runs.entry(name.clone()).or_default();
            *n += 1;
            *n == 1
        };
        async move {
            if first {
                Err(taskq_worker::HandlerError::permanent("the first run fails"))
            } else {
                Ok(Some(json!({ "name": name })))
            }
        }
    });
    let once = |name: &str| json!({"name": name, "type": "once", "payload": {"name": name}});
    let (id, names) = submit(
        &env,
        vec![
            once("a"),
            collect("b", &["a"]),
            collect("c", &["b"]),
            once("x"),
            collect("e", &["x"]),
        ],
    )
    .await;
    let w = env.worker(Env::settings("default"), registry);
    wait_flow(&env, id, "failed", Duration::from_secs(30)).await;
    let (a, x) = (names["a"], names["x"]);
    for (t, dead) in [("b", a), ("c", a), ("e", x)] {
        let r = env.record(names[t]).await;
        assert_eq!(r["status"], "cancelled", "{r:#}");
        assert_eq!(r["last_error"], format!("dependency {dead} died"), "{r:#}");
    }

    let (status, r) = env.post(&format!("/v1/tasks/{a}/retry"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    env.wait_status(names["b"], TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    let c = env
        .wait_status(names["c"], TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    assert_eq!(
        c["result"],
        json!({"name": "c", "deps": [{"name": "b", "deps": [{"name": "a"}]}]})
    );
    let history: Vec<&str> = strings(&c["events"], "status");
    assert_eq!(
        history,
        [
            "waiting",
            "cancelled",
            "waiting",
            "queued",
            "running",
            "succeeded"
        ],
        "{c:#}"
    );
    let e = env.record(names["e"]).await;
    assert_eq!(e["status"], "cancelled", "{e:#}");
    assert_eq!(flow(&env, id).await["status"], "failed");

    let (status, r) = env.post("/v1/queues/default/retry-dead", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    wait_flow(&env, id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(assert_order(&env, id).await, 3);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_handler_runs_when_a_task_dies_and_is_cancelled_when_none_does() {
    let env = Env::start().await;
    let w = env.worker(Env::settings("default"), registry());
    let handler = json!({"type": "collect", "payload": {"name": "handler"}});
    let v = env.post_expect("/v1/flows", json!({"tasks": [ collect("a", &[]), {"name": "boom", "type": "fail", "payload": {"permanent": true}, "depends_on": ["a"]}, collect("c", &["boom"]), ], "on_failure": handler}), StatusCode::CREATED).await;
    let failing: TaskId = v["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
    assert_eq!(v["tasks"][3]["on_failure"], true, "{v:#}");
    assert_eq!(
        v["tasks"][3]["depends_on"].as_array().map(Vec::len),
        Some(3)
    );
    let handler_id: TaskId = v["tasks"][3]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("handler id");
    let boom: TaskId = v["tasks"][1]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("boom id");
    let h = env
        .wait_status(handler_id, TaskStatus::Succeeded, Duration::from_secs(30))
        .await;
    // It ran once a task died, and read the results of those that succeeded.
    assert_eq!(
        h["result"],
        json!({"name": "handler", "deps": [null, null, {"name": "a", "deps": []}]})
    );
    let queued = h["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["status"] == "queued"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(queued["error"], format!("dependency {boom} died"), "{h:#}");
    let v = wait_flow(&env, failing, "failed", Duration::from_secs(30)).await;
    assert_eq!(
        v["counts"],
        json!({"cancelled": 1, "dead": 1, "succeeded": 2}),
        "{v:#}"
    );

    let v = env
        .post_expect(
            "/v1/flows",
            json!({"tasks": [collect("a", &[]), collect("b", &["a"])], "on_failure": handler}),
            StatusCode::CREATED,
        )
        .await;
    let fine: TaskId = v["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
    let v = wait_flow(&env, fine, "succeeded", Duration::from_secs(30)).await;
    let handler = &v["tasks"][2];
    let done = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { flow(&env, fine).await["tasks"][2]["status"] == "cancelled" },
    )
    .await;
    assert!(done, "{v:#}");
    let h = env
        .record(
            handler["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("id"),
        )
        .await;
    assert_eq!(h["last_error"], "every task of the flow succeeded", "{h:#}");
    assert_eq!(h["attempts"], 0);
    w.shutdown().await;
}

/// The queue's active keys, as `GET /v1/queues/{name}` shows them.
async fn active_keys(env: &Env, queue: &str) -> Value {
    let (status, q) = env.get(&format!("/v1/queues/{queue}")).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    q["keys"]["active"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn keyed_tasks_in_a_flow_wait_in_their_key_and_never_overlap_it() {
    let env = Env::start().await;
    env.set_limits("default", json!({"max_running_per_key": 1}))
        .await;
    // A chain whose every task has the key `k`, and a branch that dies so that its
    // keyed dependent is cancelled: each joins its key while waiting and leaves it.
    let keyed = |mut t: Value| {
        t["key"] = json!("k");
        t
    };
    let (id, names) = submit(
        &env,
        vec![
            keyed(collect("a", &[])),
            keyed(collect("b", &["a"])),
            keyed(collect("c", &["b"])),
            keyed(json!({"name": "doomed", "type": "fail", "payload": {"permanent": true}})),
            keyed(collect("never", &["doomed"])),
        ],
    )
    .await;
    assert_eq!(active_keys(&env, "default").await, 1);
    // Plain keyed tasks of the same key, submitted after the flow.
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(
            env.submit(json!({"type": "sleep", "payload": {"ms": 20 + i}, "key": "k"}))
                .await,
        );
    }
    let w = env.worker(Env::settings("default"), registry());
    let v = wait_flow(&env, id, "failed", Duration::from_secs(60)).await;
    assert_eq!(
        v["counts"],
        json!({"succeeded": 3, "dead": 1, "cancelled": 1}),
        "{v:#}"
    );
    for o in &others {
        env.wait_status(*o, TaskStatus::Succeeded, Duration::from_secs(30))
            .await;
    }
    // One at a time for the key: no two of its attempts overlap (and so the chain ran
    // in its order).
    let mut spans = Vec::new();
    for (name, t) in names
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .chain(others.iter().map(|t| ("", t)))
    {
        let r = env.record(*t).await;
        let at = |f: &str| {
            r[f].as_str()
                .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
        };
        if let (Some(s), Some(f)) = (at("started_at"), at("finished_at"))
            && (r["status"] == "succeeded" || r["status"] == "dead")
        {
            spans.push((s, f, format!("{name} {t}")));
        }
    }
    assert_eq!(spans.len(), 4 + others.len(), "{spans:?}");
    spans.sort();
    let chain: Vec<&str> = spans
        .iter()
        .filter_map(|(_, _, n)| {
            ["a ", "b ", "c "]
                .iter()
                .find(|p| n.starts_with(**p))
                .copied()
        })
        .collect();
    assert_eq!(chain, ["a ", "b ", "c "], "{spans:?}");
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two tasks of key k overlapped: {pair:?}"
        );
    }
    // The key leaves Redis with its last task, the cancelled one included.
    let gone = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { active_keys(&env, "default").await == 0 },
    )
    .await;
    assert!(
        gone,
        "the key is still active: {}",
        active_keys(&env, "default").await
    );
    assert_eq!(env.redis_total("default").await, 0);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_flow_cancels_every_unfinished_task() {
    let env = Env::start().await;
    let (id, names) = submit(
        &env,
        vec![
            json!({"name": "slow", "type": "sleep", "payload": {"ms": 60_000}}),
            collect("b", &["slow"]),
            collect("c", &["b"]),
        ],
    )
    .await;
    let w = env.worker(Env::settings("default"), registry());
    env.wait_status(names["slow"], TaskStatus::Running, Duration::from_secs(30))
        .await;
    let (status, r) = env.post(&format!("/v1/flows/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r, json!({"cancelled": 2, "signalled": 1}));
    let v = wait_flow(&env, id, "cancelled", Duration::from_secs(30)).await;
    assert_eq!(v["counts"], json!({"cancelled": 3}), "{v:#}");
    // Nothing of the flow is left to run in Redis.
    assert_eq!(env.redis_total("default").await, 0);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_of_ten_thousand_tasks_respects_every_dependency() {
    const LAYERS: usize = 10;
    const WIDTH: usize = 1_000;
    let env = Env::start().await;
    let mut tasks = Vec::with_capacity(LAYERS * WIDTH);
    for l in 0..LAYERS {
        for i in 0..WIDTH {
            let deps: Vec<String> = if l == 0 {
                Vec::new()
            } else {
                vec![
                    format!("{}-{i}", l - 1),
                    format!("{}-{}", l - 1, (i + 1) % WIDTH),
                ]
            };
            tasks.push(json!({"name": format!("{l}-{i}"), "type": "noop", "depends_on": deps}));
        }
    }
    let (id, names) = submit(&env, tasks).await;
    assert_eq!(names.len(), LAYERS * WIDTH);
    let mut settings = Env::settings("default");
    settings.concurrency = 64;
    let workers = [
        env.worker(settings.clone(), registry()),
        env.worker(settings, registry()),
    ];
    wait_flow(&env, id, "succeeded", Duration::from_secs(300)).await;
    assert_eq!(assert_order(&env, id).await, (LAYERS - 1) * WIDTH * 2);
    assert_eq!(env.redis_total("default").await, 0);
    for w in workers {
        w.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_completes_when_workers_are_killed_mid_flow() {
    let env = Env::start().await;
    // 40 chains of 8 tasks of 200 ms each: at least 1.6 s, longer than the kills take.
    let mut tasks = Vec::new();
    for c in 0..40 {
        for s in 0..8 {
            let deps: Vec<String> = if s == 0 {
                Vec::new()
            } else {
                vec![format!("{c}-{}", s - 1)]
            };
            tasks.push(
                json!({"name": format!("{c}-{s}"), "type": "sleep", "payload": {"ms": 200},
                "depends_on": deps, "max_attempts": 20}),
            );
        }
    }
    let (id, _) = submit(&env, tasks).await;
    let start = |i: usize| -> ChildGuard {
        worker_process_with(
            &env,
            &format!("flow-worker-{i}"),
            "http://127.0.0.1/",
            &taskq_testkit::mongo_uri(),
            &[],
        )
    };
    let mut workers: Vec<ChildGuard> = (0..2).map(start).collect();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Mid-flow: the kill loses running attempts and unapplied outbox entries.
        assert_eq!(flow(&env, id).await["status"], "running");
        let i = round % workers.len();
        workers[i].kill_9();
        workers[i] = start(10 + round);
    }
    let v = wait_flow(&env, id, "succeeded", Duration::from_secs(120)).await;
    assert_eq!(assert_order(&env, id).await, 40 * 7);
    // Attempts were lost to the kills and made again.
    let retried = v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["attempts"].as_u64().unwrap_or(0) > 1)
        .count();
    assert!(retried > 0, "no attempt was lost: {v:#}");
    for w in &mut workers {
        w.terminate();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_after_redis_lost_its_data_rebuilds_waiting_tasks() {
    let env = Env::start().await;
    let (id, names) = submit(
        &env,
        vec![
            collect("a", &[]),
            collect("b1", &["a"]),
            collect("b2", &["a"]),
            collect("c", &["b1", "b2"]),
        ],
    )
    .await;
    env.flush_redis().await;
    let (status, body) = env.post("/v1/admin/recover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let w = env.worker(Env::settings("default"), registry());
    wait_flow(&env, id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(assert_order(&env, id).await, 4);
    let c = env.record(names["c"]).await;
    assert_eq!(c["result"]["deps"][1]["name"], "b2", "{c:#}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_spanning_two_queues_completes_on_redis_cluster() {
    let env = Env::start_on_cluster().await;
    let mut a = collect("a", &[]);
    a["queue"] = json!("emails");
    let mut c = collect("c", &["b"]);
    c["queue"] = json!("emails");
    let (id, names) = submit(&env, vec![a, collect("b", &["a"]), c]).await;
    let w = env.worker(Env::settings("emails,default"), registry());
    wait_flow(&env, id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(assert_order(&env, id).await, 2);
    let c = env.record(names["c"]).await;
    assert_eq!(c["queue"], "emails");
    assert_eq!(c["result"]["deps"][0]["deps"][0]["name"], "a", "{c:#}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_flows_are_refused_and_nothing_is_written() {
    let env = Env::start().await;
    let noop =
        |name: &str, deps: &[&str]| json!({"name": name, "type": "noop", "depends_on": deps});
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"type": "noop"})).collect();
    let cases: Vec<(&str, Value)> = vec![
        (
            "cycle",
            json!([noop("a", &["c"]), noop("b", &["a"]), noop("c", &["b"])]),
        ),
        ("unknown name", json!([noop("a", &["nobody"])])),
        ("self-dependency", json!([noop("a", &["a"])])),
        ("duplicate name", json!([noop("a", &[]), noop("a", &[])])),
        (
            "duplicate dependency",
            json!([noop("a", &[]), noop("b", &["a", "a"])]),
        ),
        (
            "no such task",
            json!([noop("a", &[&TaskId::new().to_string()])]),
        ),
        ("too large", Value::Array(too_many)),
        ("empty", json!([])),
    ];
    for (what, tasks) in cases {
        let (status, v) = env.post("/v1/flows", json!({"tasks": tasks})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert_eq!(v["error"]["code"], "invalid_flow", "{what}: {v}");
    }
    // A bad task inside a flow has the codes of a single submit, with its place.
    let v = env
        .post_expect(
            "/v1/flows",
            json!({"tasks": [{"type": "noop"}, {"type": "noop", "max_attempts": 0}]}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_eq!(v["error"]["code"], "invalid_field", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("tasks[1]")),
        "{v}"
    );
    let v = env
        .post_expect(
            "/v1/flows",
            json!({"tasks": [{"type": "noop", "nmae": "a"}]}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    let v = env.post_expect("/v1/flows", json!({"tasks": [{"type": "noop", "name": "a"}, {"type": "noop", "depends_on": ["a"], "delay_ms": 10}]}), StatusCode::BAD_REQUEST).await;
    assert_eq!(v["error"]["code"], "invalid_flow", "{v}");
    assert_eq!(env.total_records().await, 0);
    assert_eq!(env.redis_total("default").await, 0);
    let (status, v) = env.get(&format!("/v1/flows/{}", TaskId::new())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = env.get("/v1/flows/not-an-id").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_id", "{v}");
}
