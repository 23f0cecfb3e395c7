//! The phases of one bench run, in order:
//!
//! 1. ceilings: a raw Redis PING/SET loop, a raw MongoDB `insert_many` loop and raw
//!    MongoDB `insert_one` calls at the latency phase's rate, with the clients the
//!    services use;
//! 2. batch submit of N tasks with no worker running;
//! 3. processing: a worker starts; timed from the first task leaving the queue until
//!    every handler has completed (its lease acknowledged in Redis);
//! 4. records settled: until MongoDB counts every task `succeeded`;
//! 5. concurrent single submits with the worker running;
//! 6. latency from submit to handler start at a steady, open-loop rate;
//! 7. optionally, phases 2–4 again with a low-priority backlog queued in Redis.
//!
//! Invariants: all tasks go to a queue of their own (`bench-<run>`) and all records to a
//! database of their own; both are removed at the end, also when a phase fails. The
//! bench's tasks are `normal` priority and the backlog is `low`, so "the normal list is
//! empty and none of our ids holds a lease" means every handler of the measured set has
//! completed, whatever else is queued.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::json;
use taskq_core::{Limits, NewTask, Priority, QueueName, TaskId, TaskStatus};
use taskq_redis::{Broker, EnqueueItem, QueueKeys, RedisConfig};
use taskq_store::Store;
use taskq_testkit::otlp::Receiver;

use crate::args::Config;
use crate::cpu::{PhaseCpu, Snapshot};
use crate::procs::{Proc, ServiceEnv, local_mongodb_pid, start_redis};
use crate::report::{Metric, Report, Target, percentile};

/// Backlog tasks per broker enqueue call.
const BACKLOG_BATCH: usize = 10_000;
/// How often Redis is polled while a processing phase is timed.
const POLL: Duration = Duration::from_millis(2);
/// A wait fails when nothing moved for this long.
const STALL: Duration = Duration::from_secs(60);
/// Grace given to a child on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// The worker's metrics read by the bench.
const WRITE_BUFFER_DEPTH: &str = "taskq_store_write_buffer_depth";
const FLUSH_SECONDS_SUM: &str = "taskq_store_flush_duration_seconds_sum";
const FLUSH_SECONDS_COUNT: &str = "taskq_store_flush_duration_seconds_count";
/// `TASKQ_WRITE_BUFFER` of taskq-worker when not set.
const DEFAULT_WRITE_BUFFER: f64 = 10_000.0;
/// CPU of processes outside the bench's that makes a phase's figures suspect.
const BUSY_OTHER_CORES: f64 = 0.25;
/// Concurrent reads of records in the latency phase.
const READ_CONCURRENCY: usize = 32;

/// Targets from the issue (2-core machine, N = 50,000, C = 32).
const TARGET_PROCESSED: f64 = 30_000.0;
const TARGET_BATCH_FRACTION: f64 = 0.7;
const TARGET_P99_MS: f64 = 5.0;
const TARGET_WORKER_RSS_MIB: f64 = 64.0;
/// "Cost per task flat" read as: at least this fraction of the no-backlog rate.
const TARGET_BACKLOG_FRACTION: f64 = 0.9;

/// Runs every phase and returns the report. Children, the bench queue's Redis keys and
/// the run's databases are cleaned up whether or not a phase fails.
pub async fn run(cfg: Config, names: &RunNames) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("taskq-bench-")
        .tempdir()
        .context("creating a temporary directory for logs")?;
    let database = names.database.clone();
    let queue = names.queue.clone();

    let (redis, redis_url) = match &cfg.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            progress("starting redis-server");
            let (p, url) = start_redis(dir.path()).await?;
            (Some(p), url)
        }
    };
    // The api requires a bearer token: one made up for this run, with the submit role.
    let api_token = format!("{:032x}", rand::random::<u128>());
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {api_token}"))
        .context("building the authorization header")?;
    auth.set_sensitive(true);
    let http = reqwest::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            auth,
        )]))
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the http client")?;
    let conn = redis::Client::open(redis_url.as_str())
        .context("--redis-url")?
        .get_connection_manager()
        .await
        .context("connecting to redis")?;
    let broker = Broker::connect(&RedisConfig::from_urls(&redis_url, false))
        .await
        .context("connecting the broker to redis")?;
    let store = Store::connect(&cfg.mongodb_uri, &database)
        .await
        .context("connecting to mongodb")?;
    store
        .ping()
        .await
        .context("mongodb does not answer; is it running? (scripts/mongo.sh start)")?;

    let env = ServiceEnv {
        bin_dir: cfg.bin_dir.clone(),
        log_dir: dir.path().to_path_buf(),
        redis_url: redis_url.clone(),
        mongodb_uri: cfg.mongodb_uri.clone(),
        database: database.clone(),
        queue: queue.to_string(),
        slots: cfg.slots,
        max_batch: cfg.batch_size,
        api_token,
        clear_otel: cfg.compare_tracing,
        worker_env: cfg.worker_env.clone(),
        api_env: cfg.api_env.clone(),
    };
    let mut report = Report {
        config: json!({
            "tasks": cfg.tasks,
            "slots": cfg.slots,
            "batch_size": cfg.batch_size,
            "batch_concurrency": cfg.batch_concurrency,
            "single_tasks": cfg.single_tasks,
            "single_concurrency": cfg.single_concurrency,
            "rate": cfg.rate,
            "latency_seconds": cfg.latency_seconds,
            "ceiling_seconds": cfg.ceiling_seconds,
            "backlog": cfg.backlog,
            "compare_tracing": cfg.compare_tracing,
            "redis": if redis.is_some() { "own redis-server" } else { "--redis-url" },
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "database": database,
            "queue": queue.to_string(),
            "worker_env": cfg.worker_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "api_env": cfg.api_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        }),
        ..Report::default()
    };
    report.note(format!(
        "run: N={} C={} batch={}x{} in flight, single={}x{} in flight, rate={}/s for {}s, backlog={}; \
         database {database}, queue {queue}",
        cfg.tasks,
        cfg.slots,
        cfg.batch_size,
        cfg.batch_concurrency,
        cfg.single_tasks,
        cfg.single_concurrency,
        cfg.rate,
        cfg.latency_seconds,
        cfg.backlog
    ));
    for (who, env) in [("worker", &cfg.worker_env), ("api", &cfg.api_env)] {
        if !env.is_empty() {
            let list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            report.note(format!("extra {who} environment: {}", list.join(" ")));
        }
    }

    let mongodb_pid = local_mongodb_pid(&cfg.mongodb_uri);
    if mongodb_pid.is_none() {
        report.note(
            "the MongoDB server is not a local process the bench can see: its CPU is in `other`",
        );
    }
    let mut bench = Bench {
        names: names.clone(),
        keys: QueueKeys::new(&queue),
        mongodb_pid,
        cfg,
        http,
        env,
        redis,
        conn,
        broker,
        store,
        queue,
        api: None,
        worker: None,
        report,
        succeeded: 0,
    };
    let outcome = bench.phases().await;
    let cleanup = bench.cleanup().await;
    let report = bench.report;
    drop(dir);
    outcome?;
    cleanup?;
    Ok(report)
}

