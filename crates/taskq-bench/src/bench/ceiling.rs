//! Phase 1, the ceilings: what Redis and MongoDB allow on this machine with the clients
//! the services use, measured before any taskq process runs. Later figures are reported
//! as fractions of these.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use taskq_core::{Limits, Priority, TaskId};
use taskq_store::Store;

use super::latency::open_loop;
use super::{Bench, ms};
use crate::report::{Metric, percentile};

/// The ceilings the later phases are compared with.
pub(super) struct Ceilings {
    /// Redis round trips per second.
    pub redis: f64,
    /// MongoDB `insert_many` documents per second.
    pub insert_many: f64,
    /// MongoDB `insert_one` p99 at the latency phase's rate, in milliseconds.
    pub insert_one_p99: f64,
}

/// The MongoDB ceilings.
struct MongoCeiling {
    /// Documents per second.
    insert_many: f64,
    /// Milliseconds.
    insert_one_p50: f64,
    insert_one_p99: f64,
}

impl Bench {
    /// Measures and reports every ceiling.
    pub(super) async fn ceilings(&mut self) -> anyhow::Result<Ceilings> {
        let redis = self.redis_ceiling().await?;
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
            redis,
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

        Ok(Ceilings {
            redis,
            insert_many: mongo_ceiling,
            insert_one_p99,
        })
    }

    /// Raw Redis round trips (alternating PING and SET of a message-sized value) over one
    /// multiplexed connection, with the single-submit concurrency in flight.
    async fn redis_ceiling(&mut self) -> anyhow::Result<f64> {
        let ops = Arc::new(AtomicU64::new(0));
        let value = "x".repeat(400);
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(self.cfg.ceiling_seconds);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..self.cfg.single_concurrency {
            let mut c = self.conn.clone();
            let ops = ops.clone();
            // A key of the queue's own slot, shaped like a task hash, that no task uses.
            let (key, value) = (self.keys.task(&TaskId::new()), value.clone());
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
}
