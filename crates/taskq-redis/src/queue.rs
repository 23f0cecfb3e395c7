//! A queue's state outside the task transitions: its dispatch limits, its pause flag,
//! its counts per live state, its finished-attempt counters, the registry of queues, and
//! the removal of tasks whose submit failed. Plain commands and `MULTI` pipelines on the
//! queue's own keys; no script.

use std::collections::BTreeMap;

use redis::AsyncCommands;
use taskq_core::{QueueName, TaskId};

use crate::keys::{self, Counter, QueueKeys};
use crate::{Broker, BrokerError, Result};

/// Per-queue dispatch limits, enforced across all workers (in the dequeue script).
/// `null` or absent fields mean no limit. The `#[schema]` bounds are the ones the api
/// accepts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
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

/// Task counts of one queue, as Redis sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: u64,
    pub scheduled: u64,
    pub retrying: u64,
    pub running: u64,
}

impl Broker {
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

    /// Sets (or with `None` clears) the dispatch limits of `queue`, for every worker.
    pub async fn set_limits(&self, queue: &QueueName, limits: &QueueLimits) -> Result<()> {
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
    pub async fn limits(&self, queue: &QueueName) -> Result<QueueLimits> {
        let mut c = self.conn.clone();
        let (rate, burst, conc): (Option<f64>, Option<u32>, Option<u32>) = redis::cmd("HMGET")
            .arg(QueueKeys::new(queue).limits())
            .arg("rate")
            .arg("burst")
            .arg("concurrency")
            .query_async(&mut c)
            .await?;
        Ok(QueueLimits {
            max_dispatches_per_second: rate,
            burst: rate.and(burst),
            max_concurrent: conc,
        })
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
        for kind in Counter::ALL {
            let names: Vec<String> = (0..60)
                .map(|s| keys.counter(kind, now - s * 1000))
                .collect();
            pipe.mget(names);
        }
        let mut c = self.conn.clone();
        let (ok, err): (Vec<Option<u64>>, Vec<Option<u64>>) = pipe.query_async(&mut c).await?;
        let sum = |v: Vec<Option<u64>>| v.into_iter().flatten().sum();
        Ok((sum(ok), sum(err)))
    }

    /// Every queue that has received a task.
    pub async fn queues(&self) -> Result<Vec<QueueName>> {
        let mut c = self.conn.clone();
        let names: Vec<String> = c.smembers(keys::QUEUES).await?;
        let mut out: Vec<QueueName> = names.into_iter().filter_map(|n| n.parse().ok()).collect();
        out.sort();
        Ok(out)
    }
}
