//! The bench's command line: every flag is also a `TASKQ_BENCH_*` variable, checked at
//! start-up with messages that say what to fix.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

/// Fallback for the MongoDB URI: the variable the test suite uses.
pub const TEST_MONGODB_URI_ENV: &str = "TASKQ_TEST_MONGODB_URI";

/// Command line and environment of `taskq-bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskq-bench",
    version,
    about = "Benchmarks taskq end to end (real taskq-api and taskq-worker processes, real Redis \
             and MongoDB) and measures raw Redis and MongoDB ceilings with the same clients"
)]
pub struct Args {
    /// Redis to use (a single server). By default the bench starts its own
    /// `redis-server --save "" --appendonly no` on a free loopback port and stops it at exit.
    #[arg(long, env = "TASKQ_BENCH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// MongoDB to use; falls back to `TASKQ_TEST_MONGODB_URI`. Each run works in a database
    /// of its own and drops it at the end.
    #[arg(long, env = "TASKQ_BENCH_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// Tasks (N) of the batch-submit and processing phases.
    #[arg(long, env = "TASKQ_BENCH_TASKS", default_value_t = 50_000)]
    pub tasks: usize,
    /// Worker slots (C): `TASKQ_CONCURRENCY` of the worker process.
    #[arg(long, env = "TASKQ_BENCH_SLOTS", default_value_t = 32)]
    pub slots: usize,
    /// Tasks per batch request, and documents per `insert_many` of the MongoDB ceiling.
    #[arg(long, env = "TASKQ_BENCH_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Batch requests (and ceiling `insert_many` calls) in flight at once.
    #[arg(long, env = "TASKQ_BENCH_BATCH_CONCURRENCY", default_value_t = 4)]
    pub batch_concurrency: usize,
    /// Single-task submits in flight at once (also the concurrency of the Redis ceiling).
    #[arg(long, env = "TASKQ_BENCH_SINGLE_CONCURRENCY", default_value_t = 64)]
    pub single_concurrency: usize,
    /// Tasks of the concurrent single-submit phase.
    #[arg(long, env = "TASKQ_BENCH_SINGLE_TASKS", default_value_t = 5000)]
    pub single_tasks: usize,
    /// Offered rate of the latency phase, in single submits per second (open loop).
    #[arg(long, env = "TASKQ_BENCH_RATE", default_value_t = 2000.0)]
    pub rate: f64,
    /// Length of the latency phase.
    #[arg(long, env = "TASKQ_BENCH_LATENCY_SECONDS", default_value_t = 5.0)]
    pub latency_seconds: f64,
    /// Length of the raw Redis round-trip loop.
    #[arg(long, env = "TASKQ_BENCH_CEILING_SECONDS", default_value_t = 3.0)]
    pub ceiling_seconds: f64,
    /// Extra low-priority tasks queued (through the broker, in batches of 10,000) before a
    /// second processing phase of N tasks. 0 skips that phase.
    #[arg(long, env = "TASKQ_BENCH_BACKLOG", default_value_t = 0)]
    pub backlog: usize,
    /// Keys of a keyed processing phase: N tasks with keys `k-0` … round robin, processed
    /// under `--max-running-per-key`, reported against the plain processing phase. 0
    /// skips that phase.
    #[arg(long, env = "TASKQ_BENCH_KEYS", default_value_t = 0)]
    pub keys: usize,
    /// The queue's `max_running_per_key` during the keyed phase (none: keys are only
    /// served round robin).
    #[arg(long, env = "TASKQ_BENCH_MAX_RUNNING_PER_KEY", requires = "keys")]
    pub max_running_per_key: Option<u32>,
    /// Use `taskq-api` and `taskq-worker` from the `release` profile directory next to
    /// this executable's profile directory.
    #[arg(long, conflicts_with = "bin_dir")]
    pub release_bins: bool,
    /// Directory holding `taskq-api` and `taskq-worker`; default: this executable's own.
    #[arg(long, env = "TASKQ_BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Extra `KEY=VALUE` environment of the worker processes (repeatable), e.g.
    /// `TASKQ_WRITE_BUFFER=100000` to see how a setting moves the figures.
    #[arg(long = "worker-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub worker_env: Vec<(String, String)>,
    /// Extra `KEY=VALUE` environment of the api process (repeatable).
    #[arg(long = "api-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub api_env: Vec<(String, String)>,
    /// Instead of the usual phases, compare processing with and without trace export:
    /// starts an OTLP/gRPC receiver inside the bench, then runs the processing phase (N
    /// tasks batch-submitted with no worker, then a fresh worker timed through them) with
    /// no exporter, with the api and worker exporting every span to the receiver, and with
    /// no exporter again.
    #[arg(long, env = "TASKQ_BENCH_COMPARE_TRACING")]
    pub compare_tracing: bool,
    /// Instead of the usual phases, measure `GET /v1/tasks/{id}?wait=60s` with this many
    /// waiters on one api: as many `sleep` tasks are batch-submitted with no worker, one
    /// waiting request per task is held open, then a worker runs them. Reports the time
    /// from each task's finish to its waiter's answer, the api's CPU and RSS, and its
    /// MongoDB reads for the waiters. 0: off.
    #[arg(long, env = "TASKQ_BENCH_WAITERS", default_value_t = 0)]
    pub waiters: usize,
    /// Instead of the usual phases, compare processing of N tasks submitted as flows
    /// of this many tasks (`POST /v1/flows`, shaped by --flow-shape) with N plain tasks,
    /// in the same run: each arm from the worker's start until MongoDB has every record
    /// `succeeded`. 0: off.
    #[arg(
        long,
        env = "TASKQ_BENCH_FLOWS",
        default_value_t = 0,
        conflicts_with = "compare_tracing"
    )]
    pub flows: usize,
    /// Shape of the --flows groups: `chain` (each task waits for the one before it) or
    /// `fan` (one task, then all but two in parallel, then one that waits for them all).
    #[arg(long, env = "TASKQ_BENCH_FLOW_SHAPE", value_enum, default_value_t = FlowShape::Chain)]
    pub flow_shape: FlowShape,
    /// Print the results as JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// [`Args`] after checking: everything resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub redis_url: Option<String>,
    pub mongodb_uri: String,
    pub tasks: usize,
    pub slots: usize,
    pub batch_size: usize,
    pub batch_concurrency: usize,
    pub single_concurrency: usize,
    pub single_tasks: usize,
    pub rate: f64,
    pub latency_seconds: f64,
    pub ceiling_seconds: f64,
    pub backlog: usize,
    pub keys: usize,
    pub max_running_per_key: Option<u32>,
    pub bin_dir: PathBuf,
    pub worker_env: Vec<(String, String)>,
    pub api_env: Vec<(String, String)>,
    pub compare_tracing: bool,
    pub waiters: usize,
    pub flows: usize,
    pub flow_shape: FlowShape,
    pub json: bool,
}

