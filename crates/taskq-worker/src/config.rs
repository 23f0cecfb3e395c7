//! The worker's settings: a clap struct whose every flag is also a `TASKQ_*` variable,
//! validated at start-up.

use std::time::Duration;

use clap::Parser;
use taskq_core::{QueueSelection, QueueWeights};

/// Command line and environment of `taskq-worker`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskq-worker",
    version,
    about = "Runs taskq tasks from Redis and records them in MongoDB"
)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub process: taskq_telemetry::ProcessArgs,
    #[command(flatten)]
    pub redis: taskq_redis::RedisArgs,
    #[command(flatten)]
    pub mongodb: taskq_store::MongoArgs,
    /// Queues to serve with weights, e.g. `critical=6,default=3,low=1`.
    #[arg(long, env = "TASKQ_QUEUES", default_value = "default")]
    pub queues: String,
    /// Serve queues in strict weight order instead of weighted-random.
    #[arg(long, env = "TASKQ_STRICT_PRIORITY", default_value_t = false)]
    pub strict_priority: bool,
    /// Tasks run at the same time (slots).
    #[arg(long, env = "TASKQ_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Most tasks leased per dequeue call.
    #[arg(long, env = "TASKQ_FETCH_BATCH", default_value_t = 64)]
    pub fetch_batch: usize,
    /// Visibility timeout: how long a lease lasts without a heartbeat.
    #[arg(long, env = "TASKQ_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// How long running tasks may finish after SIGTERM before they are released.
    #[arg(long, env = "TASKQ_SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,
    /// How often due scheduled and retrying tasks are promoted.
    #[arg(long, env = "TASKQ_PROMOTE_INTERVAL_MS", default_value_t = 200)]
    pub promote_interval_ms: u64,
    /// How often expired leases are reaped.
    #[arg(long, env = "TASKQ_REAP_INTERVAL_MS", default_value_t = 1_000)]
    pub reap_interval_ms: u64,
    /// Outbox entries of a queue (each the status updates of one script call) waiting
    /// for MongoDB before workers stop taking the queue's tasks.
    #[arg(long, env = "TASKQ_WRITE_BUFFER", default_value_t = 10_000)]
    pub write_buffer: usize,
    /// How long an outbox entry another worker read stays unacknowledged before this
    /// worker claims and applies it (the other worker died).
    #[arg(long, env = "TASKQ_OUTBOX_CLAIM_IDLE_MS", default_value_t = 5_000)]
    pub outbox_claim_idle_ms: u64,
    /// Age after which a record still marked submit-pending is checked against Redis and,
    /// when Redis never got its task, cancelled (`submit_failed`). Must exceed the api's
    /// enqueue deadline (5 s after a record's creation, no api enqueues its task any
    /// more) plus the clock skew between hosts.
    #[arg(long, env = "TASKQ_SUBMIT_GRACE_MS", default_value_t = 15_000)]
    pub submit_grace_ms: u64,
    /// Largest result a handler may return, in bytes of compact JSON. A larger one fails
    /// its attempt without retry: the task ends `dead` with `last_error` starting
    /// `result too large`.
    #[arg(long, env = "TASKQ_MAX_RESULT_BYTES", default_value_t = DEFAULT_MAX_RESULT_BYTES)]
    pub max_result_bytes: usize,
    /// URL prefixes the `http` handler may call (comma-separated). Empty disables it.
    #[arg(long, env = "TASKQ_HTTP_ALLOW", default_value = "")]
    pub http_allow: String,
    /// Timeout of one `http` handler request.
    #[arg(long, env = "TASKQ_HTTP_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_timeout_ms: u64,
    /// Identity of this worker in leases and records; defaults to host name and pid.
    #[arg(long, env = "TASKQ_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// `TASKQ_MAX_RESULT_BYTES` by default: 1 MiB, as the api's payload limit.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1024 * 1024;
/// The highest `TASKQ_MAX_RESULT_BYTES` accepted: 8 MiB, half of MongoDB's 16 MiB
/// document limit. The record keeps its payload and history beside the result, and the
/// update that carries it must fit in one command too; a result that does not fit would
/// have its whole update refused, leaving the record `running`.
const MAX_RESULT_BYTES_LIMIT: u64 = 8 * 1024 * 1024;

