//! The batched status writer: a process hands status updates to an [`UpdateWriter`]; one
//! background flusher gathers them, merges updates of the same task, and records them
//! with [`Store::apply`] in one round trip per batch. [`apply_batch`] is that flush on its
//! own, for writers that gather their batches elsewhere (the worker's outbox writers read
//! them from Redis).
//!
//! Invariants:
//! - The buffer is bounded ([`WriterOptions::capacity`] updates). When it is full,
//!   [`UpdateWriter::send`] waits: a slow or unreachable store slows the senders down
//!   instead of growing memory.
//! - An update is never dropped because the store is unreachable or slow: a failed
//!   flush is retried with exponential backoff, forever, keeping its batch. Retrying is
//!   safe because [`Store::apply`] is idempotent.
//! - The only updates ever dropped are ones the server itself refuses
//!   ([`crate::Error::Rejected`], e.g. a record grown past 16 MiB) on
//!   [`WriterOptions::max_rejections`] consecutive tries; each is logged at error level
//!   and counted in [`WriterStats::dropped_total`]. Otherwise one poisoned update would
//!   stall every status change of the process.
//! - Closing ([`WriterTask::shutdown`], or dropping every [`UpdateWriter`]) stops
//!   accepting updates, flushes everything buffered, then ends the task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use taskq_core::TaskId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::update::coalesce;
use crate::{Error, Rejection, StatusUpdate, Store};

/// Called after every flush attempt with its duration and whether it succeeded (for a
/// latency histogram).
pub type FlushObserver = std::sync::Arc<dyn Fn(Duration, bool) + Send + Sync>;

/// Tuning of the writer.
#[derive(Clone)]
pub struct WriterOptions {
    /// Updates buffered before [`UpdateWriter::send`] waits (≥ 1).
    pub capacity: usize,
    /// Most updates gathered into one flush (≥ 1).
    pub max_batch: usize,
    /// How long the first update of a batch waits for company before the flush.
    pub flush_interval: Duration,
    /// First delay after a failed flush; doubled after each further failure.
    pub retry_min: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// Consecutive refusals by the server after which an update is dropped (≥ 1).
    pub max_rejections: u32,
    /// Told about every flush attempt.
    pub observer: Option<FlushObserver>,
}

impl std::fmt::Debug for WriterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterOptions")
            .field("capacity", &self.capacity)
            .field("max_batch", &self.max_batch)
            .field("flush_interval", &self.flush_interval)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("max_rejections", &self.max_rejections)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_batch: 2_000,
            flush_interval: Duration::from_millis(5),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            max_rejections: 10,
            observer: None,
        }
    }
}

/// Counters of the writer, for metrics. All are monotonic except the `last_*` gauges.
#[derive(Debug, Default)]
pub struct WriterStats {
    flushed: AtomicU64,
    batches: AtomicU64,
    flush_errors: AtomicU64,
    dropped: AtomicU64,
    last_flush_micros: AtomicU64,
    last_batch: AtomicU64,
}

impl WriterStats {
    /// Updates recorded in the store (counted before merging).
    pub fn flushed_total(&self) -> u64 {
        self.flushed.load(Ordering::Relaxed)
    }

    /// Successful flushes.
    pub fn batches_total(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Failed flush attempts (each retry counts).
    pub fn flush_errors_total(&self) -> u64 {
        self.flush_errors.load(Ordering::Relaxed)
    }

    /// Updates dropped after the server refused them `max_rejections` times.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Duration of the last successful `apply` round trip, in seconds.
    pub fn last_flush_seconds(&self) -> f64 {
        self.last_flush_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Updates (before merging) in the last successful flush.
    pub fn last_batch_size(&self) -> u64 {
        self.last_batch.load(Ordering::Relaxed)
    }
}

/// State shared by the handles and the flusher.
#[derive(Debug, Default)]
struct Shared {
    /// Updates accepted by `send` and not yet written or dropped.
    depth: AtomicUsize,
    stats: WriterStats,
}

/// The writer is closed; the updates it did not accept are handed back.
#[derive(Debug, thiserror::Error)]
#[error("the status writer is closed; {} update(s) not accepted", unsent.len())]
pub struct WriterClosed {
    pub unsent: Vec<StatusUpdate>,
}

/// Handle for sending updates to the writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UpdateWriter {
    tx: mpsc::Sender<StatusUpdate>,
    shared: Arc<Shared>,
}

/// The flusher task. Ends after [`WriterTask::shutdown`], or by itself once every
/// [`UpdateWriter`] is dropped; either way only after flushing every accepted update.
/// Dropping this handle detaches the task; it keeps running.
#[derive(Debug)]
pub struct WriterTask {
    handle: JoinHandle<()>,
    close: oneshot::Sender<()>,
    shared: Arc<Shared>,
}

/// [`WriterTask::shutdown_within`] ran out of time; the flusher was aborted.
#[derive(Debug, thiserror::Error)]
#[error(
    "the status writer did not flush within the grace period; {unflushed} update(s) were not written"
)]
pub struct Unflushed {
    pub unflushed: usize,
}

