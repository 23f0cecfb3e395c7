//! The [`Worker`] and the state its loops share.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use taskq_core::{QueueName, TaskId};
use taskq_redis::Broker;
use taskq_store::{Store, WriterOptions, WriterStats};
use taskq_telemetry::metrics::Metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completer::{self, Done};
use crate::config::{Settings, WorkerArgs};
use crate::handler::Registry;
use crate::{fetcher, heartbeat, maintenance, outbox, progress, registration, submits};

/// Longest time a stopping worker keeps applying its queues' outboxes.
const OUTBOX_DRAIN: Duration = Duration::from_secs(10);

/// One attempt this worker holds the lease of, as the heartbeat and cancellation see
/// it: from its dequeue until its outcome was acknowledged in Redis.
pub(crate) struct InFlight {
    pub id: TaskId,
    pub queue: QueueName,
    pub token: String,
    /// The handler's cancellation signal.
    pub cancel: CancellationToken,
    pub phase: Arc<Phase>,
}

/// The key of one attempt in the in-flight map, unique within the process. Two attempts
/// of one task can both be held here (the first lost its lease, and this worker took
/// the next one while the first was still running); each only ever touches its own
/// entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AttemptKey(u64);

/// Where an attempt's handler is, as the executor and the cancellation check share it.
/// It moves from running to cancelled (a user cancelled the task) or to finished, and
/// from cancelled to finished; whichever of the cancellation and the end of the
/// handler comes first decides whether the attempt ends `cancelled`.
#[derive(Debug, Default)]
pub(crate) struct Phase(AtomicU8);

impl Phase {
    const RUNNING: u8 = 0;
    const CANCELLED: u8 = 1;
    const FINISHED: u8 = 2;

    /// Marks a running handler as cancelled by a user. False when it was cancelled
    /// already or has finished (its outcome is then settled without this signal).
    pub fn cancel(&self) -> bool {
        self.0
            .compare_exchange(
                Self::RUNNING,
                Self::CANCELLED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// Whether a user cancelled the handler before it finished.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::CANCELLED
    }

    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::RUNNING
    }

    /// Marks the handler finished; returns whether a user had cancelled it before.
    pub fn finish(&self) -> bool {
        self.0.swap(Self::FINISHED, Ordering::SeqCst) == Self::CANCELLED
    }
}

/// An attempt's entry in the in-flight map, removed (and the in-flight gauge lowered)
/// when this is dropped. The executor hands it to the completer with the outcome, so
/// the heartbeat keeps extending the lease until the acknowledging call has returned:
/// a finished attempt waits for the completer (behind other batches, or while a call
/// is retried for up to a lease), and an expired lease would have the reaper run the
/// task again. The only cost on the hot path is the map insert and remove.
pub(crate) struct Tracked {
    shared: Arc<Shared>,
    key: AttemptKey,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tracked").field(&self.key).finish()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.shared.inflight().remove(&self.key).is_some() {
            self.shared.metrics.inflight.dec();
        }
    }
}

/// State shared by the worker's loops.
pub(crate) struct Shared {
    pub settings: Settings,
    pub broker: Broker,
    pub store: Store,
    pub registry: Registry,
    pub inflight: std::sync::Mutex<HashMap<AttemptKey, InFlight>>,
    /// The next [`AttemptKey`].
    next_attempt: AtomicU64,
    /// Set once shutdown begins; readiness reports it.
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// Handlers' progress reports waiting to be written ([`crate::progress`]).
    pub progress: Arc<crate::progress::Reports>,
}

impl Shared {
    pub fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, InFlight>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map is
        // still consistent (every operation on it is a single insert or remove).
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `attempt` to the in-flight map until the returned entry is dropped.
    pub fn track(self: &Arc<Self>, attempt: InFlight) -> Tracked {
        let key = AttemptKey(self.next_attempt.fetch_add(1, Ordering::Relaxed));
        self.inflight().insert(key, attempt);
        self.metrics.inflight.inc();
        Tracked {
            shared: self.clone(),
            key,
        }
    }

    /// Whether an attempt of task `id` of `queue` is still in the in-flight map.
    pub fn holds(&self, queue: &QueueName, id: TaskId) -> bool {
        self.inflight()
            .values()
            .any(|f| f.id == id && &f.queue == queue)
    }
}

/// Per-run handles the fetcher passes to every executor.
pub(crate) struct RunCtx {
    pub shared: Arc<Shared>,
    pub done: mpsc::Sender<Done>,
    /// Cancelled when the grace period ends: running attempts stop and are released.
    pub hard_stop: CancellationToken,
    pub tracker: TaskTracker,
}

