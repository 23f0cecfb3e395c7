//! A store that stops answering, and api processes killed with SIGKILL over and over,
//! checked against what really happened: executions are counted by the test's own HTTP
//! server (called by the built-in `http` handler), never taken from taskq's word.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_core::{TaskId, TaskRecord, TaskStatus};
use taskq_store::{ListFilter, Store};
use taskq_testkit::{
    ChaosProxy, ChildGuard, free_port, mongo_addr, mongo_uri, mongo_uri_via, wait_until,
};

use taskq_api::AppState;

use crate::crash::{Log, execution_log, worker_process_with};
use crate::harness::{
    Env, Recorder, api_process, broker_via_proxy, kill_in_turn, ready, ready_within, serve_api,
    store_via_proxy,
};

/// Waits until every api of `urls` is ready; fails with `what` otherwise.
async fn all_ready(http: &reqwest::Client, urls: &[String], what: &str) {
    for u in urls {
        assert!(
            wait_until(
                Duration::from_secs(30),
                Duration::from_millis(50),
                || ready(http, u)
            )
            .await,
            "{u} {what}"
        );
    }
}

/// Every record of the database, oldest first.
async fn all_records(store: &Store) -> Vec<TaskRecord> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(&ListFilter::default(), 1000, cursor)
            .await
            .expect("list");
        out.extend(page.tasks);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    out.reverse();
    out
}

fn is_submit_failed(r: &TaskRecord) -> bool {
    r.status == TaskStatus::Cancelled
        && r.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with(taskq_store::SUBMIT_FAILED))
}

/// One submit as the client saw it.
#[derive(Debug)]
struct Answer {
    sent: Instant,
    took: Duration,
    status: Option<StatusCode>,
    retry_after: Option<String>,
    body: Value,
}

/// The store an outage test takes away.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outage {
    Mongodb,
    Redis,
}

impl Outage {
    fn name(self) -> &'static str {
        match self {
            Self::Mongodb => "mongodb",
            Self::Redis => "redis",
        }
    }
}

/// While MongoDB does not answer at all (every byte held, as when its server is
/// stopped), the api notices within a couple of probe rounds: `/readyz` fails, and every
/// submit is refused at once with `503`, `Retry-After` and code `unavailable` instead of
/// waiting out a timeout. Once MongoDB answers again the api is ready within seconds, and
/// every record is consistent within 10 s: each accepted task ran and succeeded, each
/// record written by a submit the client saw fail ends `cancelled` (`submit_failed`) and
/// never ran.
#[tokio::test(flavor = "multi_thread")]
async fn a_mongodb_outage_is_refused_at_once_and_records_settle_after_it() {
    outage(Outage::Mongodb).await;
}

/// The same with Redis held instead. A submit abandoned while its enqueue was already
/// on its way to Redis may still be enqueued when Redis answers again (the client got
/// `503`, an unknown outcome): its record then follows the task to `succeeded`, and the
/// execution log agrees; every other one ends `submit_failed` and never ran.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_refused_at_once_and_records_settle_after_it() {
    outage(Outage::Redis).await;
}

