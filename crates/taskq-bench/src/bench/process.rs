//! Phases 3 and 4: a worker starts and is timed through a set of queued tasks, read from
//! the broker's keys (the pending list, the lease set, the task hashes); then the records
//! are awaited in MongoDB.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use taskq_core::{Priority, TaskId, TaskStatus};

use super::metrics::DepthWatch;
use super::{Bench, POLL, STALL};
use crate::cpu::{PhaseCpu, Snapshot};
use crate::report::Metric;

/// What a timed processing phase observed.
pub(super) struct Processing {
    /// From spawning the worker to the first task leaving the queue.
    pub startup: Duration,
    /// From the first task leaving the queue to the last handler completing.
    pub elapsed: Duration,
    pub first: Instant,
    pub cpu: PhaseCpu,
    /// Samples the worker's write-buffer depth until the records settle.
    pub depth: Option<DepthWatch>,
    /// CPU times when the first task left the queue.
    pub start: Snapshot,
}

impl Bench {
    /// Starts a worker and times it through the `ids` (all queued, normal priority).
    pub(super) async fn process(
        &mut self,
        ids: &HashSet<String>,
        phase: &str,
    ) -> anyhow::Result<Processing> {
        let queued = self.queued_normal().await?;
        let spawned = Instant::now();
        let worker = self.env.spawn_worker()?;
        let depth = DepthWatch::start(self.http.clone(), format!("http://{}/metrics", worker.1));
        self.worker = Some(worker);

        // Until the first task leaves the normal list.
        let mut last = queued;
        let mut moved = Instant::now();
        let (first, start_snap) = loop {
            self.worker_alive()?;
            let left = self.queued_normal().await?;
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
            let left = self.queued_normal().await?;
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
            .map(|id| {
                let id: TaskId = id
                    .parse()
                    .map_err(|e| anyhow::anyhow!("leased id {id}: {e}"))?;
                Ok(self.keys.task(&id))
            })
            .collect::<anyhow::Result<_>>()?;
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
            start: start_snap,
        })
    }

    /// Normal-priority tasks waiting: the normal pending list plus the keyed tasks in
    /// their keys' backlogs (the bench's keyed tasks are all normal priority).
    async fn queued_normal(&self) -> anyhow::Result<u64> {
        let mut pipe = redis::pipe();
        pipe.llen(self.keys.pending(Priority::Normal))
            .get(self.keys.backlogged());
        let (listed, backlogged): (u64, Option<u64>) = pipe
            .query_async(&mut self.conn.clone())
            .await
            .context("reading the queue")?;
        Ok(listed + backlogged.unwrap_or(0))
    }

    /// Adds worker and Redis CPU per task of a processing phase.
    /// `key` and `label` tell the phase apart (empty for the plain one).
    pub(super) fn per_task_cpu(&mut self, cpu: &PhaseCpu, n: usize, key: &str, label: &str) {
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

    /// Waits until MongoDB counts `expected` tasks of the queue `succeeded`; returns when
    /// they were all applied.
    ///
    /// Counting in MongoDB scans the records on mongo-java-server and would take the
    /// server's time from the writes being measured, so the wait watches Redis instead:
    /// the queue holds no live task and its outbox is empty (every status update was
    /// applied and acknowledged; a waiting flow task is always behind a live task or an
    /// outbox entry). Only then does it count in MongoDB, to confirm; a short count goes
    /// back to watching (counting at most as often as a count takes).
    pub(super) async fn wait_settled(&self, expected: u64) -> anyhow::Result<Instant> {
        let mut last = 0;
        let mut moved = Instant::now();
        loop {
            let applied = self.wait_applied().await?;
            let asked = Instant::now();
            let counts = self
                .store
                .count_by_status(Some(&self.queue))
                .await
                .context("counting records")?;
            let done = Instant::now();
            let ok = counts.get(&TaskStatus::Succeeded).copied().unwrap_or(0);
            if ok >= expected {
                return Ok(applied);
            }
            let dead = counts.get(&TaskStatus::Dead).copied().unwrap_or(0);
            if dead > 0 {
                bail!("{dead} tasks died; see the worker's log");
            }
            if ok != last {
                (last, moved) = (ok, done);
            } else if moved.elapsed() > STALL {
                bail!("records stopped settling at {ok} of {expected} succeeded: {counts:?}");
            }
            let took = done.saturating_duration_since(asked);
            tokio::time::sleep(took.max(Duration::from_millis(50))).await;
        }
    }

    /// [`Self::wait_settled`] for the `n` tasks of a phase, then [`Self::delete_settled`].
    pub(super) async fn settle(&self, n: usize) -> anyhow::Result<Instant> {
        let settled = self.wait_settled(n as u64).await?;
        self.delete_settled().await?;
        Ok(settled)
    }

    /// [`Self::settle`] for the `n` tasks of processing phase `p`, adding the MongoDB
    /// server's CPU per task from the phase's first dequeue until its records were
    /// settled (before they are deleted): the server's whole cost of the tasks' status
    /// updates. The processing window's own figure leaves out what the server applied
    /// after the last completion and counts whatever it did meanwhile, so it grows as
    /// processing slows while the server lags behind; this one is what sizes a server.
    /// `key` and `label` tell the phase apart (empty for the plain one).
    pub(super) async fn settle_counting(
        &mut self,
        p: &Processing,
        n: usize,
        key: &str,
        label: &str,
    ) -> anyhow::Result<Instant> {
        let settled = self.wait_settled(n as u64).await?;
        let cpu = p.start.until(&self.snapshot(), "processing to settled");
        if let Some(s) = cpu.cpu_seconds("mongodb") {
            self.report.push(Metric::new(
                &format!("mongodb_cpu_us_per_task_settled{key}"),
                &format!("mongodb CPU per task, first dequeue to settled{label}"),
                s * 1e6 / n as f64,
                "us",
            ));
        }
        self.delete_settled().await?;
        Ok(settled)
    }

    /// Deletes the `succeeded` records, so that the next phase starts on an empty
    /// collection. mongo-java-server serves only `_id` lookups from an index: any other
    /// query scans every record with the collection locked. The worker's submit check (a
    /// sparse-index lookup on MongoDB) took 90 ms there at 200,000 records and held up
    /// every write meanwhile, so without this each phase would pay for the records the
    /// phases before it left.
    pub(super) async fn delete_settled(&self) -> anyhow::Result<()> {
        self.store
            .delete_by_status(&self.queue, TaskStatus::Succeeded)
            .await
            .context("deleting the settled records")?;
        Ok(())
    }

    /// The queue's tasks in Redis in any state (queued, running, scheduled, retrying),
    /// with the counts they add up from.
    async fn live(&self) -> anyhow::Result<(u64, taskq_redis::QueueCounts)> {
        let c = self
            .broker
            .counts(&self.queue)
            .await
            .context("counting tasks")?;
        Ok((c.queued + c.running + c.scheduled + c.retrying, c))
    }

    /// Waits until Redis holds no live task of the queue and its outbox is empty;
    /// returns when it saw that.
    async fn wait_applied(&self) -> anyhow::Result<Instant> {
        let mut last = (u64::MAX, u64::MAX);
        let mut moved = Instant::now();
        loop {
            let asked = Instant::now();
            let (live, c) = self.live().await?;
            let outbox = self
                .broker
                .outbox_len(&self.queue)
                .await
                .context("reading the outbox length")?;
            if live == 0 && outbox == 0 {
                return Ok(asked);
            }
            if (live, outbox) != last {
                (last, moved) = ((live, outbox), Instant::now());
            } else if moved.elapsed() > STALL {
                bail!(
                    "{live} live tasks and {outbox} outbox entries stayed in redis for {STALL:?}: {c:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until Redis holds no task of the queue.
    pub(super) async fn wait_idle(&self) -> anyhow::Result<()> {
        let mut last = u64::MAX;
        let mut moved = Instant::now();
        loop {
            let (live, c) = self.live().await?;
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
}