/// A worker process's engine. Cheap to clone; [`Worker::run`] drives it.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.shared.settings.worker_id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(settings: Settings, broker: Broker, store: Store, registry: Registry) -> Self {
        let metrics = Metrics::new();
        metrics
            .slots
            .set(i64::try_from(settings.concurrency).unwrap_or(i64::MAX));
        Self {
            shared: Arc::new(Shared {
                settings,
                broker,
                store,
                registry,
                inflight: Default::default(),
                next_attempt: AtomicU64::new(0),
                draining: AtomicBool::new(false),
                metrics,
                progress: Arc::default(),
            }),
        }
    }

    /// This worker's Prometheus metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Refreshes the depth gauges of the served queues from Redis.
    pub async fn refresh_depth(&self) {
        for queue in self.shared.settings.queues.weights().names() {
            match self.shared.broker.counts(queue).await {
                Ok(c) => self.shared.metrics.set_depth(
                    queue.as_str(),
                    &[
                        ("queued", c.queued),
                        ("scheduled", c.scheduled),
                        ("retrying", c.retrying),
                        ("running", c.running),
                    ],
                ),
                Err(e) => tracing::warn!(error = %e, %queue, "reading queue depth failed"),
            }
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Attempts held right now: running, or finished and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.shared.inflight().len()
    }

    /// Whether Redis and MongoDB answer within `deadline` and the worker is not draining.
    pub async fn ready(&self, deadline: Duration) -> Result<(), String> {
        if self.shared.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let checks = async {
            self.shared
                .broker
                .ping()
                .await
                .map_err(|e| format!("redis: {e}"))?;
            self.shared
                .store
                .ping()
                .await
                .map_err(|e| format!("mongodb: {e}"))
        };
        tokio::time::timeout(deadline, checks)
            .await
            .map_err(|_| "redis or mongodb did not answer in time".to_owned())?
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully.
    pub async fn run(&self, shutdown: CancellationToken) {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let writer_opts = WriterOptions {
            observer: Some(flush_observer(shared.metrics.clone())),
            ..WriterOptions::default()
        };
        let writer_stats = Arc::new(WriterStats::default());
        let drain = CancellationToken::new();
        let mut writers = tokio::task::JoinSet::new();
        for queue in settings.queues.weights().names() {
            writers.spawn(outbox::run(
                shared.clone(),
                queue.clone(),
                writer_opts.clone(),
                writer_stats.clone(),
                drain.clone(),
            ));
        }
        let (done_tx, done_rx) = mpsc::channel(settings.concurrency * 2 + 64);
        let ctx = Arc::new(RunCtx {
            shared: shared.clone(),
            done: done_tx,
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let completer = tokio::spawn(completer::run(shared.clone(), done_rx));
        let loops_stop = CancellationToken::new();
        let maintenance = tokio::spawn(maintenance::run(shared.clone(), loops_stop.clone()));
        let submit_checks = tokio::spawn(submits::run(shared.clone(), loops_stop.clone()));
        let heartbeat = tokio::spawn(heartbeat::run(shared.clone(), loops_stop.clone()));
        let registration = tokio::spawn(registration::run(shared.clone(), loops_stop.clone()));
        let progress = tokio::spawn(progress::run(shared.clone(), loops_stop.clone()));
        tracing::info!(worker = %settings.worker_id, concurrency = settings.concurrency, "worker started");

        fetcher::run(ctx.clone(), shutdown).await;

        shared.draining.store(true, Ordering::Relaxed);
        let running = ctx.tracker.len();
        tracing::info!(
            running,
            grace_ms = settings.shutdown_grace.as_millis() as u64,
            "draining"
        );
        ctx.tracker.close();
        if tokio::time::timeout(settings.shutdown_grace, ctx.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = ctx.tracker.len(),
                "grace period over; releasing running tasks"
            );
            ctx.hard_stop.cancel();
            ctx.tracker.wait().await;
        }
        // The completer ends once it acknowledged every outcome (`ctx` holds the last
        // sender); the heartbeat keeps those attempts' leases until then.
        drop(ctx);
        if let Err(e) = completer.await {
            tracing::error!(error = %e, "completer loop ended abnormally");
        }
        loops_stop.cancel();
        for (name, handle) in [
            ("maintenance", maintenance),
            ("submit check", submit_checks),
            ("heartbeat", heartbeat),
            ("registration", registration),
            ("progress", progress),
        ] {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "{name} loop ended abnormally");
            }
        }
        // Every transition of this worker is in the outboxes now: apply what is there
        // while the deadline allows; the rest waits in Redis for the other writers.
        drain.cancel();
        let drained = tokio::time::timeout(OUTBOX_DRAIN, async {
            while writers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            writers.abort_all();
            tracing::warn!(
                "the outbox was not applied within {OUTBOX_DRAIN:?}; the other workers' writers apply the rest"
            );
        }
        tracing::info!("worker stopped");
    }
}

fn flush_observer(metrics: Arc<Metrics>) -> taskq_store::FlushObserver {
    Arc::new(move |took, ok| {
        metrics.flush_duration.observe(took.as_secs_f64());
        if !ok {
            metrics.flush_errors.inc();
        }
    })
}

/// Runs a worker process with `registry`: parses nothing, connects to Redis and MongoDB
/// as `args` says, serves health and metrics, and stops on SIGTERM or SIGINT. Custom
/// worker binaries call this from `main`.
pub async fn run(args: WorkerArgs, registry: Registry) -> anyhow::Result<()> {
    let settings = args.settings().map_err(anyhow::Error::msg)?;
    let broker = args.redis.connect().await.context("connecting to redis")?;
    let store = args
        .mongodb
        .connect()
        .await
        .context("connecting to mongodb")?;
    // The retention index is the api's to manage.
    tokio::spawn(taskq_store::ensure_indexes_with_retry(
        store.clone(),
        None,
        Arc::new(AtomicBool::new(false)),
    ));
    let worker = Worker::new(settings, broker, store, registry);

    let shutdown = CancellationToken::new();
    taskq_telemetry::cancel_on_signals(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(args.process.listen)
        .await
        .with_context(|| format!("binding {}", args.process.listen))?;
    tracing::info!(addr = %args.process.listen, "health server listening");
    let server_stop = CancellationToken::new();
    let server = {
        let app = crate::health::router(worker.clone());
        let stop = server_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };
    worker.run(shutdown).await;
    server_stop.cancel();
    server
        .await
        .context("health server task")?
        .context("health server")?;
    Ok(())
}
