//! The phases of one bench run, in order, each in a module of its own:
//!
//! 1. [`ceiling`]: a raw Redis PING/SET loop, a raw MongoDB `insert_many` loop and raw
//!    MongoDB `insert_one` calls at the latency phase's rate, with the clients the
//!    services use;
//! 2. [`submit`]: batch submit of N tasks with no worker running;
//! 3. [`process`]: a worker starts; timed from the first task leaving the queue until
//!    every handler has completed (its lease acknowledged in Redis);
//! 4. [`process`]: records settled: until MongoDB counts every task `succeeded`
//!    ([`metrics`] reads the worker's write figures meanwhile);
//! 5. [`keyed`]: optionally (`--keys`), phases 2–4 again with every task keyed (keys
//!    round robin) under `--max-running-per-key`, against phase 3's figure;
//! 6. [`submit`]: concurrent single submits with the worker running;
//! 7. [`latency`]: latency from submit to handler start at a steady, open-loop rate;
//! 8. [`backlog`]: optionally, phases 2–4 again with a low-priority backlog queued in
//!    Redis.
//!
//! [`compare_tracing`] replaces them all with three processing runs, with and without
//! trace export; [`waiters`] with one run of many requests waiting for their tasks;
//! [`flows`] with processing runs of plain tasks and of chains. The broker's keys are
//! read through [`QueueKeys`], never spelt here.
//!
//! Invariants: all tasks go to a queue of their own (`bench-<run>`) and all records to a
//! database of their own; both are removed at the end, also when a phase fails. The
//! bench's tasks are `normal` priority and the backlog is `low`, so "the normal list is
//! empty, no keyed task waits in a key's backlog and none of our ids holds a lease" means
//! every handler of the measured set has completed, whatever else is queued.

mod backlog;
mod ceiling;
mod compare_tracing;
mod flows;
mod keyed;
mod latency;
mod metrics;
mod process;
mod submit;
mod waiters;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use redis::aio::ConnectionManager;
use serde_json::json;
use taskq_core::{NewTask, Priority, QueueName};
use taskq_redis::{Broker, QueueKeys, RedisConfig};
use taskq_store::Store;
use taskq_testkit::RedisServer;

use crate::args::Config;
use crate::cpu::Snapshot;
use crate::procs::{Proc, ServiceEnv, local_mongodb_pid};
use crate::report::{Metric, Report, Target};

/// How often Redis is polled while a processing phase is timed.
const POLL: Duration = Duration::from_millis(2);
/// A wait fails when nothing moved for this long.
const STALL: Duration = Duration::from_secs(60);
/// Grace given to a child on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// CPU of processes outside the bench's that makes a phase's figures suspect.
const BUSY_OTHER_CORES: f64 = 0.25;

/// Targets from the issue (2-core machine, N = 50,000, C = 32).
const TARGET_PROCESSED: f64 = 30_000.0;
const TARGET_BATCH_FRACTION: f64 = 0.7;
const TARGET_P99_MS: f64 = 5.0;
const TARGET_WORKER_RSS_MIB: f64 = 64.0;
/// "Cost per task flat" read as: at least this fraction of the no-backlog rate.
const TARGET_BACKLOG_FRACTION: f64 = 0.9;
/// Processing with keys as a fraction of processing without (issue 15).
const TARGET_KEYED_FRACTION: f64 = 0.7;

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
            let server = tokio::task::spawn_blocking(RedisServer::start)
                .await
                .context("starting redis-server (is it installed? run `scripts/setup.sh`, or pass --redis-url)")?;
            let url = server.url();
            (Some(server), url)
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
            "waiters": cfg.waiters,
            "flows": cfg.flows,
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
    };
    let outcome = bench.phases().await;
    let cleanup = bench.cleanup().await;
    let report = bench.report;
    drop(dir);
    outcome?;
    cleanup?;
    Ok(report)
}

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

/// A progress line on stderr; a closed stderr must not stop the run (and its cleanup).
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
    redis: Option<RedisServer>,
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
}

impl Bench {
    async fn phases(&mut self) -> anyhow::Result<()> {
        if self.cfg.compare_tracing {
            return self.compare_tracing().await;
        }
        if self.cfg.waiters > 0 {
            return self.waiters().await;
        }
        if self.cfg.flows > 0 {
            return self.compare_flows().await;
        }
        let n = self.cfg.tasks;

        progress("phase 1: ceilings");
        let ceilings = self.ceilings().await?;
        let (redis_ceiling, mongo_ceiling) = (ceilings.redis, ceilings.insert_many);
        progress("starting taskq-api");
        let api = self.env.start_api(&self.http).await?;
        self.api = Some(api);

        progress(&format!(
            "phase 2: batch submit of {n} tasks (no worker running)"
        ));
        let (rate, ids) = self.batch_submit(n, 0, "batch submit").await?;
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
        let settled = self.settle_counting(&p, n, "", "").await?;
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

        if self.cfg.keys > 0 {
            self.keyed(processed).await?;
        }

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
        // The latency phase starts from a quiet system: no task in Redis and no status
        // write of earlier phases still queued in the worker.
        self.wait_idle().await?;
        self.settle(self.cfg.single_tasks).await?;

        progress(&format!(
            "phase 6: latency at {}/s for {}s",
            self.cfg.rate, self.cfg.latency_seconds
        ));
        self.latency(ceilings.insert_one_p99).await?;

        self.worker_rss("worker_peak_rss_mib", "peak RSS (VmHWM) taskq-worker");

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
        self.closing_notes();
        Ok(())
    }

    /// Reports the running worker's peak RSS (VmHWM) against its target.
    fn worker_rss(&mut self, key: &str, label: &str) {
        if let Some((w, _)) = &self.worker {
            let rss = w.peak_rss_kib().map_or(f64::NAN, mib);
            let m = Metric::new(key, label, rss, "MiB");
            self.report
                .push(m.target(Target::AtMost(TARGET_WORKER_RSS_MIB)));
        }
    }

    /// The notes every full run ends with: which phases ran on a busy machine, and how to
    /// read the latency and CPU figures.
    fn closing_notes(&mut self) {
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
             at millisecond precision (created_at by the api before the MongoDB insert, \
             started_at by Redis when a worker leases the task), so each sample is off by up to \
             1 ms; `client` latency is the submit's HTTP round trip measured from its scheduled \
             send time",
        );
        self.report.note(
            "CPU in cores (1.00 = one core for the whole phase); `other` is machine CPU outside \
             the tracked processes (anything else running on the machine); the MongoDB server \
             may also serve other clients",
        );
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

    fn worker_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.worker {
            Some((w, _)) => w.check_alive(),
            None => bail!("no worker is running"),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::take(&[
            ("api", self.api.as_ref().map(|(p, _)| p.pid())),
            ("worker", self.worker.as_ref().map(|(p, _)| p.pid())),
            ("redis", self.redis.as_ref().and_then(RedisServer::pid)),
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
        // A server of our own goes with the run (dropping it kills it); an external one
        // keeps everything but the bench queue's keys.
        if self.redis.take().is_none() {
            keep(self.remove_queue_keys().await);
        }
        keep(self.names.drop_databases(&self.cfg.mongodb_uri).await);
        first_err.map_or(Ok(()), Err)
    }

    /// Deletes every key of the bench queue from an external Redis.
    async fn remove_queue_keys(&self) -> anyhow::Result<()> {
        let mut c = self.conn.clone();
        let pattern = self.keys.pattern();
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
