//! Queue depth: the tasks of a queue that need a worker now or soon.
//!
//! depth = queued + due scheduled + retrying + running. Due scheduled tasks count because
//! with no worker running nobody promotes them to the queue; scheduled tasks whose time
//! has not come do not count. Retrying tasks count whether or not their backoff has passed
//! (each will run again shortly). Every key read belongs to the queue's `{queue}` hash
//! slot, so this works on a Redis Cluster as on a single Redis.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use taskq_core::QueueName;
use taskq_redis::{Broker, BrokerError};

/// Where depths come from: Redis in production, a fixed table in unit tests.
pub trait DepthSource: Send + Sync + 'static {
    /// The depth of one queue.
    fn depth<'a>(&'a self, queue: &'a QueueName) -> BoxFuture<'a, Result<u64, BrokerError>>;
}

impl DepthSource for Broker {
    fn depth<'a>(&'a self, queue: &'a QueueName) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            let now = taskq_core::now_ms();
            let (counts, due) =
                futures::try_join!(self.counts(queue), self.scheduled_due(queue, now))?;
            Ok(counts.queued + due.min(counts.scheduled) + counts.retrying + counts.running)
        })
    }
}

/// The depth of every queue in `queues`, read concurrently.
pub async fn read_all(
    source: &dyn DepthSource,
    queues: &[QueueName],
) -> Result<BTreeMap<String, u64>, BrokerError> {
    let readings = futures::future::try_join_all(queues.iter().map(|q| source.depth(q))).await?;
    Ok(queues.iter().map(|q| q.to_string()).zip(readings).collect())
}

/// A fixed table of depths, changeable while in use (for tests and dry runs).
#[derive(Debug, Default)]
pub struct FixedDepth {
    table: std::sync::Mutex<BTreeMap<String, Result<u64, String>>>,
}

impl FixedDepth {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the depth of `queue`.
    pub fn set(&self, queue: &str, depth: u64) {
        self.lock().insert(queue.to_owned(), Ok(depth));
    }

    /// Makes reads of `queue` fail with `message`.
    pub fn fail(&self, queue: &str, message: &str) {
        self.lock()
            .insert(queue.to_owned(), Err(message.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Result<u64, String>>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl DepthSource for FixedDepth {
    fn depth<'a>(&'a self, queue: &'a QueueName) -> BoxFuture<'a, Result<u64, BrokerError>> {
        let r = match self.lock().get(queue.as_str()) {
            Some(Ok(d)) => Ok(*d),
            Some(Err(m)) => Err(BrokerError::Protocol(m.clone())),
            None => Ok(0),
        };
        Box::pin(async move { r })
    }
}