async fn outage(store: Outage) {
    let env = Env::start().await;
    let proxy = ChaosProxy::start(match store {
        Outage::Mongodb => mongo_addr(),
        Outage::Redis => env.redis.addr(),
    });
    let (mongodb, redis) = match store {
        Outage::Mongodb => (mongo_uri_via(proxy.addr()), env.redis.url()),
        Outage::Redis => (mongo_uri(), format!("redis://{}", proxy.addr())),
    };
    let (url, log) = execution_log(Duration::ZERO).await;
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let _api = api_process(
        &env,
        port,
        &mongodb,
        &[
            ("TASKQ_REDIS_URL", &redis),
            ("TASKQ_STORE_PROBE_INTERVAL_MS", "200"),
            ("TASKQ_STORE_PROBE_TIMEOUT_MS", "500"),
        ],
    );
    let _worker = worker_process_with(
        &env,
        "taskq-worker",
        &format!("{url}/"),
        &mongodb,
        &[
            ("TASKQ_SUBMIT_GRACE_MS", "6000"),
            ("TASKQ_REDIS_URL", &redis),
        ],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    assert!(
        ready_within(&http, &api, Duration::from_secs(30)).await,
        "the api never became ready"
    );

    // Four clients submit without pause for the whole run.
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, api, answers, stop) =
                (http.clone(), api.clone(), answers.clone(), stop.clone());
            let task = json!({"type": "http", "payload": {"url": format!("{url}/hit")}});
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let sent = Instant::now();
                    let resp = http
                        .post(format!("{api}/v1/tasks"))
                        .json(&task)
                        .send()
                        .await;
                    let took = sent.elapsed();
                    let answer = match resp {
                        Ok(r) => {
                            let status = r.status();
                            let retry_after = r
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = r.json().await.unwrap_or(Value::Null);
                            Answer {
                                sent,
                                took,
                                status: Some(status),
                                retry_after,
                                body,
                            }
                        }
                        Err(_) => Answer {
                            sent,
                            took,
                            status: None,
                            retry_after: None,
                            body: Value::Null,
                        },
                    };
                    answers.lock().expect("answers").push(answer);
                    if took < Duration::from_millis(5) {
                        // Refusals are instant: do not spin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.freeze();
    let frozen = Instant::now();
    let noticed = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            http.get(format!("{api}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        },
    )
    .await;
    let circuit_open = Instant::now();
    assert!(noticed, "/readyz never reported the outage");
    let readyz: Value = http
        .get(format!("{api}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("readyz body");
    assert_eq!(
        readyz["reason"],
        format!("{} is unreachable", store.name()),
        "{readyz}"
    );
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(frozen.elapsed())).await;
    proxy.thaw();
    let thawed = Instant::now();
    assert!(
        ready_within(&http, &api, Duration::from_secs(10)).await,
        "the api was not ready again within 10 s of MongoDB answering"
    );
    let ready_after = thawed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    for c in clients {
        c.await.expect("client");
    }

    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    // Every submit sent after the circuit opened and answered before the store came back
    // was refused by the circuit, with advice on when to come back. (One sent just before
    // the thaw may reach the api after it, when the circuit has closed again.)
    let refused: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= circuit_open && a.sent + a.took < thawed)
        .collect();
    assert!(
        refused.len() > 10,
        "too few submits during the outage: {}",
        refused.len()
    );
    for a in &refused {
        assert_eq!(a.status, Some(StatusCode::SERVICE_UNAVAILABLE), "{a:?}");
        assert_eq!(a.retry_after.as_deref(), Some("1"), "{a:?}");
        assert_eq!(a.body["error"]["code"], "unavailable", "{a:?}");
        assert_eq!(
            a.body["error"]["message"],
            format!("{} is unreachable; retry later", store.name()),
            "{a:?}"
        );
    }
    let mut latencies: Vec<Duration> = refused.iter().map(|a| a.took).collect();
    latencies.sort();
    let accepted: HashSet<TaskId> = answers
        .iter()
        .filter(|a| a.status == Some(StatusCode::CREATED))
        .filter_map(|a| a.body["id"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    assert!(!accepted.is_empty());

    // Records settle within 10 s of the store answering again.
    let final_state = |r: &TaskRecord| {
        if accepted.contains(&r.id) {
            r.status == TaskStatus::Succeeded
        } else {
            is_submit_failed(r) || (store == Outage::Redis && r.status == TaskStatus::Succeeded)
        }
    };
    let settled = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { all_records(&env.store).await.iter().all(final_state) },
    )
    .await;
    let settled_after = thawed.elapsed();
    let records = all_records(&env.store).await;
    check_against_log(&records, &accepted, &log);
    let unsettled: Vec<(TaskId, TaskStatus)> = records
        .iter()
        .filter(|r| !final_state(r))
        .map(|r| (r.id, r.status))
        .collect();
    assert!(
        settled,
        "records not settled 10 s after the outage: {unsettled:?}"
    );
    let phantoms = records.iter().filter(|r| is_submit_failed(r)).count();
    eprintln!(
        "{} outage: {} submits refused while it was frozen, latency p50 {:?} max {:?}; \
         circuit opened {:?} after the freeze; ready {ready_after:?} and records settled \
         {settled_after:?} after the thaw; {} accepted, {phantoms} records of failed submits cancelled",
        store.name(),
        refused.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        circuit_open - frozen,
        accepted.len(),
    );
}

/// The independent log agrees with the records: every accepted task ran, every task that
/// ran has a record that says it succeeded, and no record of a failed submit ran.
fn check_against_log(records: &[TaskRecord], accepted: &HashSet<TaskId>, log: &Log) {
    let ran = log.lock().expect("log").clone();
    let by_id: HashMap<TaskId, &TaskRecord> = records.iter().map(|r| (r.id, r)).collect();
    for id in accepted {
        assert!(ran.contains_key(id), "accepted task {id} never ran");
    }
    for id in ran.keys() {
        let rec = by_id.get(id);
        assert!(
            rec.is_some_and(|r| r.status == TaskStatus::Succeeded),
            "task {id} ran but its record says {:?}",
            rec.map(|r| (r.status, r.last_error.clone()))
        );
    }
    for r in records.iter().filter(|r| is_submit_failed(r)) {
        assert!(
            !ran.contains_key(&r.id),
            "{} ended submit_failed but ran",
            r.id
        );
    }
}

/// Two api processes, one of them killed with SIGKILL every 700 ms (ten times) and
/// restarted, while clients submit with idempotency keys and repeat a submit that got no
/// answer or a 5xx against the other api until it is answered. Afterwards every record
/// reaches a final state with no manual step, and the execution log agrees: each
/// accepted task ran once per record, a record left by a killed submit either ran to
/// `succeeded` (its enqueue happened) or ended `cancelled` with `submit_failed` and never
/// ran; no key has two records besides those of failed submits (a failed submit gives
/// its key up to a repeat, which submits the task anew).
#[tokio::test(flavor = "multi_thread")]
async fn records_match_the_executions_after_apis_are_killed_again_and_again() {
    let env = Env::start().await;
    let (url, log) = execution_log(Duration::ZERO).await;
    let uri = mongo_uri();
    let grace = [("TASKQ_SUBMIT_GRACE_MS", "6000")];
    let _workers: Vec<ChildGuard> = (0..2)
        .map(|i| {
            worker_process_with(
                &env,
                &format!("taskq-worker-{i}"),
                &format!("{url}/"),
                &uri,
                &grace,
            )
        })
        .collect();
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut apis: Vec<ChildGuard> = ports
        .iter()
        .map(|&p| api_process(&env, p, &uri, &[]))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    all_ready(&http, &urls, "never became ready").await;

    // Key → (task id, whether the answer was 201 Created).
    let accepted: Arc<Mutex<HashMap<String, (TaskId, bool)>>> = Arc::default();
    let given_up: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (http, urls, accepted, given_up, stop) = (
                http.clone(),
                urls.clone(),
                accepted.clone(),
                given_up.clone(),
                stop.clone(),
            );
            let task = json!({"type": "http", "payload": {"url": format!("{url}/hit")}});
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    n += 1;
                    let key = format!("client-{c}-{n}");
                    let mut answered = None;
                    for attempt in 0..40usize {
                        let api = &urls[(c + attempt) % urls.len()];
                        let resp = http
                            .post(format!("{api}/v1/tasks"))
                            .header("idempotency-key", &key)
                            .json(&task)
                            .send()
                            .await;
                        match resp {
                            Ok(r)
                                if r.status() == StatusCode::CREATED
                                    || r.status() == StatusCode::OK =>
                            {
                                let created = r.status() == StatusCode::CREATED;
                                let v: Value = r.json().await.unwrap_or(Value::Null);
                                answered = v["id"]
                                    .as_str()
                                    .and_then(|s| s.parse::<TaskId>().ok())
                                    .map(|id| (id, created));
                                if answered.is_some() {
                                    break;
                                }
                            }
                            Ok(r)
                                if r.status().is_client_error()
                                    && r.status() != StatusCode::CONFLICT =>
                            {
                                panic!("submit refused: {} {:?}", r.status(), r.text().await);
                            }
                            // No answer, a 5xx or a 409 (the key's claim is held by a
                            // killed submit): repeat, as a client should.
                            _ => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    match answered {
                        Some(id) => {
                            accepted.lock().expect("accepted").insert(key, id);
                        }
                        None => given_up.lock().expect("given up").push(key),
                    }
                }
            })
        })
        .collect();

    let kills = kill_in_turn(&mut apis, 10, Duration::from_millis(700), |i, _| {
        api_process(&env, ports[i], &uri, &[])
    })
    .await;
    all_ready(&http, &urls, "did not come back").await;
    stop.cancel();
    for c in clients {
        c.await.expect("client");
    }
    let last_kill = Instant::now();
    let accepted = accepted.lock().expect("accepted").clone();
    let given_up = given_up.lock().expect("given up").clone();
    // A 201 is a task that reached Redis; a 200 answers a repeat with the key's task as
    // it stands.
    let created_ids: HashSet<TaskId> = accepted
        .values()
        .filter(|(_, created)| *created)
        .map(|(id, _)| *id)
        .collect();

    // Every record reaches a final state on its own: succeeded, or cancelled because its
    // submit never reached Redis.
    let settled = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            all_records(&env.store)
                .await
                .iter()
                .all(|r| r.status == TaskStatus::Succeeded || is_submit_failed(r))
        },
    )
    .await;
    let settled_after = last_kill.elapsed();
    let records = all_records(&env.store).await;
    let open: Vec<(TaskId, TaskStatus)> = records
        .iter()
        .filter(|r| !(r.status == TaskStatus::Succeeded || is_submit_failed(r)))
        .map(|r| (r.id, r.status))
        .collect();
    assert!(settled, "records never reached a final state: {open:?}");
    // An answered key's task is its record; a created one ran.
    for (key, (id, created)) in &accepted {
        let rec = records.iter().find(|r| r.id == *id);
        assert!(
            rec.is_some_and(|r| r.idempotency_key.as_deref() == Some(key.as_str())
                && (r.status == TaskStatus::Succeeded || !created)),
            "key {key}: answered {id} (created: {created}), record {:?}",
            rec.map(|r| (r.status, r.last_error.clone()))
        );
    }
    // One record per key at most, besides records of failed submits.
    let mut keys = HashSet::new();
    for r in records.iter().filter(|r| !is_submit_failed(r)) {
        let key = r.idempotency_key.clone().expect("every submit had a key");
        assert!(keys.insert(key.clone()), "two records for key {key}");
    }
    check_against_log(&records, &created_ids, &log);
    let duplicates: u32 = log.lock().expect("log").values().map(|n| n - 1).sum();
    let phantoms = records.iter().filter(|r| is_submit_failed(r)).count();
    let repeats_answered = accepted.len() - created_ids.len();
    eprintln!(
        "api kills: {kills}; {} submits answered ({repeats_answered} by a repeat), {} given up; \
         {} records, {phantoms} cancelled as submit_failed, {duplicates} duplicate \
         executions; all settled {settled_after:?} after the last kill",
        accepted.len(),
        given_up.len(),
        records.len(),
    );
    assert_eq!(duplicates, 0, "an api crash made a task run twice");
}