impl UpdateWriter {
    /// Starts the flusher on the current tokio runtime.
    pub fn spawn(store: Store, opts: WriterOptions) -> (UpdateWriter, WriterTask) {
        let opts = WriterOptions {
            capacity: opts.capacity.max(1),
            max_batch: opts.max_batch.max(1),
            max_rejections: opts.max_rejections.max(1),
            ..opts
        };
        let (tx, rx) = mpsc::channel(opts.capacity);
        let (close, close_rx) = oneshot::channel();
        let shared = Arc::new(Shared::default());
        let flusher = Flusher {
            store,
            opts,
            rx,
            shared: Arc::clone(&shared),
        };
        let handle = tokio::spawn(flusher.run(close_rx));
        (
            UpdateWriter {
                tx,
                shared: Arc::clone(&shared),
            },
            WriterTask {
                handle,
                close,
                shared,
            },
        )
    }

    /// Queues one update, waiting while the buffer is full.
    pub async fn send(&self, u: StatusUpdate) -> Result<(), WriterClosed> {
        self.shared.depth.fetch_add(1, Ordering::Relaxed);
        self.tx.send(u).await.map_err(|e| {
            self.shared.depth.fetch_sub(1, Ordering::Relaxed);
            WriterClosed { unsent: vec![e.0] }
        })
    }

