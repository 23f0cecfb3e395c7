//! taskq's Redis broker.
//!
//! Redis holds the live state of every unfinished task: which tasks are runnable (three
//! pending lists per queue, one per priority), which wait for a time (the scheduled and
//! retry sorted sets), which are running and until when their lease lasts (the lease
//! sorted set), and each task's message and counters (one hash per task). Every
//! transition is one Lua script from [`scripts`], so concurrent workers, reapers and
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
pub mod history;
pub mod keys;
pub mod outbox;
pub mod scripts;
mod wake;
pub mod workers;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{AsyncCommands, Value};
use taskq_core::{QueueName, TaskId, TaskMessage, TaskRecord};

#[cfg(feature = "cli")]
pub use cli::RedisArgs;
pub use conn::RedisConfig;
use conn::{Conn, Source};
pub use keys::QueueKeys;
pub use outbox::{OutboxEntry, OutboxReader, OutboxUpdate};
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

/// A task taken from a queue, with the lease of this attempt.
#[derive(Clone, Debug)]
pub struct Leased {
    pub msg: TaskMessage,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    /// The task's transition counter after it started running.
    pub seq: u64,
    /// Identifies this attempt's lease; acknowledgements carry it.
    pub token: String,
    /// When the task last became runnable (submitted, due, or returned to the queue).
    pub queued_at_ms: i64,
}

/// What one dequeue call took.
#[derive(Clone, Debug, Default)]
pub struct Dequeued {
    pub tasks: Vec<Leased>,
    /// A queue limit (rate or concurrency) held tasks back: try again soon.
    pub limited: bool,
}

/// Per-queue dispatch limits, enforced across all workers (in the dequeue script).
/// `null` or absent fields mean no limit. The `#[schema]` bounds are the ones the api
/// accepts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
#[schema(as = QueueLimits)]
pub struct Limits {
    /// Token-bucket rate of dispatches (task starts) per second.
    #[schema(exclusive_minimum = 0, maximum = 1_000_000)]
    pub max_dispatches_per_second: Option<f64>,
    /// Bucket size: starts allowed at once after a quiet period (default: the rate,
    /// rounded up). Needs `max_dispatches_per_second`.
    #[serde(default, deserialize_with = "taskq_core::wire::opt_int")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: Option<u32>,
    /// Most tasks of the queue running at once.
    #[serde(default, deserialize_with = "taskq_core::wire::opt_int")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_concurrent: Option<u32>,
}

/// A task the promoter made runnable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    pub id: TaskId,
    pub seq: u64,
    /// True when it came from the retry set, false when from the scheduled set.
    pub from_retry: bool,
    pub attempts: u32,
}

/// A task whose lease expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub id: TaskId,
    pub seq: u64,
    pub attempts: u32,
    /// True when it went back to its queue, false when its attempts were used up.
    pub requeued: bool,
}

/// How a failed attempt ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// Retry at this time (ms since the epoch).
    RetryAt(i64),
    /// No more attempts.
    Dead,
}

/// What [`Broker::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was waiting and left Redis; its transition counter is now `seq`.
    Cancelled { seq: u64 },
    /// The task is running; its worker was asked to stop it.
    Signalled,
    /// Redis does not hold the task (it finished, or Redis lost it).
    NotFound,
}

/// Task counts of one queue, as Redis sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: u64,
    pub scheduled: u64,
    pub retrying: u64,
    pub running: u64,
}