/// A submit whose enqueue reached Redis but whose reply was lost, for a task that ran to
/// its end before the submit's undo looked (its updates still on their way to MongoDB):
/// the undo cannot tell it from a task that never arrived, so it must not delete the
/// record. The client sees `503`; the record ends `succeeded` once the worker's updates
/// land, as the execution says.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_enqueue_reply_for_a_task_that_already_ran_keeps_its_record() {
    let env = Env::start().await;
    let (store_proxy, worker_store) = store_via_proxy(&env).await;
    let (redis_proxy, broker) = broker_via_proxy(&env).await;
    let (api, api_stop) = serve_api(AppState::new(broker, env.store.clone())).await;

    let recorder = Recorder::default();
    let mut registry = Env::builtins();
    recorder.register(&mut registry, "rec");
    let worker = env.worker_with_store(Env::settings("lost"), registry, worker_store);
    let warm = env.submit(json!({"type": "rec", "queue": "lost"})).await;
    env.wait_status(warm, TaskStatus::Succeeded, Duration::from_secs(10))
        .await;
    all_ready(&env.http, std::slice::from_ref(&api), "not ready").await;

    // The worker's updates stay in the outbox; the api's enqueue (its first script call)
    // lands, its reply not.
    store_proxy.freeze();
    redis_proxy.hold_replies_after(b"EVALSHA");
    let http = env.http.clone();
    let submit = tokio::spawn(async move {
        http.post(format!("{api}/v1/tasks"))
            .json(&json!({"type": "rec", "queue": "lost"}))
            .send()
            .await
            .expect("submit")
    });
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            let ran = recorder.runs().len() > 1;
            async move { ran }
        })
        .await,
        "the task did not run (redis holds {}, records {}); submit answered: {:?}",
        env.redis_total("lost").await,
        env.total_records().await,
        if submit.is_finished() {
            let r = submit.await.expect("submit task");
            Some((r.status(), r.text().await))
        } else {
            None
        }
    );
    let id = recorder.runs()[1].0;
    // The api's connection breaks: its enqueue fails, and its undo reconnects at once.
    redis_proxy.sever();
    redis_proxy.thaw();
    let answer = submit.await.expect("submit task");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);

    store_proxy.thaw();
    let settled = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let store = env.store.clone();
        async move {
            store
                .get(id)
                .await
                .ok()
                .flatten()
                .is_some_and(|t| t.record.status == TaskStatus::Succeeded)
        }
    })
    .await;
    let record = env.store.get(id).await.expect("get");
    assert!(
        settled,
        "task {id} ran but its record says {:?}",
        record.map(|t| (t.record.status, t.record.last_error))
    );
    assert_eq!(recorder.runs().len(), 2);
    api_stop.cancel();
    worker.shutdown().await;
}
