//! The [`Worker`] and the state its loops share.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::{fetcher, heartbeat, maintenance, outbox, registration, submits};

/// Longest time a stopping worker keeps applying its queues' outboxes.
const OUTBOX_DRAIN: Duration = Duration::from_secs(10);

/// One running attempt, as the heartbeat and cancellation see it.
pub(crate) struct InFlight {
    pub queue: QueueName,
    pub token: String,
    /// The handler's cancellation signal.
    pub cancel: CancellationToken,
    /// Set when a user cancelled the task (rather than shutdown stopping it).
    pub cancelled: Arc<AtomicBool>,
}

/// State shared by the worker's loops.
pub(crate) struct Shared {
    pub settings: Settings,
    pub broker: Broker,
    pub store: Store,
    pub registry: Registry,
    pub inflight: std::sync::Mutex<HashMap<TaskId, InFlight>>,
    /// Set once shutdown begins; readiness reports it.
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, InFlight>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map is
        // still consistent (every operation on it is a single insert or remove).
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
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
                draining: AtomicBool::new(false),
                metrics,
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

    /// Attempts running right now.
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
        loops_stop.cancel();
        drop(ctx);
        for (name, handle) in [
            ("completer", completer),
            ("maintenance", maintenance),
            ("submit check", submit_checks),
            ("heartbeat", heartbeat),
            ("registration", registration),
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