/// A progress line on stderr; a closed stderr must not stop the run (and its cleanup).
/// The names a run creates in MongoDB and Redis, unique per run.
#[derive(Debug, Clone)]
pub struct RunNames {
    /// The database of the records (the api's and worker's `TASKQ_MONGODB_DATABASE`).
    pub database: String,
    /// The scratch database of the MongoDB ceiling.
    pub scratch: String,
    /// The queue of every task of the run.
    pub queue: QueueName,
}

impl RunNames {
    pub fn new() -> anyhow::Result<Self> {
        let run_id = format!("{}_{:08x}", std::process::id(), rand::random::<u32>());
        let database = format!("taskq_bench_{run_id}");
        Ok(Self {
            scratch: format!("{database}_ceiling"),
            database,
            queue: format!("bench-{run_id}")
                .parse()
                .map_err(|e| anyhow::anyhow!("bench queue name: {e}"))?,
        })
    }

    /// Drops both databases (dropping one that does not exist is not an error).
    pub async fn drop_databases(&self, mongodb_uri: &str) -> anyhow::Result<()> {
        for db in [&self.database, &self.scratch] {
            let s = Store::connect(mongodb_uri, db).await?;
            s.database()
                .drop()
                .await
                .with_context(|| format!("dropping database {db}"))?;
        }
        Ok(())
    }
}

fn progress(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "[taskq-bench] {msg}");
}

struct Bench {
    cfg: Config,
    names: RunNames,
    http: reqwest::Client,
    env: ServiceEnv,
    /// Our own redis-server, if the bench started one.
    redis: Option<Proc>,
    /// The MongoDB server's process, when it runs on this machine (CPU accounting only).
    mongodb_pid: Option<u32>,
    /// A raw connection for the ceiling and for polling.
    conn: ConnectionManager,
    broker: Broker,
    /// The run's database.
    store: Store,
    queue: QueueName,
    keys: QueueKeys,
    api: Option<(Proc, SocketAddr)>,
    worker: Option<(Proc, SocketAddr)>,
    report: Report,
    /// Tasks that should be `succeeded` in MongoDB once everything settles.
    succeeded: u64,
}

/// What a timed processing phase observed.
struct Processing {
    /// From spawning the worker to the first task leaving the queue.
    startup: Duration,
    /// From the first task leaving the queue to the last handler completing.
    elapsed: Duration,
    first: Instant,
    cpu: PhaseCpu,
    /// Samples the worker's write-buffer depth until the records settle.
    depth: Option<DepthWatch>,
}

/// Samples the worker's `store_write_buffer_depth` gauge until stopped; yields the peak.
struct DepthWatch {
    stop: Arc<AtomicBool>,
    peak: tokio::task::JoinHandle<Option<f64>>,
    metrics_url: String,
}

impl DepthWatch {
    fn start(http: reqwest::Client, metrics_url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = tokio::spawn({
            let (stop, url) = (stop.clone(), metrics_url.clone());
            async move {
                let mut peak: Option<f64> = None;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = scrape(&http, &url).await
                        && let Some(d) = m.get(WRITE_BUFFER_DEPTH)
                    {
                        peak = Some(peak.map_or(*d, |p| p.max(*d)));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                peak
            }
        });
        Self {
            stop,
            peak,
            metrics_url,
        }
    }

    async fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.await.ok().flatten()
    }
}

/// The samples of a Prometheus text exposition, keyed by name with labels.
async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<HashMap<String, f64>> {
    let text = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_metrics(&text))
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim().to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The MongoDB ceilings.
struct MongoCeiling {
    /// Documents per second.
    insert_many: f64,
    /// Milliseconds.
    insert_one_p50: f64,
    insert_one_p99: f64,
}

/// What an open-loop run produced: each call's result and its time from its scheduled
/// start to its end (so a late start counts against it), in call order.
struct OpenLoop<T> {
    results: Vec<(anyhow::Result<T>, Duration)>,
    achieved_rate: f64,
    /// How late the latest call started against its schedule.
    max_lag: Duration,
}

/// Starts `make(i)` at `rate` per second for `seconds`, by the clock, whether or not
/// earlier calls have finished; then waits for all of them.
async fn open_loop<T, F, Fut>(rate: f64, seconds: f64, mut make: F) -> anyhow::Result<OpenLoop<T>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let total = (rate * seconds).round().max(1.0) as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut max_lag = Duration::ZERO;
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(due.elapsed());
        let call = make(i);
        set.spawn(async move {
            let r = call.await;
            (i, r, due.elapsed())
        });
    }
    let achieved_rate = total as f64 / (start.elapsed() + period).as_secs_f64();
    let mut results: Vec<(usize, anyhow::Result<T>, Duration)> = Vec::with_capacity(total);
    while let Some(joined) = set.join_next().await {
        results.push(joined.context("open-loop call")?);
    }
    results.sort_by_key(|(i, _, _)| *i);
    Ok(OpenLoop {
        results: results.into_iter().map(|(_, r, t)| (r, t)).collect(),
        achieved_rate,
        max_lag,
    })
}