/// The handle every component uses to talk to Redis. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    conn: Conn,
    source: Source,
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
        Ok(Self { conn, source })
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Adds tasks: one script call per queue, issued concurrently. Returns, per item in
    /// order, whether it was added (false: a task with that id is already in Redis).
    pub async fn enqueue(&self, items: &[EnqueueItem]) -> Result<Vec<bool>> {
        let mut by_queue: BTreeMap<&QueueName, Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            by_queue.entry(&item.msg.queue).or_default().push(i);
        }
        // Registered first: if this fails nothing has been enqueued yet.
        let names: Vec<&str> = by_queue.keys().map(|q| q.as_str()).collect();
        if !names.is_empty() {
            let mut c = self.conn.clone();
            let _: i64 = c.sadd(keys::QUEUES, names).await?;
        }
        let now = taskq_core::now_ms();
        let calls = by_queue.iter().map(|(queue, idx)| {
            let keys = QueueKeys::new(queue);
            let mut inv = scripts::ENQUEUE.prepare_invoke();
            for k in keys.pending_all() {
                inv.key(k);
            }
            inv.key(keys.scheduled()).key(keys.wake()).key(keys.epoch());
            inv.arg(keys.task_prefix()).arg(now);
            let mut encoded = Ok(());
            for &i in idx {
                let it = &items[i];
                match serde_json::to_string(&it.msg) {
                    Ok(msg) => {
                        inv.arg(it.msg.id.to_string())
                            .arg(keys::priority_index(it.msg.priority))
                            .arg(it.due_ms)
                            .arg(it.seq)
                            .arg(it.attempts)
                            .arg(it.msg.max_attempts)
                            .arg(msg);
                    }
                    Err(e) => encoded = Err(BrokerError::Protocol(e.to_string())),
                }
            }
            let mut c = self.conn.clone();
            async move {
                encoded?;
                let added: Vec<i64> = inv.invoke_async(&mut c).await?;
                Ok::<_, BrokerError>(added)
            }
        });
        let results = futures::future::try_join_all(calls).await?;
        let mut out = vec![false; items.len()];
        for ((_, idx), added) in by_queue.iter().zip(results) {
            for (&i, a) in idx.iter().zip(added) {
                out[i] = a == 1;
            }
        }
        Ok(out)
    }

    /// Removes tasks from Redis whatever their state: their hashes go, so the ids left
    /// in lists and sets are skipped and dropped by the scripts. Undoes an enqueue whose
    /// outcome is unknown (an error or a lost reply) when the submit fails.
    pub async fn remove(&self, tasks: &[(QueueName, TaskId)]) -> Result<()> {
        let mut by_queue: BTreeMap<&QueueName, Vec<String>> = BTreeMap::new();
        for (q, id) in tasks {
            by_queue
                .entry(q)
                .or_default()
                .push(QueueKeys::new(q).task(id));
        }
        let calls = by_queue.into_values().map(|keys| {
            let mut c = self.conn.clone();
            async move {
                let _: i64 = c.del(keys).await?;
                Ok::<_, BrokerError>(())
            }
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    /// Leases up to `n` runnable tasks of `queue`, highest priority first, until
    /// `now + lease`, within the queue's [`Limits`], and records them as `running` in the
    /// outbox. Takes nothing (and reports `limited`) while the queue's outbox holds
    /// `max_outbox` entries or more; 0 means no such limit.
    pub async fn dequeue(
        &self,
        queue: &QueueName,
        n: usize,
        lease: Duration,
        worker_id: &str,
        max_outbox: usize,
    ) -> Result<Dequeued> {
        let keys = QueueKeys::new(queue);
        let mut inv = scripts::DEQUEUE.prepare_invoke();
        for k in keys.pending_all() {
            inv.key(k);
        }
        inv.key(keys.lease())
            .key(keys.wake())
            .key(keys.paused())
            .key(keys.limits())
            .key(keys.outbox());
        inv.arg(keys.task_prefix())
            .arg(n)
            .arg(deadline(lease))
            .arg(worker_id)
            .arg(taskq_core::now_ms())
            .arg(max_outbox);
        let mut c = self.conn.clone();
        let vals: Vec<Value> = inv.invoke_async(&mut c).await?;
        let Some((flag, rest)) = vals.split_first() else {
            return Err(BrokerError::Protocol("empty dequeue reply".into()));
        };
        let tasks = rest
            .chunks_exact(6)
            .map(|v| {
                let msg: TaskMessage = serde_json::from_slice(&bytes(&v[1])?)
                    .map_err(|e| BrokerError::Protocol(format!("task message: {e}")))?;
                Ok(Leased {
                    msg,
                    attempt: int(&v[2])? as u32,
                    seq: int(&v[3])? as u64,
                    token: string(&v[4])?,
                    queued_at_ms: int(&v[5])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dequeued {
            tasks,
            limited: int(flag)? == 1,
        })
    }

    /// Sets (or with `None` clears) the dispatch limits of `queue`, for every worker.
    pub async fn set_limits(&self, queue: &QueueName, limits: &Limits) -> Result<()> {
        let keys = QueueKeys::new(queue);
        let mut pipe = redis::pipe();
        pipe.atomic().del(keys.limits());
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(r) = limits.max_dispatches_per_second {
            fields.push(("rate", r.to_string()));
            fields.push((
                "burst",
                limits
                    .burst
                    .unwrap_or_else(|| r.ceil().max(1.0) as u32)
                    .to_string(),
            ));
        }
        if let Some(c) = limits.max_concurrent {
            fields.push(("concurrency", c.to_string()));
        }
        if !fields.is_empty() {
            pipe.hset_multiple(keys.limits(), &fields);
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        // On its own: the queue registry lives in another cluster slot than the queue.
        let _: i64 = c.sadd(keys::QUEUES, queue.as_str()).await?;
        Ok(())
    }

    /// The dispatch limits of `queue`.
    pub async fn limits(&self, queue: &QueueName) -> Result<Limits> {
        let mut c = self.conn.clone();
        let (rate, burst, conc): (Option<f64>, Option<u32>, Option<u32>) = redis::cmd("HMGET")
            .arg(QueueKeys::new(queue).limits())
            .arg("rate")
            .arg("burst")
            .arg("concurrency")
            .query_async(&mut c)
            .await?;
        Ok(Limits {
            max_dispatches_per_second: rate,
            burst: rate.and(burst),
            max_concurrent: conc,
        })
    }

    /// Extends the leases of running attempts to `now + lease`. Returns the tasks whose
    /// lease this worker no longer holds (it expired and was reaped).
    pub async fn extend(
        &self,
        queue: &QueueName,
        held: &[(TaskId, String)],
        lease: Duration,
    ) -> Result<Vec<TaskId>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let keys = QueueKeys::new(queue);
        let mut inv = scripts::EXTEND.prepare_invoke();
        inv.key(keys.lease())
            .arg(keys.task_prefix())
            .arg(deadline(lease));
        for (id, token) in held {
            inv.arg(id.to_string()).arg(token);
        }
        let mut c = self.conn.clone();
        let lost: Vec<String> = inv.invoke_async(&mut c).await?;
        lost.iter()
            .map(|s| s.parse().map_err(|e| BrokerError::Protocol(format!("{e}"))))
            .collect()
    }

    /// Completes attempts as `succeeded` (with their results) by `worker`. Returns the
    /// new seq per item, or `None` where the lease was no longer held (the attempt's
    /// outcome is then discarded).
    pub async fn ack(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str, Option<&serde_json::Value>)],
    ) -> Result<Vec<Option<u64>>> {
        let items = items
            .iter()
            .map(|(id, token, result)| {
                let result = result
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| BrokerError::Protocol(format!("task result: {e}")))?;
                Ok((*id, *token, outbox::extras(None, result.as_deref(), None)))
            })
            .collect::<Result<Vec<_>>>()?;
        self.finish(queue, worker, &items, "succeeded", "ok").await
    }

    /// Ends attempts whose task was cancelled while running: like [`Broker::ack`], as
    /// `cancelled` and counted apart from successes.
    pub async fn ack_cancelled(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str)],
    ) -> Result<Vec<Option<u64>>> {
        let items: Vec<_> = items
            .iter()
            .map(|(id, token)| (*id, *token, String::new()))
            .collect();
        self.finish(queue, worker, &items, "cancelled", "cancel")
            .await
    }

    async fn finish(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str, String)],
        status: &str,
        counter: &str,
    ) -> Result<Vec<Option<u64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let keys = QueueKeys::new(queue);
        let now = taskq_core::now_ms();
        let mut inv = scripts::ACK.prepare_invoke();
        inv.key(keys.lease())
            .key(stats_key(&keys, counter, now))
            .key(keys.outbox())
            .arg(keys.task_prefix())
            .arg(now)
            .arg(worker)
            .arg(status);
        for (id, token, extras) in items {
            inv.arg(id.to_string()).arg(*token).arg(extras);
        }
        self.seqs(inv).await
    }

    /// Fails attempts of `worker`, each with its error: each is retried at its time or
    /// dies. Returns the new seq per item, or `None` where the lease was no longer held.
    pub async fn fail(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str, FailOutcome, &str)],
    ) -> Result<Vec<Option<u64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let keys = QueueKeys::new(queue);
        let now = taskq_core::now_ms();
        let mut inv = scripts::FAIL.prepare_invoke();
        inv.key(keys.lease())
            .key(keys.retry())
            .key(stats_key(&keys, "err", now))
            .key(keys.outbox())
            .arg(keys.task_prefix())
            .arg(now)
            .arg(worker);
        for (id, token, outcome, error) in items {
            let due = match outcome {
                FailOutcome::RetryAt(ms) => (*ms).max(0),
                FailOutcome::Dead => -1,
            };
            let extras = outbox::extras(Some(error), None, (due >= 0).then_some(due));
            inv.arg(id.to_string()).arg(*token).arg(due).arg(extras);
        }
        self.seqs(inv).await
    }

    /// Gives leased tasks of `worker` back to the head of their queue without counting
    /// the attempt.
    pub async fn release(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str)],
    ) -> Result<Vec<Option<u64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let keys = QueueKeys::new(queue);
        let mut inv = scripts::RELEASE.prepare_invoke();
        for k in keys.pending_all() {
            inv.key(k);
        }
        inv.key(keys.lease())
            .key(keys.wake())
            .key(keys.outbox())
            .arg(keys.task_prefix())
            .arg(taskq_core::now_ms())
            .arg(worker);
        for (id, token) in items {
            inv.arg(id.to_string()).arg(*token);
        }
        self.seqs(inv).await
    }

    async fn seqs(&self, inv: redis::ScriptInvocation<'_>) -> Result<Vec<Option<u64>>> {
        let mut c = self.conn.clone();
        let seqs: Vec<i64> = inv.invoke_async(&mut c).await?;
        Ok(seqs
            .into_iter()
            .map(|s| (s > 0).then_some(s as u64))
            .collect())
    }

    /// Makes up to `limit` due scheduled and retrying tasks of `queue` runnable.
    pub async fn promote(
        &self,
        queue: &QueueName,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Promoted>> {
        let keys = QueueKeys::new(queue);
        let mut inv = scripts::PROMOTE.prepare_invoke();
        inv.key(keys.scheduled()).key(keys.retry());
        for k in keys.pending_all() {
            inv.key(k);
        }
        inv.key(keys.wake())
            .key(keys.outbox())
            .arg(keys.task_prefix())
            .arg(now_ms)
            .arg(limit);
        let mut c = self.conn.clone();
        let vals: Vec<Value> = inv.invoke_async(&mut c).await?;
        vals.chunks_exact(4)
            .map(|v| {
                Ok(Promoted {
                    id: task_id(&v[0])?,
                    seq: int(&v[1])? as u64,
                    from_retry: int(&v[2])? == 2,
                    attempts: int(&v[3]).unwrap_or(0) as u32,
                })
            })
            .collect()
    }

    /// Returns up to `limit` tasks of `queue` whose lease expired before `now_ms`.
    pub async fn reap(&self, queue: &QueueName, now_ms: i64, limit: usize) -> Result<Vec<Reaped>> {
        let keys = QueueKeys::new(queue);
        let mut inv = scripts::REAP.prepare_invoke();
        inv.key(keys.lease());
        for k in keys.pending_all() {
            inv.key(k);
        }
        inv.key(keys.wake())
            .key(keys.outbox())
            .arg(keys.task_prefix())
            .arg(now_ms)
            .arg(limit)
            .arg(outbox::extras(Some(LEASE_EXPIRED_REQUEUED), None, None))
            .arg(outbox::extras(Some(LEASE_EXPIRED_DEAD), None, None));
        let mut c = self.conn.clone();
        let vals: Vec<Value> = inv.invoke_async(&mut c).await?;
        vals.chunks_exact(4)
            .map(|v| {
                Ok(Reaped {
                    id: task_id(&v[0])?,
                    seq: int(&v[1])? as u64,
                    attempts: int(&v[2])? as u32,
                    requeued: int(&v[3])? == 1,
                })
            })
            .collect()
    }

    /// How many tasks of `queue` are in each live state.
    pub async fn counts(&self, queue: &QueueName) -> Result<QueueCounts> {
        let keys = QueueKeys::new(queue);
        let [h, n, l] = keys.pending_all();
        let mut pipe = redis::pipe();
        pipe.llen(h)
            .llen(n)
            .llen(l)
            .zcard(keys.scheduled())
            .zcard(keys.retry())
            .zcard(keys.lease());
        let mut c = self.conn.clone();
        let (h, n, l, s, r, run): (u64, u64, u64, u64, u64, u64) = pipe.query_async(&mut c).await?;
        Ok(QueueCounts {
            queued: h + n + l,
            scheduled: s,
            retrying: r,
            running: run,
        })
    }

    /// How many scheduled tasks of `queue` are due at `now_ms` (their time has come but no
    /// promoter has moved them to the queue yet, e.g. because no worker runs).
    pub async fn scheduled_due(&self, queue: &QueueName, now_ms: i64) -> Result<u64> {
        let mut c = self.conn.clone();
        Ok(c.zcount(QueueKeys::new(queue).scheduled(), "-inf", now_ms)
            .await?)
    }

    /// Stops workers from taking tasks of `queue`; submissions still go in.
    pub async fn pause(&self, queue: &QueueName) -> Result<()> {
        let mut c = self.conn.clone();
        let _: () = c.set(QueueKeys::new(queue).paused(), 1).await?;
        let _: i64 = c.sadd(keys::QUEUES, queue.as_str()).await?;
        Ok(())
    }

    /// Lets workers take tasks of `queue` again, waking an idle one.
    pub async fn resume(&self, queue: &QueueName) -> Result<()> {
        let keys = QueueKeys::new(queue);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(keys.paused())
            .lpush(keys.wake(), 1)
            .ltrim(keys.wake(), 0, 0);
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    pub async fn is_paused(&self, queue: &QueueName) -> Result<bool> {
        let mut c = self.conn.clone();
        Ok(c.exists(QueueKeys::new(queue).paused()).await?)
    }

    /// Attempts of `queue` that succeeded and that failed over the last 60 seconds.
    pub async fn finished_last_minute(&self, queue: &QueueName) -> Result<(u64, u64)> {
        let keys = QueueKeys::new(queue);
        let now = taskq_core::now_ms();
        let mut pipe = redis::pipe();
        for kind in ["ok", "err"] {
            let names: Vec<String> = (0..60)
                .map(|s| stats_key(&keys, kind, now - s * 1000))
                .collect();
            pipe.mget(names);
        }
        let mut c = self.conn.clone();
        let (ok, err): (Vec<Option<u64>>, Vec<Option<u64>>) = pipe.query_async(&mut c).await?;
        let sum = |v: Vec<Option<u64>>| v.into_iter().flatten().sum();
        Ok((sum(ok), sum(err)))
    }

    /// Claims idempotency key `key` of `queue` for task `id` for `hold` (long enough to
    /// write the task; [`Broker::keep_idempotency_claim`] then extends it to the retention
    /// window). Exactly one of any number of concurrent claims wins, on any api replica.
    /// Returns `None` when `id` now holds the key, or the id of the task that holds it.
    pub async fn claim_idempotency_key(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
        hold: Duration,
    ) -> Result<Option<TaskId>> {
        let mut inv = scripts::CLAIM.prepare_invoke();
        inv.key(QueueKeys::new(queue).idempotency(key))
            .arg(id.to_string())
            .arg(millis(hold));
        let mut c = self.conn.clone();
        let holder: Option<String> = inv.invoke_async(&mut c).await?;
        holder
            .map(|s| {
                s.parse()
                    .map_err(|e| BrokerError::Protocol(format!("idempotency claim {s:?}: {e}")))
            })
            .transpose()
    }

    /// Keeps `id`'s claim on `key` for `ttl` from now; false when `id` does not hold it.
    pub async fn keep_idempotency_claim(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
        ttl: Duration,
    ) -> Result<bool> {
        self.settle_claim(queue, key, id, "keep", ttl).await
    }

    /// Gives up `id`'s claim on `key` (its submit failed); false when `id` does not hold it.
    pub async fn drop_idempotency_claim(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
    ) -> Result<bool> {
        self.settle_claim(queue, key, id, "drop", Duration::ZERO)
            .await
    }

    async fn settle_claim(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
        how: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut inv = scripts::SETTLE_CLAIM.prepare_invoke();
        inv.key(QueueKeys::new(queue).idempotency(key))
            .arg(id.to_string())
            .arg(how)
            .arg(millis(ttl));
        let mut c = self.conn.clone();
        let held: i64 = inv.invoke_async(&mut c).await?;
        Ok(held == 1)
    }

    /// Cancels a task: see [`scripts::CANCEL`].
    pub async fn cancel(&self, queue: &QueueName, id: TaskId) -> Result<CancelOutcome> {
        let keys = QueueKeys::new(queue);
        let mut inv = scripts::CANCEL.prepare_invoke();
        for k in keys.pending_all() {
            inv.key(k);
        }
        inv.key(keys.scheduled())
            .key(keys.retry())
            .arg(keys.task_prefix())
            .arg(id.to_string());
        let mut c = self.conn.clone();
        let r: Vec<i64> = inv.invoke_async(&mut c).await?;
        Ok(match r.as_slice() {
            [1, seq] => CancelOutcome::Cancelled { seq: *seq as u64 },
            [2, _] => CancelOutcome::Signalled,
            _ => CancelOutcome::NotFound,
        })
    }

    /// Which of `running` (tasks of `queue`) have been asked to cancel.
    pub async fn cancel_requested(
        &self,
        queue: &QueueName,
        running: &[TaskId],
    ) -> Result<Vec<TaskId>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let keys = QueueKeys::new(queue);
        let mut inv = scripts::CANCELLED.prepare_invoke();
        inv.key(keys.lease()).arg(keys.task_prefix());
        for id in running {
            inv.arg(id.to_string());
        }
        let mut c = self.conn.clone();
        let ids: Vec<String> = inv.invoke_async(&mut c).await?;
        ids.iter()
            .map(|s| s.parse().map_err(|e| BrokerError::Protocol(format!("{e}"))))
            .collect()
    }

    /// Every queue that has received a task.
    pub async fn queues(&self) -> Result<Vec<QueueName>> {
        let mut c = self.conn.clone();
        let names: Vec<String> = c.smembers(keys::QUEUES).await?;
        let mut out: Vec<QueueName> = names.into_iter().filter_map(|n| n.parse().ok()).collect();
        out.sort();
        Ok(out)
    }

    /// A listener that idle workers block on until one of `queues` gets work.
    pub async fn wake_listener(&self, queues: &[QueueName]) -> Result<WakeListener> {
        WakeListener::new(&self.source, queues).await
    }
}

/// The error recorded when an expired lease returns its task to the queue.
pub const LEASE_EXPIRED_REQUEUED: &str = "lease expired: the worker stopped heartbeating";
/// The error recorded when an expired lease was the task's last attempt.
pub const LEASE_EXPIRED_DEAD: &str = "lease expired on the last attempt";

/// The counter of `kind` ("ok" or "err") attempts finished in the second of `ms`.
fn stats_key(keys: &QueueKeys, kind: &str, ms: i64) -> String {
    format!("{}{kind}:{}", keys.stats_prefix(), ms.div_euclid(1000))
}

fn deadline(lease: Duration) -> i64 {
    taskq_core::now_ms() + lease.as_millis() as i64
}

fn bytes(v: &Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        other => Err(BrokerError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

fn string(v: &Value) -> Result<String> {
    String::from_utf8(bytes(v)?).map_err(|e| BrokerError::Protocol(e.to_string()))
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BrokerError::Protocol("expected an integer".into())),
        other => Err(BrokerError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

fn task_id(v: &Value) -> Result<TaskId> {
    string(v)?
        .parse()
        .map_err(|e| BrokerError::Protocol(format!("{e}")))
}

/// A duration in whole milliseconds, at least 1 (Redis rejects a zero `PX`).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