/// The shape of each flow of `--flows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowShape {
    /// a → b → c → …
    Chain,
    /// a → {b1 … bn} → c
    Fan,
}

impl Args {
    /// Checks every value and resolves defaults that depend on the environment.
    pub fn config(self) -> anyhow::Result<Config> {
        let mongodb_uri = match self.mongodb_uri.filter(|u| !u.trim().is_empty()) {
            Some(uri) => uri,
            None => match std::env::var(TEST_MONGODB_URI_ENV) {
                Ok(uri) if !uri.trim().is_empty() => uri,
                _ => bail!(
                    "no MongoDB given: pass --mongodb-uri or set TASKQ_BENCH_MONGODB_URI (or \
                     {TEST_MONGODB_URI_ENV}), e.g. mongodb://127.0.0.1:27017 after \
                     `scripts/mongo.sh start`"
                ),
            },
        };
        if let Some(url) = &self.redis_url
            && url.contains(',')
        {
            bail!("--redis-url: the bench drives a single Redis, not a cluster");
        }
        check("--tasks", self.tasks as f64, 1.0, 100_000_000.0)?;
        check("--slots", self.slots as f64, 1.0, 10_000.0)?;
        check(
            "--flows",
            self.flows as f64,
            0.0,
            taskq_core::MAX_FLOW_TASKS as f64,
        )?;
        check("--batch-size", self.batch_size as f64, 1.0, 100_000.0)?;
        check(
            "--batch-concurrency",
            self.batch_concurrency as f64,
            1.0,
            1_000.0,
        )?;
        check(
            "--single-concurrency",
            self.single_concurrency as f64,
            1.0,
            10_000.0,
        )?;
        check(
            "--single-tasks",
            self.single_tasks as f64,
            1.0,
            100_000_000.0,
        )?;
        check("--rate", self.rate, 1.0, 1_000_000.0)?;
        check("--latency-seconds", self.latency_seconds, 0.1, 3_600.0)?;
        check("--ceiling-seconds", self.ceiling_seconds, 0.1, 3_600.0)?;
        check("--backlog", self.backlog as f64, 0.0, 100_000_000.0)?;
        check("--waiters", self.waiters as f64, 0.0, 100_000.0)?;
        check("--keys", self.keys as f64, 0.0, 10_000_000.0)?;
        if let Some(m) = self.max_running_per_key {
            check("--max-running-per-key", f64::from(m), 1.0, 1_000_000.0)?;
            if self.keys == 0 {
                bail!("--max-running-per-key needs --keys");
            }
        }
        let bin_dir = match self.bin_dir {
            Some(dir) => dir,
            None => {
                let exe = std::env::current_exe().context("locating this executable")?;
                let own = exe
                    .parent()
                    .context("this executable has no parent directory")?
                    .to_path_buf();
                if self.release_bins {
                    own.parent()
                        .context("this executable's directory has no parent")?
                        .join("release")
                } else {
                    own
                }
            }
        };
        Ok(Config {
            redis_url: self.redis_url,
            mongodb_uri,
            tasks: self.tasks,
            slots: self.slots,
            batch_size: self.batch_size,
            batch_concurrency: self.batch_concurrency,
            single_concurrency: self.single_concurrency,
            single_tasks: self.single_tasks,
            rate: self.rate,
            latency_seconds: self.latency_seconds,
            ceiling_seconds: self.ceiling_seconds,
            backlog: self.backlog,
            keys: self.keys,
            max_running_per_key: self.max_running_per_key,
            bin_dir,
            worker_env: self.worker_env,
            api_env: self.api_env,
            compare_tracing: self.compare_tracing,
            waiters: self.waiters,
            flows: self.flows,
            flow_shape: self.flow_shape,
            json: self.json,
        })
    }
}

