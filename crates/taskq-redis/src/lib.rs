//! taskq's Redis broker.
//!
//! Redis holds the live state of every unfinished task: which tasks are runnable (three
//! pending lists per queue, one per priority), which wait for a time (the scheduled and
//! retry sorted sets), which are running and until when their lease lasts (the lease
//! sorted set), and each task's message and counters (one hash per task, fields in
//! [`keys::task_hash`]), and for tasks with a key, each key's backlog, head and running
//! count (the `key_fns` helpers of [`scripts`]). Every transition is one Lua script of [`scripts`] (one module
//! per script, with its keys, arguments and reply), so concurrent workers, reapers and
//! promoters never race. Finished tasks leave Redis; their records live in the store.
//!
//! Each of those scripts also appends the status updates it decided to the queue's
//! outbox stream in the same atomic step ([`outbox`]): the store writers apply them to
//! MongoDB and acknowledge them only afterwards, so a crash between Redis and MongoDB
//! loses no status change.
//!
//! The broker works against a single Redis or a Redis Cluster: every key of a queue
//! carries the `{queue}` hash tag (see [`keys`]).

#[cfg(feature = "cli")]
mod cli;
mod conn;
pub mod flow;
pub mod history;
pub mod keys;
pub mod notify;
pub mod outbox;
mod queue;
mod reply;
pub mod scripts;
mod wake;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use taskq_core::{TaskMessage, TaskRecord};

#[cfg(feature = "cli")]
pub use cli::RedisArgs;
pub use conn::RedisConfig;
use conn::{Conn, Source};
pub use keys::{Counter, QueueKeys};
pub use notify::{Finished, FinishedSubscription};
pub use outbox::{OutboxEntry, OutboxReader, OutboxUpdate};
pub use queue::{KeyLoad, QueueCounts, QueueLimits};
pub use scripts::cancel::CancelOutcome;
pub use scripts::dequeue::{CallId, Dequeued, Leased};
pub use scripts::fail::FailOutcome;
pub use scripts::promote::Promoted;
pub use scripts::reap::{LEASE_EXPIRED_DEAD, LEASE_EXPIRED_REQUEUED, Reaped};
pub use scripts::remove::Removed;
pub use wake::WakeListener;
pub use workers::WorkerInfo;

/// Errors from the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("invalid redis configuration: {0}")]
    Config(String),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// A task to add to Redis.
#[derive(Clone, Debug)]
pub struct EnqueueItem {
    pub msg: TaskMessage,
    /// When it becomes runnable (ms since the epoch); at or before now means at once.
    pub due_ms: i64,
    /// The task's transition counter after this enqueue (1 for a new task).
    pub seq: u64,
    /// Attempts already made (0 for a new task).
    pub attempts: u32,
}

impl EnqueueItem {
    /// The enqueue of a record as the store holds it with `seq`.
    pub fn from_record(rec: &TaskRecord, seq: u64) -> Self {
        Self {
            msg: rec.message(),
            due_ms: rec.scheduled_at.timestamp_millis(),
            seq,
            attempts: rec.attempts,
        }
    }
}

/// The handle every component uses to talk to Redis. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    conn: Conn,
    /// Shared: every handler clones the broker, and a client holds its settings.
    source: Arc<Source>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to a single Redis (lazily: the first command opens the connection, so a
    /// process can start while Redis is still coming up) or to a Redis Cluster.
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let (conn, source) = conn::open(config).await?;
        Ok(Self {
            conn,
            source: Arc::new(source),
        })
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// A listener that idle workers block on until one of `queues` gets work.
    pub async fn wake_listener(&self, queues: &[taskq_core::QueueName]) -> Result<WakeListener> {
        WakeListener::new(&self.source, queues).await
    }
}

/// `now + lease` in ms since the epoch: a lease deadline.
fn deadline(lease: Duration) -> i64 {
    taskq_core::now_ms() + lease.as_millis() as i64
}

/// A duration in whole milliseconds, at least 1 (Redis rejects a zero `PX`).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