#[derive(Deserialize)]
struct BatchReply {
    accepted: usize,
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

impl Bench {
    async fn phases(&mut self) -> anyhow::Result<()> {
        if self.cfg.compare_tracing {
            return self.compare_tracing().await;
        }
        let n = self.cfg.tasks;

        progress("phase 1: ceilings");
        let redis_ceiling = self.redis_ceiling().await?;
        let MongoCeiling {
            insert_many: mongo_ceiling,
            insert_one_p50,
            insert_one_p99,
        } = self.mongo_ceiling().await?;
        self.report.push(Metric::new(
            "redis_ceiling_ops_per_s",
            &format!(
                "ceiling: raw redis PING/SET, {} in flight",
                self.cfg.single_concurrency
            ),
            redis_ceiling,
            "ops/s",
        ));
        self.report.push(Metric::new(
            "mongo_ceiling_docs_per_s",
            &format!(
                "ceiling: raw mongodb insert_many, {}x{} in flight",
                self.cfg.batch_size, self.cfg.batch_concurrency
            ),
            mongo_ceiling,
            "docs/s",
        ));
        let one = format!("ceiling: raw mongodb insert_one at {}/s", self.cfg.rate);
        self.report.push(Metric::new(
            "mongo_ceiling_insert_one_p50_ms",
            &format!("{one}, p50"),
            insert_one_p50,
            "ms",
        ));
        self.report.push(Metric::new(
            "mongo_ceiling_insert_one_p99_ms",
            &format!("{one}, p99"),
            insert_one_p99,
            "ms",
        ));

        progress("starting taskq-api");
        let api = self.env.start_api(&self.http).await?;
        self.api = Some(api);

        progress(&format!(
            "phase 2: batch submit of {n} tasks (no worker running)"
        ));
        let (rate, ids) = self.batch_submit(n, "batch submit").await?;
        self.report.push(
            Metric::new("batch_submit_tasks_per_s", "batch submit", rate, "tasks/s")
                .of("mongo insert_many", mongo_ceiling)
                .target(Target::FractionAtLeast(TARGET_BATCH_FRACTION)),
        );

        progress("phase 3: processing (worker starts)");
        let p = self.process(&ids, "processing").await?;
        let processed = n as f64 / p.elapsed.as_secs_f64();
        self.report.push(
            Metric::new(
                "processed_tasks_per_s",
                "processed (handler completions)",
                processed,
                "tasks/s",
            )
            .of("redis round trips", redis_ceiling)
            .target(Target::AtLeast(TARGET_PROCESSED)),
        );
        self.report.push(Metric::new(
            "worker_startup_ms",
            "worker spawn to first dequeue",
            ms(p.startup),
            "ms",
        ));
        self.per_task_cpu(&p.cpu, n, "", "");

        progress("phase 4: records settled");
        self.succeeded += n as u64;
        let settled = self.wait_settled().await?;
        let settle = settled.saturating_duration_since(p.first);
        self.report.push(
            Metric::new(
                "settled_tasks_per_s",
                "records settled in mongodb",
                n as f64 / settle.as_secs_f64(),
                "tasks/s",
            )
            .of("mongo insert_many", mongo_ceiling),
        );
        self.report.push(Metric::new(
            "settle_lag_ms",
            "settle lag after the last completion",
            ms(settle.saturating_sub(p.elapsed)),
            "ms",
        ));
        self.writer_figures(p.depth, n, "", "").await;

        progress(&format!(
            "phase 5: {} concurrent single submits",
            self.cfg.single_tasks
        ));
        let rate = self.single_submits().await?;
        self.report.push(
            Metric::new(
                "single_submit_tasks_per_s",
                &format!("single submit, {} in flight", self.cfg.single_concurrency),
                rate,
                "tasks/s",
            )
            .of("mongo insert_many", mongo_ceiling),
        );
        self.succeeded += self.cfg.single_tasks as u64;
        // The latency phase starts from a quiet system: no task in Redis and no status
        // write of earlier phases still queued in the worker.
        self.wait_idle().await?;
        self.wait_settled().await?;

        progress(&format!(
            "phase 6: latency at {}/s for {}s",
            self.cfg.rate, self.cfg.latency_seconds
        ));
        self.latency(insert_one_p99).await?;

        if let Some((w, _)) = &self.worker {
            let rss = w.peak_rss_kib().map_or(f64::NAN, mib);
            self.report.push(
                Metric::new(
                    "worker_peak_rss_mib",
                    "peak RSS (VmHWM) taskq-worker",
                    rss,
                    "MiB",
                )
                .target(Target::AtMost(TARGET_WORKER_RSS_MIB)),
            );
        }

        if self.cfg.backlog > 0 {
            self.backlog(processed).await?;
        }

        if let Some((a, _)) = &self.api {
            let rss = a.peak_rss_kib().map_or(f64::NAN, mib);
            self.report.push(Metric::new(
                "api_peak_rss_mib",
                "peak RSS (VmHWM) taskq-api",
                rss,
                "MiB",
            ));
        }
        let busy: Vec<String> = self
            .report
            .cpu
            .iter()
            .filter_map(|p| {
                let other = p.cores.get("other").copied().flatten()?;
                (other > BUSY_OTHER_CORES).then(|| format!("{} ({other:.2} cores)", p.phase))
            })
            .collect();
        if !busy.is_empty() {
            self.report.note(format!(
                "the machine was busy with other processes during: {}; those figures understate \
                 what taskq does on a quiet machine",
                busy.join(", ")
            ));
        }
        self.report.note(
            "latency = record.started_at - record.created_at: both are stamped by the servers \
             at millisecond precision (created_at before the MongoDB insert), so each sample is \
             off by up to 1 ms; `client` latency is the submit's HTTP round trip measured from \
             its scheduled send time",
        );
        self.report.note(
            "CPU in cores (1.00 = one core for the whole phase); `other` is machine CPU outside \
             the tracked processes (anything else running on the machine); the MongoDB server \
             may also serve other clients",
        );
        Ok(())
    }

