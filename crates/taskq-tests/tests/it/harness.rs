//! A test environment: a fresh Redis, a fresh database, the api served in-process on a
//! loopback port as `taskq-api` serves it ([`taskq_api::serve`]), and workers started on
//! demand.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use taskq_api::AppState;
use taskq_core::{QueueName, QueueSelection, TaskId, TaskRecord, TaskStatus};
use taskq_redis::{Broker, CallId, Leased, RedisConfig};
use taskq_store::Store;
use taskq_testkit::{
    ChaosProxy, ChildGuard, RedisCluster, RedisServer, mongo_addr, mongo_uri, mongo_uri_via,
    unique_db_name, wait_until, workspace_bin,
};
use taskq_worker::{HttpHandler, Registry, Settings, UrlAllowList, Worker, register_builtins};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub redis: RedisServer,
    /// Set by [`Env::start_on_cluster`]: the api and the workers then use this
    /// three-master Redis Cluster, and `redis` stays idle.
    pub cluster: Option<RedisCluster>,
    pub db: String,
    pub broker: Broker,
    pub store: Store,
    pub api: String,
    pub http: reqwest::Client,
    api_stop: CancellationToken,
}

pub struct RunningWorker {
    pub worker: Worker,
    pub stop: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl RunningWorker {
    /// Graceful shutdown, waiting until the worker has flushed everything.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.handle.await.expect("worker task");
    }
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(|s| s).await
    }

    /// Starts with the api state adjusted by `f`.
    pub async fn start_with(f: impl FnOnce(AppState) -> AppState) -> Env {
        let redis = RedisServer::start();
        let broker = Broker::connect(&RedisConfig::from_urls(&redis.url(), false))
            .await
            .expect("redis");
        Self::start_on(redis, None, broker, f).await
    }

    /// Starts with the api and the workers on a three-master Redis Cluster.
    pub async fn start_on_cluster() -> Env {
        let cluster = RedisCluster::start();
        let broker = Broker::connect(&RedisConfig::from_urls(&cluster.urls().join(","), true))
            .await
            .expect("redis cluster");
        Self::start_on(RedisServer::start(), Some(cluster), broker, |s| s).await
    }

    async fn start_on(
        redis: RedisServer,
        cluster: Option<RedisCluster>,
        broker: Broker,
        f: impl FnOnce(AppState) -> AppState,
    ) -> Env {
        let db = unique_db_name("it");
        let store = Store::connect(&mongo_uri(), &db).await.expect("mongodb");
        store.ensure_indexes().await.expect("indexes");
        let state = f(AppState::new(broker.clone(), store.clone()));
        let (api, api_stop) = serve_api(state).await;
        Env {
            redis,
            cluster,
            db,
            broker,
            store,
            api,
            http: reqwest::Client::new(),
            api_stop,
        }
    }

    /// Worker settings for tests: short intervals, the given queues.
    pub fn settings(queues: &str) -> Settings {
        let mut s = Settings::new(QueueSelection::new(queues.parse().expect("queues"), false));
        s.promote_interval = Duration::from_millis(50);
        s.reap_interval = Duration::from_millis(100);
        s
    }

    /// The built-in handlers.
    pub fn builtins() -> Registry {
        Self::builtins_allowing("http://127.0.0.1/")
    }

    /// The built-in handlers, with `allow` as the http handler's allow-list.
    pub fn builtins_allowing(allow: &str) -> Registry {
        let mut r = Registry::new();
        let http = HttpHandler::new(
            UrlAllowList::parse(allow).expect("allow"),
            Duration::from_secs(5),
        )
        .expect("http handler");
        register_builtins(&mut r, http);
        r
    }

    /// Starts an in-process worker of the `default` queue with the built-in handlers.
    pub fn default_worker(&self) -> RunningWorker {
        self.worker(Self::settings("default"), Self::builtins())
    }

    /// Starts an in-process worker.
    pub fn worker(&self, settings: Settings, registry: Registry) -> RunningWorker {
        self.worker_with_store(settings, registry, self.store.clone())
    }

    pub fn worker_with_store(
        &self,
        settings: Settings,
        registry: Registry,
        store: Store,
    ) -> RunningWorker {
        self.worker_with(settings, registry, self.broker.clone(), store)
    }

    /// Starts an in-process worker on `broker` and `store` (e.g. reached through a proxy).
    pub fn worker_with(
        &self,
        settings: Settings,
        registry: Registry,
        broker: Broker,
        store: Store,
    ) -> RunningWorker {
        let worker = Worker::new(settings, broker, store, registry);
        let stop = CancellationToken::new();
        let w = worker.clone();
        let s = stop.clone();
        let handle = tokio::spawn(async move { w.run(s).await });
        RunningWorker {
            worker,
            stop,
            handle,
        }
    }

    /// Posts `body` as JSON to `path`; returns the answer's status and JSON body (`null`
    /// when it has none).
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.http.post(format!("{}{path}", self.api)).json(&body)).await
    }

    /// Posts `body` as JSON to `path`, asserts the answer's status is `want`; returns its
    /// JSON body.
    pub async fn post_expect(&self, path: &str, body: Value, want: StatusCode) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, want, "POST {path}: {v}");
        v
    }

    /// Posts the raw `body` to `path` with an optional content type; returns the answer's
    /// status and JSON body.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, content_type, body)
            .await
    }

    /// Sends `method` to `path` with the raw `body` and an optional content type; returns
    /// the answer's status and JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        answer(req).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(format!("{}{path}", self.api))).await
    }

    /// Puts `body` as JSON to `path`; returns the answer's status and JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        answer(self.http.put(format!("{}{path}", self.api)).json(body)).await
    }

    /// Sets every limit of `queue` (`PUT /v1/queues/{queue}/limits`); must be accepted.
    pub async fn set_limits(&self, queue: &str, limits: Value) {
        let (status, v) = self
            .put(&format!("/v1/queues/{queue}/limits"), &limits)
            .await;
        assert_eq!(status, StatusCode::OK, "{limits}: {v}");
    }

    /// Submits one task (`POST /v1/tasks`), asserts the answer's status is `want`; returns
    /// its JSON body.
    pub async fn submit_expect(&self, body: Value, want: StatusCode) -> Value {
        self.post_expect("/v1/tasks", body, want).await
    }

    /// Submits one task and returns its id.
    pub async fn submit(&self, body: Value) -> TaskId {
        let (status, v) = self.post("/v1/tasks", body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["id"].as_str().expect("id").parse().expect("task id")
    }

    pub async fn record(&self, id: TaskId) -> Value {
        let (status, v) = self.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    /// Waits until the task's record shows `status`; returns the record.
    pub async fn wait_status(&self, id: TaskId, status: TaskStatus, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.record(id).await;
            if v["status"] == status.as_str() {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("task {id} did not become {status} within {timeout:?}; record: {v:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Records per status in the store.
    pub async fn counts(&self) -> std::collections::HashMap<TaskStatus, u64> {
        self.store.count_by_status(None).await.expect("counts")
    }

    pub async fn total_records(&self) -> u64 {
        self.counts().await.values().sum()
    }

    /// A connection of the test's own to the single Redis server, for reading and
    /// changing keys behind the worker's back.
    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("conn")
    }

    /// Waits until the task's record is in a final status; returns the record.
    pub async fn wait_final(&self, id: TaskId, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.record(id).await;
            let status = v["status"]
                .as_str()
                .and_then(|s| s.parse::<TaskStatus>().ok());
            if status.is_some_and(TaskStatus::is_final) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("task {id} did not finish within {timeout:?}; record: {v:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Redis loses everything (`FLUSHALL` on the single server).
    pub async fn flush_redis(&self) {
        let mut c = self.redis_conn().await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut c)
            .await
            .expect("flush");
    }

    /// Leases up to `n` tasks of `queue` to `worker` for `lease`, straight from Redis (as
    /// a worker's dequeue does).
    pub async fn lease(
        &self,
        queue: &QueueName,
        n: usize,
        lease: Duration,
        worker: &str,
    ) -> Vec<Leased> {
        self.broker
            .dequeue(&mut CallId::new(), queue, n, lease, worker, 0)
            .await
            .expect("dequeue")
            .tasks
    }

    /// Runs task `id`, the next task of `queue`, to success in Redis alone, as a worker
    /// whose writer never ran would: its `running` and `succeeded` updates stay in the
    /// queue's outbox and its record still says `queued`.
    pub async fn succeed_in_redis_only(&self, queue: &str, id: TaskId) {
        let queue = queue.parse().expect("queue");
        let leased = self.lease(&queue, 1, Duration::from_secs(30), "w1").await;
        let [task] = leased.as_slice() else {
            panic!("dequeued {leased:?}");
        };
        assert_eq!(task.msg.id, id);
        let acked = self
            .broker
            .ack(&queue, "w1", &[(id, task.token.as_str(), None)])
            .await
            .expect("ack");
        assert_eq!(acked, vec![Some(3)]);
    }

    /// Writes the record of submit `body` to MongoDB alone, as an api that died between
    /// its insert and its enqueue leaves it: submit-pending, with no task in Redis.
    pub async fn insert_record_only(&self, body: &Value) -> TaskRecord {
        let task = serde_json::from_value(body.clone()).expect("task");
        let rec = taskq_core::Limits::default()
            .admit(task, taskq_core::now(), None)
            .expect("valid");
        self.store.insert(&rec).await.expect("insert");
        rec
    }

    /// Tasks in Redis in any state (queued, scheduled, retrying, running) of `queue`.
    pub async fn redis_total(&self, queue: &str) -> u64 {
        let c = self
            .broker
            .counts(&queue.parse().expect("queue"))
            .await
            .expect("counts");
        c.queued + c.scheduled + c.retrying + c.running
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.api_stop.cancel();
    }
}

/// Sends `req`; returns the answer's status and JSON body (`null` when it has none).
pub async fn answer(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The string `field` of each element of the JSON array `list`, skipping elements
/// without it.
///
/// # Panics
///
/// Panics if `list` is not an array.
pub fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .filter_map(|e| e[field].as_str())
        .collect()
}

/// Serves the api over `state` on a loopback port (a second api beside the [`Env`]'s,
/// e.g. one that reaches a backing service through a [`taskq_testkit::ChaosProxy`]),
/// with its store probes running. Returns its base URL; it stops when the token is
/// cancelled.
pub async fn serve_api(state: AppState) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    // The store circuits, probed as `taskq-api` probes them: more often, each probe
    // allowed the binary's default second (a shared MongoDB under the heaviest tests
    // can take half of one to answer).
    tokio::spawn(taskq_api::health::probe(
        state.health.clone(),
        state.broker.clone(),
        state.store.clone(),
        state.metrics.clone(),
        taskq_api::health::ProbeSettings {
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        },
        stop.clone(),
    ));
    let s = stop.clone();
    tokio::spawn(async move {
        let connections = state.connections;
        taskq_api::serve(
            listener,
            taskq_api::app(state),
            connections,
            s.cancelled_owned(),
        )
        .await
        .expect("api server");
    });
    (url, stop)
}

/// A `taskq-api` process on `env`'s Redis and database, reaching MongoDB at `mongodb`,
/// with `extra` environment.
pub fn api_process(env: &Env, port: u16, mongodb: &str, extra: &[(&str, &str)]) -> ChildGuard {
    ChildGuard::spawn_logged(
        "taskq-api",
        std::process::Command::new(workspace_bin("taskq-api"))
            .env("TASKQ_REDIS_URL", env.redis.url())
            .env("TASKQ_MONGODB_URI", mongodb)
            .env("TASKQ_MONGODB_DATABASE", &env.db)
            .env("TASKQ_LISTEN", format!("127.0.0.1:{port}"))
            .env("TASKQ_AUTH", "off")
            .env("RUST_LOG", "warn")
            .env_remove("TASKQ_PERIODIC")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(extra.iter().copied()),
    )
}

/// Whether the api at `api` answers `/readyz` with 200.
pub async fn ready(http: &reqwest::Client, api: &str) -> bool {
    http.get(format!("{api}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Every `period`, `rounds` times, kills (SIGKILL) the next of `procs` in turn and puts
/// `respawn(index, round)` in its place; returns the number of kills.
pub async fn kill_in_turn(
    procs: &mut [ChildGuard],
    rounds: u32,
    period: Duration,
    mut respawn: impl FnMut(usize, u32) -> ChildGuard,
) -> u32 {
    for (round, i) in (0..rounds).zip((0..procs.len()).cycle()) {
        tokio::time::sleep(period).await;
        procs[i].kill_9();
        procs[i] = respawn(i, round);
    }
    rounds
}

/// Whether the api at `api` answers `/readyz` with 200 within `timeout` (asked every 20 ms).
pub async fn ready_within(http: &reqwest::Client, api: &str, timeout: Duration) -> bool {
    wait_until(timeout, Duration::from_millis(20), || ready(http, api)).await
}

/// Whether the service at `base` answers `/livez` with 200.
pub async fn live(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/livez"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Asserts an error answer: `status`, `{"error": {"code": code, "message": <non-empty>}}`;
/// `what` names the request in the failure message.
#[track_caller]
pub fn assert_error(what: &str, got: (StatusCode, &Value), status: u16, code: &str) {
    let (got_status, body) = got;
    assert_eq!(got_status.as_u16(), status, "{what}: status; body {body}");
    assert_eq!(body["error"]["code"], code, "{what}: code; body {body}");
    let message = body["error"]["message"].as_str();
    assert!(
        message.is_some_and(|m| !m.trim().is_empty()),
        "{what}: message must be a non-empty string; body {body}"
    );
}

/// Serves `app` on a free loopback port for the rest of the test; returns its address.
pub async fn serve_router(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A registry whose handlers record what ran, for order and exactly-once checks.
#[derive(Clone, Default)]
pub struct Recorder {
    pub runs: Arc<std::sync::Mutex<Vec<(TaskId, String, u32)>>>,
}

impl Recorder {
    pub fn register(&self, registry: &mut Registry, kind: &str) {
        let runs = self.runs.clone();
        let k = kind.to_owned();
        registry.register(kind, move |ctx: taskq_worker::TaskContext| {
            let runs = runs.clone();
            let k = k.clone();
            async move {
                runs.lock().expect("lock").push((ctx.id, k, ctx.attempt));
                Ok(None)
            }
        });
    }

    pub fn runs(&self) -> Vec<(TaskId, String, u32)> {
        self.runs.lock().expect("lock").clone()
    }
}

/// A handler that holds each attempt for a while and counts how many run at once, for
/// checks of concurrency limits (one `Overlap` may be registered on several workers).
#[derive(Clone, Default)]
pub struct Overlap {
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Overlap {
    /// Registers handler `kind`, which holds each attempt for `hold`.
    pub fn register(&self, registry: &mut Registry, kind: &str, hold: Duration) {
        let this = self.clone();
        registry.register(kind, move |_ctx: taskq_worker::TaskContext| {
            let this = this.clone();
            async move {
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                this.running.fetch_sub(1, Ordering::SeqCst);
                Ok(None)
            }
        });
    }

    /// The most attempts that ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// A broker of `env`'s Redis reached through a proxy that can cut it.
pub async fn broker_via_proxy(env: &Env) -> (ChaosProxy, Broker) {
    let proxy = ChaosProxy::start(env.redis.addr());
    let config = RedisConfig::from_urls(&format!("redis://{}", proxy.addr()), false);
    let broker = Broker::connect(&config)
        .await
        .expect("redis through the proxy");
    (proxy, broker)
}

/// A store of `env`'s database reached through a proxy that can cut it, with short
/// timeouts so that a cut shows at once.
pub async fn store_via_proxy(env: &Env) -> (ChaosProxy, Store) {
    let proxy = ChaosProxy::start(mongo_addr());
    let opts = taskq_store::StoreOptions {
        server_selection_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let store = Store::connect_with(&mongo_uri_via(proxy.addr()), &env.db, &opts)
        .await
        .expect("store via proxy");
    // The short selection timeout is for the outages the tests cause; the driver's
    // first discovery of the server through the proxy can take longer on a busy
    // machine, so the store is handed out only once it has answered.
    let up = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { store.ping().await.is_ok() },
    )
    .await;
    assert!(up, "mongodb never answered through the proxy");
    (proxy, store)
}

/// The Prometheus text `base`/metrics serves.
pub async fn scrape_metrics(http: &reqwest::Client, base: &str) -> String {
    let resp = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.expect("text")
}

/// The value of the first sample whose line starts with `series` (name and labels), 0
/// when there is none.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
