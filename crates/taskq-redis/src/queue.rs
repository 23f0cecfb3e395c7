//! A queue's state outside the task transitions: its dispatch limits, its pause flag,
//! its counts per live state, its active task keys, its finished-attempt counters and
//! the registry of queues. Plain commands and `MULTI` pipelines on the queue's own
//! keys; no script.

use redis::AsyncCommands;
use taskq_core::QueueName;

use crate::keys::{self, Counter, QueueKeys};
use crate::{Broker, Result};

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
    /// Most tasks of one key running at once (1: one at a time, in submit order within
    /// a priority). Without it keys have no running limit but are still served round
    /// robin. A change applies as each key's tasks next start or stop.
    #[serde(default, deserialize_with = "taskq_core::wire::opt_int")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_running_per_key: Option<u32>,
    /// Token-bucket rate of dispatches per second of each key: a key whose bucket is
    /// empty waits (parked until its next token; released by the workers' promoter,
    /// every `TASKQ_PROMOTE_INTERVAL_MS`) while other keys go on.
    #[schema(exclusive_minimum = 0, maximum = 1_000_000)]
    pub max_dispatches_per_second_per_key: Option<f64>,
    /// Bucket size per key (default: the rate per key, rounded up). Needs
    /// `max_dispatches_per_second_per_key`.
    #[serde(default, deserialize_with = "taskq_core::wire::opt_int")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst_per_key: Option<u32>,
}

/// Task counts of one queue, as Redis sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: u64,
    pub scheduled: u64,
    pub retrying: u64,
    pub running: u64,
    /// Task keys with at least one task in Redis.
    pub active_keys: u64,
}

/// One of a queue's busiest task keys.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct KeyLoad {
    pub key: String,
    /// Its tasks in Redis (queued, scheduled, retrying or running).
    pub tasks: u64,
    /// Its tasks running now.
    pub running: u64,
}

/// Adds a token bucket's fields when it has a rate; without a burst, the bucket holds
/// the rate rounded up (at least one start).
fn push_bucket<'a>(
    fields: &mut Vec<(&'a str, String)>,
    (rate_field, rate): (&'a str, Option<f64>),
    (burst_field, burst): (&'a str, Option<u32>),
) {
    if let Some(r) = rate {
        let burst = burst.unwrap_or_else(|| r.ceil().max(1.0) as u32);
        fields.push((rate_field, r.to_string()));
        fields.push((burst_field, burst.to_string()));
    }
}

impl Broker {
    /// Sets (or with `None` clears) the dispatch limits of `queue`, for every worker.
    pub async fn set_limits(&self, queue: &QueueName, limits: &QueueLimits) -> Result<()> {
        let keys = QueueKeys::new(queue);
        let mut pipe = redis::pipe();
        pipe.atomic().del(keys.limits());
        let mut fields: Vec<(&str, String)> = Vec::new();
        push_bucket(
            &mut fields,
            ("rate", limits.max_dispatches_per_second),
            ("burst", limits.burst),
        );
        if let Some(c) = limits.max_concurrent {
            fields.push(("concurrency", c.to_string()));
        }
        if let Some(c) = limits.max_running_per_key {
            fields.push(("key_conc", c.to_string()));
        }
        push_bucket(
            &mut fields,
            ("key_rate", limits.max_dispatches_per_second_per_key),
            ("key_burst", limits.burst_per_key),
        );
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
        #[allow(clippy::type_complexity)]
        let (rate, burst, conc, key_conc, key_rate, key_burst): (
            Option<f64>,
            Option<u32>,
            Option<u32>,
            Option<u32>,
            Option<f64>,
            Option<u32>,
        ) = redis::cmd("HMGET")
            .arg(QueueKeys::new(queue).limits())
            .arg("rate")
            .arg("burst")
            .arg("concurrency")
            .arg("key_conc")
            .arg("key_rate")
            .arg("key_burst")
            .query_async(&mut c)
            .await?;
        Ok(QueueLimits {
            max_dispatches_per_second: rate,
            burst: rate.and(burst),
            max_concurrent: conc,
            max_running_per_key: key_conc,
            max_dispatches_per_second_per_key: key_rate,
            burst_per_key: key_rate.and(key_burst),
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
            .zcard(keys.lease())
            .get(keys.backlogged())
            .zcard(keys.active_keys());
        let mut c = self.conn.clone();
        #[allow(clippy::type_complexity)]
        let (h, n, l, s, r, run, backlog, active): (
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            Option<u64>,
            u64,
        ) = pipe.query_async(&mut c).await?;
        Ok(QueueCounts {
            queued: h + n + l + backlog.unwrap_or(0),
            scheduled: s,
            retrying: r,
            running: run,
            active_keys: active,
        })
    }

    /// The `n` task keys of `queue` with the most tasks in Redis, busiest first.
    pub async fn busiest_keys(&self, queue: &QueueName, n: usize) -> Result<Vec<KeyLoad>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let keys = QueueKeys::new(queue);
        let mut c = self.conn.clone();
        let top: Vec<(String, f64)> = c
            .zrevrange_withscores(keys.active_keys(), 0, n as isize - 1)
            .await?;
        if top.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, _) in &top {
            pipe.hget(keys.key_state(key), "run");
        }
        let running: Vec<Option<u64>> = pipe.query_async(&mut c).await?;
        Ok(top
            .into_iter()
            .zip(running)
            .map(|((key, tasks), run)| KeyLoad {
                key,
                tasks: tasks.max(0.0) as u64,
                running: run.unwrap_or(0),
            })
            .collect())
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