    /// `--compare-tracing`: the processing phase with no exporter, with the api and worker
    /// exporting every span to a receiver in this process, and with no exporter again
    /// (the traced arm in the middle, so a drift over the run shows as a gap between the
    /// two untraced arms). Each arm starts a fresh api and worker and stops them at its end,
    /// so the exporters flush before the spans are counted.
    async fn compare_tracing(&mut self) -> anyhow::Result<()> {
        let n = self.cfg.tasks;
        let (recv, otlp_addr) = Receiver::start().await;
        progress(&format!("OTLP/gRPC trace receiver on {otlp_addr}"));
        let otel: Vec<(String, String)> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let (base_worker, base_api) = (self.cfg.worker_env.clone(), self.cfg.api_env.clone());
        let arms: [(&str, &str, bool); 3] = [
            ("", "no exporter", false),
            ("_traced", "exporting traces", true),
            ("_again", "no exporter, again", false),
        ];
        let mut rates = Vec::with_capacity(arms.len());
        let mut spans_after = Vec::with_capacity(arms.len());
        for (i, (key, label, traced)) in arms.into_iter().enumerate() {
            let extra = if traced { otel.clone() } else { Vec::new() };
            self.env.worker_env = base_worker.iter().cloned().chain(extra.clone()).collect();
            self.env.api_env = base_api.iter().cloned().chain(extra).collect();
            progress(&format!(
                "arm {}/{}: {label}: starting taskq-api",
                i + 1,
                arms.len()
            ));
            let api = self.env.start_api(&self.http).await?;
            self.api = Some(api);
            progress(&format!(
                "arm {}/{}: {label}: batch submit of {n} tasks (no worker running)",
                i + 1,
                arms.len()
            ));
            let (submit, ids) = self
                .batch_submit(n, &format!("batch submit, {label}"))
                .await?;
            progress(&format!(
                "arm {}/{}: {label}: processing (worker starts)",
                i + 1,
                arms.len()
            ));
            let p = self.process(&ids, &format!("processing, {label}")).await?;
            let processed = n as f64 / p.elapsed.as_secs_f64();
            self.succeeded += n as u64;
            self.wait_settled().await?;
            if let Some(d) = p.depth {
                d.finish().await;
            }
            // Stopping both children (SIGTERM) makes their exporters flush what they hold.
            for (proc, _) in [self.worker.take(), self.api.take()].into_iter().flatten() {
                proc.stop(STOP_GRACE).await?;
            }
            self.report.push(Metric::new(
                &format!("batch_submit_tasks_per_s{key}"),
                &format!("batch submit, {label}"),
                submit,
                "tasks/s",
            ));
            let mut m = Metric::new(
                &format!("processed_tasks_per_s{key}"),
                &format!("processed, {label}"),
                processed,
                "tasks/s",
            );
            if i > 0 {
                m = m.of("processed, no exporter", rates[0]);
            }
            self.report.push(m);
            self.per_task_cpu(&p.cpu, n, key, &format!(", {label}"));
            rates.push(processed);
            if traced {
                // The exporters have flushed on shutdown; give a late batch a moment.
                let mut last = recv.total();
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = recv.total();
                    if now == last {
                        break;
                    }
                    last = now;
                }
            }
            spans_after.push(recv.total());
        }
        self.env.worker_env = base_worker;
        self.env.api_env = base_api;

        let untraced = (rates[0] + rates[2]) / 2.0;
        self.report.push(Metric::new(
            "processed_traced_ratio",
            "ratio: exporting traces / no exporter (mean of both untraced arms)",
            rates[1] / untraced,
            "x",
        ));
        let spans = spans_after[1] - spans_after[0];
        self.report.push(Metric::new(
            "spans_received",
            "spans received",
            spans as f64,
            "spans",
        ));
        let by_service: Vec<String> = recv
            .by_service()
            .into_iter()
            .map(|(s, c)| format!("{s}: {c}"))
            .collect();
        self.report.note(format!(
            "spans received by service: {}",
            by_service.join(", ")
        ));
        if spans == 0 {
            let msg = "WARNING: the OTLP receiver got no span during the traced arm, so that \
                       arm did not measure trace export; check that taskq-api and taskq-worker \
                       are built with OTLP support and read OTEL_EXPORTER_OTLP_ENDPOINT";
            progress(msg);
            self.report.note(msg);
        }
        let stray = spans_after[0] + (spans_after[2] - spans_after[1]);
        if stray > 0 {
            self.report.note(format!(
                "WARNING: {stray} spans arrived during an arm without an exporter"
            ));
        }
        self.report.note(format!(
            "compare-tracing: each arm batch-submits N={n} noop tasks with no worker running, \
             then times a fresh worker (C={}) from its first dequeue to its last completion; \
             the traced arm runs api and worker with OTEL_EXPORTER_OTLP_ENDPOINT=http://{otlp_addr} \
             OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_TRACES_SAMPLER=always_on, exporting to a \
             receiver inside the bench; arms run untraced, traced, untraced",
            self.cfg.slots
        ));
        self.report.note(
            "CPU in cores (1.00 = one core for the whole phase); `bench` includes the OTLP \
             receiver; `other` is machine CPU outside the tracked processes",
        );
        Ok(())
    }