/// Validated runtime settings of a [`crate::Worker`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub worker_id: String,
    pub queues: QueueSelection,
    pub concurrency: usize,
    pub fetch_batch: usize,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    pub promote_interval: Duration,
    pub reap_interval: Duration,
    /// Most outbox entries of a queue before dequeueing stops (0: no limit).
    pub write_buffer: usize,
    /// Idle time after which a writer claims another writer's unacknowledged entries.
    pub outbox_claim_idle: Duration,
    /// How often each outbox writer looks for such entries.
    pub outbox_claim_interval: Duration,
    /// Age of a submit-pending record before it is checked against Redis.
    pub submit_grace: Duration,
    /// How often submit-pending records are checked.
    pub submit_check_interval: Duration,
    /// Largest handler result, in bytes of compact JSON (see [`crate::HandlerResult`]).
    pub max_result_bytes: usize,
}

impl Settings {
    /// Settings for `queues` with every other value at its default.
    pub fn new(queues: QueueSelection) -> Self {
        Self {
            worker_id: default_worker_id(),
            queues,
            concurrency: 16,
            fetch_batch: 64,
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            promote_interval: Duration::from_millis(200),
            reap_interval: Duration::from_secs(1),
            write_buffer: 10_000,
            outbox_claim_idle: Duration::from_secs(5),
            outbox_claim_interval: Duration::from_secs(1),
            submit_grace: Duration::from_secs(15),
            submit_check_interval: Duration::from_millis(3_750),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl WorkerArgs {
    /// Checks every value and says what to fix.
    pub fn settings(&self) -> Result<Settings, String> {
        let weights: QueueWeights = self
            .queues
            .parse()
            .map_err(|e| format!("TASKQ_QUEUES: {e}"))?;
        check("TASKQ_CONCURRENCY", self.concurrency as u64, 1, 10_000)?;
        check("TASKQ_FETCH_BATCH", self.fetch_batch as u64, 1, 1_000)?;
        check("TASKQ_LEASE_MS", self.lease_ms, 1_000, 3_600_000)?;
        check(
            "TASKQ_SHUTDOWN_GRACE_MS",
            self.shutdown_grace_ms,
            0,
            3_600_000,
        )?;
        check(
            "TASKQ_PROMOTE_INTERVAL_MS",
            self.promote_interval_ms,
            10,
            60_000,
        )?;
        check("TASKQ_REAP_INTERVAL_MS", self.reap_interval_ms, 10, 600_000)?;
        check(
            "TASKQ_WRITE_BUFFER",
            self.write_buffer as u64,
            16,
            10_000_000,
        )?;
        check("TASKQ_HTTP_TIMEOUT_MS", self.http_timeout_ms, 1, 3_600_000)?;
        check(
            "TASKQ_OUTBOX_CLAIM_IDLE_MS",
            self.outbox_claim_idle_ms,
            100,
            3_600_000,
        )?;
        check(
            "TASKQ_SUBMIT_GRACE_MS",
            self.submit_grace_ms,
            1_000,
            86_400_000,
        )?;
        check(
            "TASKQ_MAX_RESULT_BYTES",
            self.max_result_bytes as u64,
            1,
            MAX_RESULT_BYTES_LIMIT,
        )?;
        let claim_idle = Duration::from_millis(self.outbox_claim_idle_ms);
        let submit_grace = Duration::from_millis(self.submit_grace_ms);
        Ok(Settings {
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            queues: QueueSelection::new(weights, self.strict_priority),
            concurrency: self.concurrency,
            fetch_batch: self.fetch_batch,
            lease: Duration::from_millis(self.lease_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            promote_interval: Duration::from_millis(self.promote_interval_ms),
            reap_interval: Duration::from_millis(self.reap_interval_ms),
            write_buffer: self.write_buffer,
            outbox_claim_idle: claim_idle,
            outbox_claim_interval: (claim_idle / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
            submit_grace,
            submit_check_interval: (submit_grace / 4)
                .clamp(Duration::from_millis(250), Duration::from_secs(10)),
            max_result_bytes: self.max_result_bytes,
        })
    }
}

fn check(name: &str, v: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name}={v} is out of range: use {min} to {max}"))
    }
}

/// `<hostname>-<pid>`: unique among live workers, readable in records.
pub fn default_worker_id() -> String {
    let host = hostname().unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The host (or pod) name: `HOSTNAME`, else `/etc/hostname`.
pub(crate) fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        WorkerArgs::try_parse_from(std::iter::once("taskq-worker").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?
            .settings()
    }

    #[test]
    fn a_result_limit_leaves_the_record_room_in_its_document() {
        let limit = settings(&["--max-result-bytes", "8388608"]).expect("8 MiB");
        assert_eq!(limit.max_result_bytes, 8 * 1024 * 1024);
        let err = settings(&["--max-result-bytes", "8388609"]).expect_err("over 8 MiB");
        assert!(err.contains("TASKQ_MAX_RESULT_BYTES"), "{err}");
    }
}