    /// Queues updates in order, waiting while the buffer is full. On error, the updates
    /// before the returned ones were accepted.
    pub async fn send_many(&self, us: Vec<StatusUpdate>) -> Result<(), WriterClosed> {
        let mut it = us.into_iter();
        while let Some(u) = it.next() {
            if let Err(mut e) = self.send(u).await {
                e.unsent.extend(it);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Updates accepted and not yet written (for a gauge).
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }
}

impl WriterTask {
    /// Stops accepting updates, flushes every accepted one and waits for the flusher.
    /// While the store is unreachable this waits for it; bound it with
    /// [`WriterTask::shutdown_within`].
    pub async fn shutdown(self) {
        let _ = self.close.send(());
        join(self.handle).await;
    }

    /// Like [`WriterTask::shutdown`], but gives up after `grace`: the flusher is then
    /// aborted and the number of updates that were not written is returned.
    pub async fn shutdown_within(self, grace: Duration) -> Result<(), Unflushed> {
        let _ = self.close.send(());
        let abort = self.handle.abort_handle();
        match tokio::time::timeout(grace, join(self.handle)).await {
            Ok(()) => Ok(()),
            Err(_) => {
                abort.abort();
                let unflushed = self.shared.depth.load(Ordering::Relaxed);
                tracing::error!(
                    unflushed,
                    "status writer aborted before flushing everything"
                );
                Err(Unflushed { unflushed })
            }
        }
    }

    /// Waits until the flusher ends by itself (every [`UpdateWriter`] dropped and
    /// everything flushed), without closing it.
    pub async fn wait(self) {
        join(self.handle).await;
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }
}

async fn join(handle: JoinHandle<()>) {
    if let Err(e) = handle.await
        && e.is_panic()
    {
        tracing::error!(error = %e, "status writer panicked");
    }
}

struct Flusher {
    store: Store,
    opts: WriterOptions,
    rx: mpsc::Receiver<StatusUpdate>,
    shared: Arc<Shared>,
}

impl Flusher {
    async fn run(mut self, close_rx: oneshot::Receiver<()>) {
        // `None` once the close signal fired or its sender was dropped (a detached task
        // keeps running until every `UpdateWriter` is gone).
        let mut close_rx = Some(close_rx);
        let mut buf = Vec::with_capacity(self.opts.max_batch);
        loop {
            // Wait for the first update of the next batch.
            let n = tokio::select! {
                biased;
                signal = async { close_rx.as_mut()?.await.ok() }, if close_rx.is_some() => {
                    self.on_close_signal(&mut close_rx, signal);
                    continue;
                }
                n = self.rx.recv_many(&mut buf, self.opts.max_batch) => n,
            };
            if n == 0 {
                // Closed and drained.
                break;
            }
            // Gather more until the batch is full or the interval has passed.
            let deadline = Instant::now() + self.opts.flush_interval;
            while buf.len() < self.opts.max_batch {
                let room = self.opts.max_batch - buf.len();
                tokio::select! {
                    biased;
                    signal = async { close_rx.as_mut()?.await.ok() }, if close_rx.is_some() => {
                        self.on_close_signal(&mut close_rx, signal);
                    }
                    n = self.rx.recv_many(&mut buf, room) => {
                        if n == 0 {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            let batch = std::mem::take(&mut buf);
            self.flush(batch).await;
        }
        tracing::debug!("status writer closed");
    }

    /// The close signal fired (`Some`) or its sender was dropped (`None`). A signal
    /// closes the channel: senders get [`WriterClosed`] while buffered updates are still
    /// received. A dropped [`WriterTask`] only detaches the flusher.
    fn on_close_signal(
        &mut self,
        close_rx: &mut Option<oneshot::Receiver<()>>,
        signal: Option<()>,
    ) {
        *close_rx = None;
        if signal.is_some() {
            self.rx.close();
        }
    }

    /// Writes one batch, retrying until every update is written (or dropped after
    /// repeated refusals).
    async fn flush(&self, batch: Vec<StatusUpdate>) {
        let n = batch.len();
        apply_batch(&self.store, &self.opts, &self.shared.stats, batch).await;
        self.shared.depth.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Writes one batch of updates the way the [`UpdateWriter`]'s flusher does: merges the
/// updates of each task, applies them with [`Store::apply`], retries with exponential
/// backoff (forever) while the store fails, and drops an update only after the server
/// refused it [`WriterOptions::max_rejections`] times in a row. Returns once every update
/// is written or dropped; counts both in `stats`. Dropping the future part-way is safe:
/// applying the same updates again later has the effect of applying them once.
pub async fn apply_batch(
    store: &Store,
    opts: &WriterOptions,
    stats: &WriterStats,
    batch: Vec<StatusUpdate>,
) {
    Batch { store, opts, stats }.apply(batch).await
}

struct Batch<'a> {
    store: &'a Store,
    opts: &'a WriterOptions,
    stats: &'a WriterStats,
}

impl Batch<'_> {
    async fn apply(&self, batch: Vec<StatusUpdate>) {
        let received = batch.len();
        // Each merged update, and how many received updates it stands for.
        let (mut updates, mut counts): (Vec<StatusUpdate>, Vec<usize>) =
            coalesce(batch).into_iter().unzip();
        let stats = self.stats;
        let max_rejections = self.opts.max_rejections.max(1);
        let mut delay = self.opts.retry_min;
        let mut refusals: HashMap<TaskId, u32> = HashMap::new();
        let mut failures = 0_u32;
        loop {
            let started = Instant::now();
            let applied = self.store.apply(&updates).await;
            if let Some(observe) = &self.opts.observer {
                observe(started.elapsed(), applied.is_ok());
            }
            let rejections = match applied {
                Ok(()) => {
                    let elapsed = started.elapsed();
                    let n: usize = counts.iter().sum();
                    self.done(n);
                    stats
                        .last_flush_micros
                        .store(elapsed.as_micros() as u64, Ordering::Relaxed);
                    stats.last_batch.store(received as u64, Ordering::Relaxed);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(
                            failures,
                            updates = n,
                            "status updates written after retrying"
                        );
                    }
                    return;
                }
                Err(Error::Rejected(rs)) => rs,
                Err(e) => {
                    failures += 1;
                    stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        error = %e,
                        updates = updates.len(),
                        failures,
                        retry_in_ms = delay.as_millis() as u64,
                        "writing status updates failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.opts.retry_max);
                    continue;
                }
            };
            failures += 1;
            stats.flush_errors.fetch_add(1, Ordering::Relaxed);
            let mut refused: HashMap<TaskId, Rejection> = HashMap::new();
            for r in rejections {
                refused.entry(r.id).or_insert(r);
            }
            // Every update not named was applied; keep the refused ones for a retry
            // unless they were refused too often.
            let (mut written, mut dropped) = (0, 0);
            (updates, counts) = updates
                .into_iter()
                .zip(counts)
                .filter(|(u, n)| {
                    let Some(r) = refused.get(&u.id) else {
                        written += n;
                        return false;
                    };
                    let count = refusals.entry(u.id).or_default();
                    *count += 1;
                    if *count < max_rejections {
                        tracing::warn!(
                            task_id = %u.id,
                            seq = u.seq,
                            refusals = *count,
                            error = %r.message,
                            code = r.code,
                            "the server refused a status update; retrying"
                        );
                        return true;
                    }
                    tracing::error!(
                        task_id = %u.id,
                        seq = u.seq,
                        status = %u.status,
                        refusals = *count,
                        error = %r.message,
                        code = r.code,
                        "dropping a status update the server keeps refusing"
                    );
                    dropped += n;
                    false
                })
                .unzip();
            self.done(written);
            if dropped > 0 {
                stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            }
            if updates.is_empty() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.opts.retry_max);
        }
    }

    /// `n` updates were written.
    fn done(&self, n: usize) {
        self.stats.flushed.fetch_add(n as u64, Ordering::Relaxed);
    }
}