    /// Raw Redis round trips (alternating PING and SET of a message-sized value) over one
    /// multiplexed connection, with the single-submit concurrency in flight.
    async fn redis_ceiling(&mut self) -> anyhow::Result<f64> {
        let ops = Arc::new(AtomicU64::new(0));
        let value = "x".repeat(400);
        let key = format!("{}ceiling", self.keys.task_prefix());
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(self.cfg.ceiling_seconds);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.cfg.single_concurrency {
            let mut c = self.conn.clone();
            let ops = ops.clone();
            let (key, value) = (format!("{key}:{i}"), value.clone());
            set.spawn(async move {
                while Instant::now() < deadline {
                    let _: String = redis::cmd("PING").query_async(&mut c).await?;
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .query_async(&mut c)
                        .await?;
                    ops.fetch_add(2, Ordering::Relaxed);
                }
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<i64>(&mut c)
                    .await?;
                Ok::<_, redis::RedisError>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r.context("redis ceiling task")?.context("redis ceiling")?;
        }
        Ok(ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
    }

    /// Raw `insert_many` of N task records (built as the api builds them) in batches of
    /// `--batch-size`, `--batch-concurrency` in flight, into a scratch database with the
    /// same indexes; then raw `insert_one` calls at the latency phase's rate and length,
    /// open loop: the latency MongoDB alone adds to a submit. The scratch database is
    /// dropped afterwards.
    async fn mongo_ceiling(&mut self) -> anyhow::Result<MongoCeiling> {
        let scratch = Store::connect(&self.cfg.mongodb_uri, &self.scratch_db())
            .await
            .context("connecting to mongodb")?;
        scratch
            .ensure_indexes()
            .await
            .context("creating scratch indexes")?;
        let limits = Limits::default();
        let now = taskq_core::now();
        let recs = (0..self.cfg.tasks)
            .map(|_| limits.admit(self.new_task(Priority::Normal), now, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("building records: {e}"))?;
        let start = Instant::now();
        futures::stream::iter(recs.chunks(self.cfg.batch_size))
            .map(|chunk| scratch.insert_many(chunk))
            .buffer_unordered(self.cfg.batch_concurrency)
            .try_collect::<Vec<()>>()
            .await
            .context("insert_many ceiling")?;
        let insert_many = self.cfg.tasks as f64 / start.elapsed().as_secs_f64();
        drop(recs);

        let task = self.new_task(Priority::Normal);
        let ones = open_loop(self.cfg.rate, self.cfg.latency_seconds, |_| {
            let store = scratch.clone();
            let rec = limits.admit(task.clone(), taskq_core::now(), None);
            async move {
                let rec = rec.map_err(|e| anyhow::anyhow!("building a record: {e}"))?;
                store.insert(&rec).await.context("insert_one ceiling")
            }
        })
        .await?;
        let mut took = Vec::with_capacity(ones.results.len());
        for (r, t) in ones.results {
            r?;
            took.push(ms(t));
        }
        took.sort_by(f64::total_cmp);
        scratch
            .database()
            .drop()
            .await
            .context("dropping the scratch database")?;
        Ok(MongoCeiling {
            insert_many,
            insert_one_p50: percentile(&took, 0.5).unwrap_or(f64::NAN),
            insert_one_p99: percentile(&took, 0.99).unwrap_or(f64::NAN),
        })
    }

    fn scratch_db(&self) -> String {
        self.names.scratch.clone()
    }

    fn new_task(&self, priority: Priority) -> NewTask {
        NewTask {
            kind: "noop".to_owned(),
            queue: Some(self.queue.to_string()),
            priority: Some(priority),
            ..NewTask::default()
        }
    }

    fn api_url(&self, path: &str) -> anyhow::Result<String> {
        let (_, addr) = self.api.as_ref().context("the api is not running")?;
        Ok(format!("http://{addr}{path}"))
    }

    /// Submits `n` tasks through `POST /v1/tasks/batch`; returns tasks/s and their ids.
    async fn batch_submit(
        &mut self,
        n: usize,
        phase: &str,
    ) -> anyhow::Result<(f64, HashSet<String>)> {
        let url = self.api_url("/v1/tasks/batch")?;
        let task = json!({"type": "noop", "queue": self.queue.as_str()});
        let body = |k: usize| Bytes::from(json!({ "tasks": vec![task.clone(); k] }).to_string());
        let full = body(self.cfg.batch_size);
        let sizes: Vec<usize> = (0..n)
            .step_by(self.cfg.batch_size)
            .map(|start| (n - start).min(self.cfg.batch_size))
            .collect();
        let snap = self.snapshot();
        let start = Instant::now();
        let replies: Vec<Vec<String>> = futures::stream::iter(sizes)
            .map(|k| {
                let b = if k == self.cfg.batch_size {
                    full.clone()
                } else {
                    body(k)
                };
                let req = self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b);
                async move {
                    let r = req.send().await.context("batch submit")?;
                    let status = r.status();
                    if status != reqwest::StatusCode::CREATED {
                        bail!(
                            "batch submit answered {status}: {}",
                            r.text().await.unwrap_or_default()
                        );
                    }
                    let reply: BatchReply = r.json().await.context("batch submit reply")?;
                    if reply.accepted != k {
                        bail!("batch submit accepted {} of {k} tasks", reply.accepted);
                    }
                    Ok::<Vec<String>, anyhow::Error>(
                        reply.results.into_iter().filter_map(|i| i.id).collect(),
                    )
                }
            })
            .buffer_unordered(self.cfg.batch_concurrency)
            .try_collect()
            .await?;
        let elapsed = start.elapsed();
        self.report.cpu.push(snap.until(&self.snapshot(), phase));
        let ids: HashSet<String> = replies.into_iter().flatten().collect();
        if ids.len() != n {
            bail!(
                "batch submit returned {} distinct ids for {n} tasks",
                ids.len()
            );
        }
        Ok((n as f64 / elapsed.as_secs_f64(), ids))
    }

    /// Starts a worker and times it through the `ids` (all queued, normal priority).
    async fn process(&mut self, ids: &HashSet<String>, phase: &str) -> anyhow::Result<Processing> {
        let [_, normal, _] = self.keys.pending_all();
        let queued: u64 = self.redis_u64(redis::cmd("LLEN").arg(&normal)).await?;
        let spawned = Instant::now();
        let worker = self.env.spawn_worker()?;
        let depth = DepthWatch::start(self.http.clone(), format!("http://{}/metrics", worker.1));
        self.worker = Some(worker);

        // Until the first task leaves the normal list.
        let mut last = queued;
        let mut moved = Instant::now();
        let (first, start_snap) = loop {
            self.worker_alive()?;
            let left = self.redis_u64(redis::cmd("LLEN").arg(&normal)).await?;
            if left < queued {
                break (Instant::now(), self.snapshot());
            }
            if moved.elapsed() > STALL {
                bail!("the worker took no task within {STALL:?}");
            }
            tokio::time::sleep(POLL).await;
        };
        // Until the normal list is empty.
        loop {
            self.worker_alive()?;
            let left = self.redis_u64(redis::cmd("LLEN").arg(&normal)).await?;
            if left == 0 {
                break;
            }
            if left != last {
                (last, moved) = (left, Instant::now());
            } else if moved.elapsed() > STALL {
                bail!("{left} tasks stayed queued for {STALL:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        // Until none of ours is still leased: no task of ours can be leased anew now.
        let leased: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.lease())
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .context("reading leases")?;
        let mut running: Vec<String> = leased
            .into_iter()
            .filter(|id| ids.contains(id))
            .map(|id| format!("{}{id}", self.keys.task_prefix()))
            .collect();
        let tail = Instant::now();
        while !running.is_empty() {
            self.worker_alive()?;
            let mut pipe = redis::pipe();
            for k in &running {
                pipe.exists(k);
            }
            let exists: Vec<bool> = pipe
                .query_async(&mut self.conn.clone())
                .await
                .context("polling running tasks")?;
            running = running
                .into_iter()
                .zip(exists)
                .filter_map(|(k, e)| e.then_some(k))
                .collect();
            if tail.elapsed() > STALL {
                bail!("{} tasks stayed running for {STALL:?}", running.len());
            }
            if !running.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let end = self.snapshot();
        Ok(Processing {
            startup: first.saturating_duration_since(spawned),
            elapsed: end.at().saturating_duration_since(first),
            first,
            depth: Some(depth),
            cpu: {
                let cpu = start_snap.until(&end, phase);
                self.report.cpu.push(cpu.clone());
                cpu
            },
        })
    }

    /// Adds what the worker's metrics say about its MongoDB writer for a processing phase
    /// of `n` tasks (read once its records have settled): the peak write-buffer depth
    /// against its capacity (at capacity, task processing waits for MongoDB), and the
    /// number and mean time of its batched writes.
    async fn writer_figures(
        &mut self,
        depth: Option<DepthWatch>,
        n: usize,
        key: &str,
        label: &str,
    ) {
        let Some(depth) = depth else { return };
        let url = depth.metrics_url.clone();
        let peak = depth.finish().await;
        let capacity = self
            .cfg
            .worker_env
            .iter()
            .rev()
            .find(|(k, _)| k == "TASKQ_WRITE_BUFFER")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(DEFAULT_WRITE_BUFFER);
        // The gauge also counts the batch being written, so a full buffer reads up to one
        // batch (2,000 by default) above the capacity.
        match peak {
            Some(peak) => self.report.push(
                Metric::new(
                    &format!("worker_write_buffer_peak{key}"),
                    &format!("worker write buffer peak depth{label}"),
                    peak,
                    "updates",
                )
                .of("TASKQ_WRITE_BUFFER", capacity),
            ),
            None => self.report.note(format!(
                "could not read {WRITE_BUFFER_DEPTH} from the worker's {url}"
            )),
        }
        let Ok(m) = scrape(&self.http, &url).await else {
            self.report
                .note(format!("could not read the worker's {url}"));
            return;
        };
        if let (Some(sum), Some(count)) = (m.get(FLUSH_SECONDS_SUM), m.get(FLUSH_SECONDS_COUNT))
            && *count > 0.0
        {
            self.report.push(Metric::new(
                &format!("worker_flushes{key}"),
                &format!("worker MongoDB writes (batched){label}"),
                *count,
                "writes",
            ));
            self.report.push(Metric::new(
                &format!("worker_flush_mean_ms{key}"),
                &format!("worker MongoDB write, mean time{label}"),
                sum / count * 1e3,
                "ms",
            ));
            // With a backlog the worker also writes updates of backlog tasks by then.
            if key.is_empty() {
                self.report.push(Metric::new(
                    &format!("worker_updates_per_flush{key}"),
                    &format!("status updates per write (2 per task){label}"),
                    2.0 * n as f64 / count,
                    "updates",
                ));
            }
        }
    }

    /// Adds worker and Redis CPU per task of a processing phase.
    /// `key` and `label` tell the phase apart (empty for the plain one).
    fn per_task_cpu(&mut self, cpu: &PhaseCpu, n: usize, key: &str, label: &str) {
        for role in ["worker", "redis", "mongodb"] {
            if let Some(s) = cpu.cpu_seconds(role) {
                let name = format!("{role} CPU per processed task");
                self.report.push(Metric::new(
                    &format!("{role}_cpu_us_per_task{key}"),
                    &format!("{name}{label}"),
                    s * 1e6 / n as f64,
                    "us",
                ));
            }
        }
    }

    fn worker_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.worker {
            Some((w, _)) => w.check_alive(),
            None => bail!("no worker is running"),
        }
    }

    async fn redis_u64(&self, cmd: &mut redis::Cmd) -> anyhow::Result<u64> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .context("polling redis")
    }

    /// Waits until MongoDB counts `self.succeeded` tasks of the queue `succeeded`.
    async fn wait_settled(&self) -> anyhow::Result<Instant> {
        let mut last = 0;
        let mut moved = Instant::now();
        loop {
            let asked = Instant::now();
            let counts = self
                .store
                .count_by_status(Some(&self.queue))
                .await
                .context("counting records")?;
            let done = Instant::now();
            let ok = counts.get(&TaskStatus::Succeeded).copied().unwrap_or(0);
            if ok >= self.succeeded {
                return Ok(done);
            }
            let dead = counts.get(&TaskStatus::Dead).copied().unwrap_or(0);
            if dead > 0 {
                bail!("{dead} tasks died; see the worker's log");
            }
            if ok != last {
                (last, moved) = (ok, done);
            } else if moved.elapsed() > STALL {
                bail!(
                    "records stopped settling at {ok} of {} succeeded: {counts:?}",
                    self.succeeded
                );
            }
            // Poll no more often than the count itself takes, so polling stays a small load.
            let took = done.saturating_duration_since(asked);
            tokio::time::sleep(took.max(Duration::from_millis(50))).await;
        }
    }

    /// Waits until Redis holds no task of the queue.
    async fn wait_idle(&self) -> anyhow::Result<()> {
        let mut last = u64::MAX;
        let mut moved = Instant::now();
        loop {
            let c = self
                .broker
                .counts(&self.queue)
                .await
                .context("counting tasks")?;
            let live = c.queued + c.running + c.scheduled + c.retrying;
            if live == 0 {
                return Ok(());
            }
            if live != last {
                (last, moved) = (live, Instant::now());
            } else if moved.elapsed() > STALL {
                bail!("{live} tasks stayed in redis for {STALL:?}: {c:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `--single-tasks` single submits, `--single-concurrency` in flight; tasks/s.
    async fn single_submits(&mut self) -> anyhow::Result<f64> {
        let url = self.api_url("/v1/tasks")?;
        let body = Bytes::from(json!({"type": "noop", "queue": self.queue.as_str()}).to_string());
        let snap = self.snapshot();
        let start = Instant::now();
        futures::stream::iter(0..self.cfg.single_tasks)
            .map(|_| submit_one(&self.http, &url, body.clone()))
            .buffer_unordered(self.cfg.single_concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        let elapsed = start.elapsed();
        self.report
            .cpu
            .push(snap.until(&self.snapshot(), "single submits (worker running)"));
        Ok(self.cfg.single_tasks as f64 / elapsed.as_secs_f64())
    }

    /// Open-loop single submits at `--rate` for `--latency-seconds`; then reads every
    /// record back and reports submit→start percentiles.
    async fn latency(&mut self, insert_one_p99: f64) -> anyhow::Result<()> {
        let url = self.api_url("/v1/tasks")?;
        let body = Bytes::from(json!({"type": "noop", "queue": self.queue.as_str()}).to_string());
        let snap = self.snapshot();
        let run = open_loop(self.cfg.rate, self.cfg.latency_seconds, |_| {
            let (http, url, body) = (self.http.clone(), url.clone(), body.clone());
            async move { submit_one(&http, &url, body).await }
        })
        .await?;
        let total = run.results.len();
        let mut ids = Vec::with_capacity(total);
        let mut client = Vec::with_capacity(total);
        let mut errors = 0_usize;
        let mut first_error = None;
        for (r, took) in run.results {
            match r {
                Ok(id) => {
                    ids.push(id);
                    client.push(ms(took));
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        self.report
            .cpu
            .push(snap.until(&self.snapshot(), "latency (steady rate)"));
        self.succeeded += ids.len() as u64;
        self.wait_idle().await?;
        self.wait_settled().await?;

        let store = self.store.clone();
        let mut lat: Vec<f64> = futures::stream::iter(ids)
            .map(|id| {
                let store = store.clone();
                async move {
                    let tid: TaskId = id
                        .parse()
                        .map_err(|e| anyhow::anyhow!("task id {id}: {e}"))?;
                    let rec = store
                        .get(tid)
                        .await
                        .context("reading a record")?
                        .with_context(|| format!("record {id} is missing"))?
                        .record;
                    let started = rec
                        .started_at
                        .with_context(|| format!("record {id} never started"))?;
                    Ok::<_, anyhow::Error>((started - rec.created_at).num_milliseconds() as f64)
                }
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        lat.sort_by(f64::total_cmp);
        client.sort_by(f64::total_cmp);

        self.report.push(Metric::new(
            "latency_offered_rate",
            "latency phase: achieved send rate",
            run.achieved_rate,
            "tasks/s",
        ));
        self.report.push(Metric::new(
            "latency_send_lag_max_ms",
            "latency phase: worst send lag behind schedule",
            ms(run.max_lag),
            "ms",
        ));
        let pct = |v: &[f64], p: f64| percentile(v, p).unwrap_or(f64::NAN);
        self.report.push(Metric::new(
            "latency_p50_ms",
            "submit->start p50",
            pct(&lat, 0.5),
            "ms",
        ));
        self.report.push(
            Metric::new("latency_p99_ms", "submit->start p99", pct(&lat, 0.99), "ms")
                .of("raw insert_one p99", insert_one_p99)
                .target(Target::AtMost(TARGET_P99_MS)),
        );
        self.report.push(Metric::new(
            "latency_max_ms",
            "submit->start max",
            pct(&lat, 1.0),
            "ms",
        ));
        self.report.push(Metric::new(
            "client_p50_ms",
            "client submit round trip p50",
            pct(&client, 0.5),
            "ms",
        ));
        self.report.push(Metric::new(
            "client_p99_ms",
            "client submit round trip p99",
            pct(&client, 0.99),
            "ms",
        ));
        if errors > 0 {
            self.report.push(Metric::new(
                "latency_submit_errors",
                "latency phase: failed submits",
                errors as f64,
                "requests",
            ));
            self.report.note(format!(
                "latency phase: {errors} of {total} submits failed; first: {}",
                first_error.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Stops the worker, queues `--backlog` low-priority tasks through the broker, submits
    /// N normal tasks through the api and times a fresh worker through those N.
    async fn backlog(&mut self, plain_processed: f64) -> anyhow::Result<()> {
        let n = self.cfg.tasks;
        if let Some((w, _)) = self.worker.take() {
            w.stop(STOP_GRACE).await?;
        }
        progress(&format!(
            "phase 7: queueing a backlog of {} low-priority tasks through the broker",
            self.cfg.backlog
        ));
        let limits = Limits::default();
        let start = Instant::now();
        let mut left = self.cfg.backlog;
        while left > 0 {
            let k = left.min(BACKLOG_BATCH);
            let now = taskq_core::now();
            let items = (0..k)
                .map(|_| {
                    limits
                        .admit(self.new_task(Priority::Low), now, None)
                        .map(|rec| EnqueueItem::from_record(&rec, 1))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("building backlog tasks: {e}"))?;
            let added = self
                .broker
                .enqueue(&items)
                .await
                .context("enqueueing the backlog")?;
            if added.iter().any(|a| !a) {
                bail!("the broker refused some backlog tasks as duplicates");
            }
            left -= k;
        }
        self.report.push(Metric::new(
            "backlog_enqueue_tasks_per_s",
            "backlog: broker enqueue (no records)",
            self.cfg.backlog as f64 / start.elapsed().as_secs_f64(),
            "tasks/s",
        ));

        progress(&format!(
            "phase 7: batch submit of {n} tasks with the backlog queued"
        ));
        let (rate, ids) = self.batch_submit(n, "batch submit, backlog").await?;
        self.report.push(Metric::new(
            "batch_submit_backlog_tasks_per_s",
            "batch submit, backlog queued",
            rate,
            "tasks/s",
        ));
        progress("phase 7: processing with the backlog queued");
        let p = self.process(&ids, "processing, backlog").await?;
        let processed = n as f64 / p.elapsed.as_secs_f64();
        self.report.push(
            Metric::new(
                "processed_backlog_tasks_per_s",
                "processed, backlog queued",
                processed,
                "tasks/s",
            )
            .of("processed without backlog", plain_processed)
            .target(Target::FractionAtLeast(TARGET_BACKLOG_FRACTION)),
        );
        self.per_task_cpu(&p.cpu, n, "_backlog", ", backlog");
        self.succeeded += n as u64;
        let settled = self.wait_settled().await?;
        let settle = settled.saturating_duration_since(p.first);
        self.report.push(Metric::new(
            "settled_backlog_tasks_per_s",
            "records settled, backlog queued",
            n as f64 / settle.as_secs_f64(),
            "tasks/s",
        ));
        self.writer_figures(p.depth, n, "_backlog", ", backlog")
            .await;
        if let Some((w, _)) = &self.worker {
            let rss = w.peak_rss_kib().map_or(f64::NAN, mib);
            self.report.push(
                Metric::new(
                    "worker_backlog_peak_rss_mib",
                    "peak RSS taskq-worker, backlog run",
                    rss,
                    "MiB",
                )
                .target(Target::AtMost(TARGET_WORKER_RSS_MIB)),
            );
        }
        self.report.note(format!(
            "backlog: {} low-priority noop tasks were put into Redis with the broker's enqueue \
             (batches of {BACKLOG_BATCH}), not through the api, so they have no MongoDB records \
             (the worker's status writes for the ones it runs match nothing); the N measured \
             tasks are normal priority and run first",
            self.cfg.backlog
        ));
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::take(&[
            ("api", self.api.as_ref().map(|(p, _)| p.pid())),
            ("worker", self.worker.as_ref().map(|(p, _)| p.pid())),
            ("redis", self.redis.as_ref().map(Proc::pid)),
            ("mongodb", self.mongodb_pid),
        ])
    }

    /// Stops every child, removes the bench queue from an external Redis and drops the
    /// run's databases. Runs after every run, failed or not; returns the first failure.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        let mut first_err: Option<anyhow::Error> = None;
        let mut keep = |r: anyhow::Result<()>| {
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        };
        for (p, _) in [self.worker.take(), self.api.take()].into_iter().flatten() {
            let lines = p.log_lines();
            if lines > 0 {
                self.report.note(format!(
                    "{} logged {lines} line(s) at warn or above; last:\n{}",
                    p.name(),
                    p.log_tail()
                ));
            }
            keep(p.stop(STOP_GRACE).await.map(drop));
        }
        match self.redis.take() {
            Some(r) => keep(r.stop(Duration::from_secs(5)).await.map(drop)),
            None => keep(self.remove_queue_keys().await),
        }
        keep(self.names.drop_databases(&self.cfg.mongodb_uri).await);
        first_err.map_or(Ok(()), Err)
    }

    /// Deletes every key of the bench queue from an external Redis.
    async fn remove_queue_keys(&self) -> anyhow::Result<()> {
        let mut c = self.conn.clone();
        let pattern = format!("taskq:{{{}}}:*", self.queue);
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<i64>(&mut c)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("SREM")
            .arg(taskq_redis::keys::QUEUES)
            .arg(self.queue.as_str())
            .query_async::<i64>(&mut c)
            .await?;
        Ok(())
    }
}

/// One `POST /v1/tasks`; returns the new task's id.
async fn submit_one(http: &reqwest::Client, url: &str, body: Bytes) -> anyhow::Result<String> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .context("submit")?;
    let status = r.status();
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "submit answered {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(r.json::<Created>().await.context("submit reply")?.id)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_samples() {
        let m = parse_metrics(
            "# HELP x y\n# TYPE taskq_store_write_buffer_depth gauge\n\
             taskq_store_write_buffer_depth 42\n\
             taskq_store_flush_duration_seconds_sum 1.5e-1\n\
             taskq_http_requests_total{method=\"GET\",status=\"200\"} 3\n# EOF\n",
        );
        assert_eq!(m.get(WRITE_BUFFER_DEPTH), Some(&42.0));
        assert_eq!(m.get(FLUSH_SECONDS_SUM), Some(&0.15));
        assert_eq!(
            m.get("taskq_http_requests_total{method=\"GET\",status=\"200\"}"),
            Some(&3.0)
        );
        assert_eq!(m.len(), 3);
    }
}