fn check(name: &str, v: f64, min: f64, max: f64) -> anyhow::Result<()> {
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(())
    } else {
        bail!("{name}={v} is out of range: use {min} to {max}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["taskq-bench", "--mongodb-uri", "mongodb://127.0.0.1:1"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)?.config()
    }

    #[test]
    fn defaults_match_the_issue() -> anyhow::Result<()> {
        let c = parse(&[])?;
        assert_eq!((c.tasks, c.slots, c.batch_size), (50_000, 32, 1000));
        assert_eq!(
            (c.single_concurrency, c.single_tasks, c.backlog),
            (64, 5000, 0)
        );
        assert_eq!(c.rate, 2000.0);
        let c = parse(&[
            "--worker-env",
            "TASKQ_WRITE_BUFFER=100000",
            "--worker-env",
            "A=b=c",
        ])?;
        assert_eq!(c.worker_env[1], ("A".to_owned(), "b=c".to_owned()));
        Ok(())
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let e = parse(&["--slots", "0"]).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("--slots=0 is out of range: use 1 to 10000")
        );
        assert!(parse(&["--redis-url", "redis://a:1,redis://b:2"]).is_err());
        assert!(parse(&["--release-bins", "--bin-dir", "/x"]).is_err());
        assert!(parse(&["--worker-env", "NOEQUALS"]).is_err());
        assert!(parse(&["--keys", "10", "--max-running-per-key", "0"]).is_err());
        assert!(parse(&["--keys", "0", "--max-running-per-key", "1"]).is_err());
        assert!(parse(&["--keys", "1000", "--max-running-per-key", "1"]).is_ok());
    }
}
