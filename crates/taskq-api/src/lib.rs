//! taskq's HTTP api.
//!
//! [`app`] builds the router from an [`AppState`]; [`run`] wires it to Redis and MongoDB
//! from [`ApiArgs`] and serves it ([`serve`]) until SIGTERM or SIGINT, draining in-flight
//! requests.
//! A submit is answered 2xx only after the record is in MongoDB and the task in Redis.
//! [`run`] also runs the periodic schedules of its config ([`spawn_periodic`]).

mod auth;
mod body;
mod error;
mod extract;
mod flows;
pub mod health;
mod limit;
mod observe;
pub mod openapi;
pub mod periodic;
mod queues;
mod serve;
mod tasks;
pub mod transitions;
pub mod ui;
pub mod wait;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use clap::Parser;
use taskq_core::Limits;
use taskq_redis::Broker;
use taskq_store::Store;
use taskq_telemetry::LogFormat;
use taskq_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::health::Needs;

pub use auth::{Role, Tokens};
pub use body::BodyLimits;
pub use error::{ApiError, ErrorCode};
pub use periodic::{Schedule, spawn_periodic};
pub use serve::{ConnectionLimits, MAX_HEAD_BYTES, serve};

/// Command line and environment of `taskq-api`.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskq-api", version, about = "taskq's HTTP api")]
pub struct ApiArgs {
    /// Address to serve on.
    #[arg(long, env = "TASKQ_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub redis: taskq_redis::RedisArgs,
    #[command(flatten)]
    pub mongodb: taskq_store::MongoArgs,
    /// Largest task payload, in bytes of compact JSON.
    #[arg(long, env = "TASKQ_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub max_payload_bytes: usize,
    /// Largest request body, in bytes (bounds batch submits).
    #[arg(long, env = "TASKQ_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most tasks in one batch submit.
    #[arg(long, env = "TASKQ_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// `max_attempts` of tasks that give none.
    #[arg(long, env = "TASKQ_DEFAULT_MAX_ATTEMPTS", default_value_t = 5)]
    pub default_max_attempts: u32,
    /// `timeout_ms` of tasks that give none.
    #[arg(long, env = "TASKQ_DEFAULT_TIMEOUT_MS", default_value_t = 600_000)]
    pub default_timeout_ms: u64,
    /// Longest time one request may take (waiting for a request slot included) before it
    /// is answered 503; a `GET /v1/tasks/{id}?wait=` gets its wait on top.
    #[arg(long, env = "TASKQ_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "TASKQ_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// `on` (tokens required) or `off` (no authentication; only when said explicitly).
    #[arg(long, env = "TASKQ_AUTH", default_value = "on")]
    pub auth: String,
    /// Tokens as `role:token` pairs, comma-separated; roles are `read`, `submit` and `admin`.
    #[arg(long, env = "TASKQ_TOKENS", hide_env_values = true, default_value = "")]
    pub tokens: String,
    /// A file of `role:token` lines (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "TASKQ_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
    /// How long an idempotency key keeps returning its original task.
    #[arg(long, env = "TASKQ_IDEMPOTENCY_TTL_SECONDS", default_value_t = 86_400)]
    pub idempotency_ttl_seconds: u64,
    /// How long MongoDB keeps the records of finished tasks (succeeded, dead, cancelled),
    /// through a TTL index on `finished_at`; 0 keeps them forever. At least the
    /// idempotency retention, so a repeated key always finds its task.
    #[arg(long, env = "TASKQ_RETENTION_SECONDS", default_value_t = 604_800)]
    pub retention_seconds: u64,
    /// Most requests served at once; more wait (and time out after the request timeout).
    /// A request counts once its body has arrived.
    #[arg(long, env = "TASKQ_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Most connections open at once, idle and slow ones included; more wait in the
    /// listen backlog.
    #[arg(long, env = "TASKQ_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,
    /// Longest time from the first byte of a request head to its end.
    #[arg(long, env = "TASKQ_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a connection with no request in flight may stay silent before it is
    /// closed (a new connection too).
    #[arg(long, env = "TASKQ_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Time every request body gets to arrive, whatever its size.
    #[arg(long, env = "TASKQ_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// Beyond `TASKQ_BODY_READ_TIMEOUT_MS`, each further second of a body needs this many
    /// more bytes delivered; a slower body is answered `408 body_timeout`.
    #[arg(
        long,
        env = "TASKQ_BODY_MIN_BYTES_PER_SECOND",
        default_value_t = 16_384
    )]
    pub body_min_bytes_per_second: u64,
    /// Pause between the background probes of Redis and MongoDB while they answer (a
    /// quarter of it while one does not). Two failed probes in a row open the store's
    /// circuit: requests that need it are answered `503` with `Retry-After` at once and
    /// `/readyz` fails, until a probe succeeds.
    #[arg(long, env = "TASKQ_STORE_PROBE_INTERVAL_MS", default_value_t = 500)]
    pub store_probe_interval_ms: u64,
    /// How long a probe of Redis or MongoDB may take before it counts as failed.
    #[arg(long, env = "TASKQ_STORE_PROBE_TIMEOUT_MS", default_value_t = 1_000)]
    pub store_probe_timeout_ms: u64,
    /// Periodic tasks: a JSON array of `{"name", "cron", "task"}` (see the README).
    #[arg(long, env = "TASKQ_PERIODIC", hide_env_values = true)]
    pub periodic: Option<String>,
    /// A file holding a JSON array of periodic tasks (e.g. a mounted ConfigMap); adds to
    /// `TASKQ_PERIODIC`.
    #[arg(long, env = "TASKQ_PERIODIC_FILE")]
    pub periodic_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub ui: ui::UiArgs,
}

/// The highest `TASKQ_MAX_PAYLOAD_BYTES` accepted: 7 MiB. A task's record holds its
/// payload, its result (up to the workers' `TASKQ_MAX_RESULT_BYTES`, at most 8 MiB) and
/// its history in one MongoDB document of at most 16 MiB. A larger payload would make
/// MongoDB refuse the record's insert, which the api can only report as the store
/// failing, for every submit written with it.
pub const MAX_PAYLOAD_BYTES_LIMIT: usize = 7 * 1024 * 1024;

impl ApiArgs {
    /// The tokens to check, or `None` when authentication is off. Says what to fix.
    pub fn tokens(&self) -> Result<Option<Tokens>, String> {
        match self.auth.as_str() {
            "off" => return Ok(None),
            "on" => {}
            other => return Err(format!("TASKQ_AUTH must be `on` or `off`, not `{other}`")),
        }
        let mut tokens = Tokens::parse(&self.tokens).map_err(|e| format!("TASKQ_TOKENS: {e}"))?;
        if let Some(path) = &self.tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("TASKQ_TOKENS_FILE {}: {e}", path.display()))?;
            tokens.extend(
                Tokens::parse(&text)
                    .map_err(|e| format!("TASKQ_TOKENS_FILE {}: {e}", path.display()))?,
            );
        }
        if tokens.is_empty() {
            return Err(
                "no API tokens: set TASKQ_TOKENS or TASKQ_TOKENS_FILE, or TASKQ_AUTH=off to run without authentication"
                    .into(),
            );
        }
        Ok(Some(tokens))
    }

    /// The submit limits, checked: says what to fix.
    pub fn limits(&self) -> Result<Limits, String> {
        let d = Limits::default();
        if !(1..=d.max_attempts).contains(&self.default_max_attempts) {
            return Err(format!(
                "TASKQ_DEFAULT_MAX_ATTEMPTS must be 1 to {}",
                d.max_attempts
            ));
        }
        if !(1..=d.max_timeout_ms).contains(&self.default_timeout_ms) {
            return Err(format!(
                "TASKQ_DEFAULT_TIMEOUT_MS must be 1 to {}",
                d.max_timeout_ms
            ));
        }
        if !(1..=MAX_PAYLOAD_BYTES_LIMIT).contains(&self.max_payload_bytes)
            || self.max_payload_bytes > self.max_body_bytes
        {
            return Err(format!(
                "TASKQ_MAX_PAYLOAD_BYTES must be 1 to {MAX_PAYLOAD_BYTES_LIMIT} (7 MiB) and at most TASKQ_MAX_BODY_BYTES"
            ));
        }
        if !(1..=100_000).contains(&self.max_batch) {
            return Err("TASKQ_MAX_BATCH must be 1 to 100000".into());
        }
        Ok(Limits {
            max_payload_bytes: self.max_payload_bytes,
            default_max_attempts: self.default_max_attempts,
            default_timeout_ms: self.default_timeout_ms,
            ..d
        })
    }

    /// How long finished records stay, checked against the idempotency retention: a
    /// record must outlive its key, or a repeat of the key could not find its task.
    pub fn retention(&self) -> Result<taskq_store::Retention, String> {
        if self.retention_seconds == 0 {
            return Ok(taskq_store::Retention::Forever);
        }
        if self.retention_seconds < self.idempotency_ttl_seconds {
            return Err(format!(
                "TASKQ_RETENTION_SECONDS ({}) must be 0 (keep forever) or at least \
                 TASKQ_IDEMPOTENCY_TTL_SECONDS ({}): a repeated idempotency key must find \
                 its task's record",
                self.retention_seconds, self.idempotency_ttl_seconds
            ));
        }
        Ok(taskq_store::Retention::For(Duration::from_secs(
            self.retention_seconds,
        )))
    }

    /// The periodic schedules of `TASKQ_PERIODIC` and `TASKQ_PERIODIC_FILE`, each task
    /// checked against `limits`: says what to fix.
    pub fn periodic(&self, limits: &Limits) -> Result<Vec<Schedule>, String> {
        let file = match &self.periodic_file {
            Some(path) => Some((
                format!("TASKQ_PERIODIC_FILE {}", path.display()),
                std::fs::read_to_string(path)
                    .map_err(|e| format!("TASKQ_PERIODIC_FILE {}: {e}", path.display()))?,
            )),
            None => None,
        };
        let mut sources = Vec::new();
        if let Some(text) = &self.periodic {
            sources.push(("TASKQ_PERIODIC", text.as_str()));
        }
        if let Some((origin, text)) = &file {
            sources.push((origin.as_str(), text.as_str()));
        }
        let schedules = periodic::parse_schedules(&sources, limits)?;
        let ttl = Duration::from_secs(self.idempotency_ttl_seconds);
        if !schedules.is_empty() && ttl < periodic::MIN_IDEMPOTENCY_TTL {
            return Err(format!(
                "TASKQ_IDEMPOTENCY_TTL_SECONDS must be at least {} with periodic tasks: \
                 a tick's idempotency key is what keeps replicas from submitting it twice",
                periodic::MIN_IDEMPOTENCY_TTL.as_secs()
            ));
        }
        Ok(schedules)
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub broker: Broker,
    pub store: Store,
    pub limits: Arc<Limits>,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Set when shutdown begins; `/readyz` then answers 503.
    pub draining: Arc<AtomicBool>,
    /// Set once the store's indexes exist; `/readyz` answers 503 until then.
    pub indexes_ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Accepted tokens; `None` turns authentication off.
    pub tokens: Option<Arc<Tokens>>,
    /// How long an idempotency key keeps returning its original task.
    pub idempotency_ttl: Duration,
    pub max_concurrent_requests: usize,
    /// How request bodies are read (before a request takes a concurrency slot);
    /// `max_bytes` is taken from `max_body_bytes`.
    pub body: BodyLimits,
    /// What [`serve`] enforces per connection (read by whoever serves [`app`]).
    pub connections: ConnectionLimits,
    /// Whether Redis and MongoDB answer (kept by [`health::probe`] in [`run`]).
    pub health: health::Health,
    /// The web dashboard's settings.
    pub ui: Arc<ui::UiConfig>,
    /// Requests waiting for their task to finish (`GET /v1/tasks/{id}?wait=`).
    pub waits: wait::Waits,
    /// The group commit of single submits.
    pub submits: transitions::group::GroupCommit,
}

impl AppState {
    /// State with default limits.
    pub fn new(broker: Broker, store: Store) -> Self {
        let metrics = Metrics::new();
        Self {
            waits: wait::Waits::new(broker.clone(), metrics.clone()),
            broker,
            store,
            limits: Arc::new(Limits::default()),
            max_batch: 1000,
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            draining: Arc::new(AtomicBool::new(false)),
            indexes_ready: Arc::new(AtomicBool::new(true)),
            metrics,
            tokens: None,
            idempotency_ttl: Duration::from_secs(86_400),
            max_concurrent_requests: 1024,
            body: BodyLimits::default(),
            connections: ConnectionLimits::default(),
            health: health::Health::default(),
            ui: Arc::default(),
            submits: transitions::group::GroupCommit::default(),
        }
    }
}

/// Every route, registered together with its OpenAPI operation (the handler's
/// `#[utoipa::path]`), in groups by what guards them. [`app`] adds the guards;
/// [`openapi`] takes the operations, so the document lists exactly what is served.
pub(crate) struct Routes {
    /// Submits: a `submit` token; both stores; abandoned when a store goes down.
    pub submits: OpenApiRouter<AppState>,
    /// Reads of records: a `submit` token; MongoDB.
    pub reads: OpenApiRouter<AppState>,
    /// Everything else under `/v1`: an `admin` token; both stores.
    pub admin: OpenApiRouter<AppState>,
    /// Probes, metrics and the document: no token, no store.
    pub open: OpenApiRouter<AppState>,
}

pub(crate) fn routes() -> Routes {
    Routes {
        submits: OpenApiRouter::new()
            .routes(routes!(tasks::submit))
            .routes(routes!(tasks::submit_batch))
            .routes(routes!(flows::submit)),
        reads: OpenApiRouter::new()
            .routes(routes!(tasks::list))
            .routes(routes!(tasks::get))
            .routes(routes!(flows::get)),
        admin: OpenApiRouter::new()
            .routes(routes!(tasks::retry))
            .routes(routes!(tasks::cancel))
            .routes(routes!(tasks::delete))
            .routes(routes!(flows::cancel))
            .routes(routes!(flows::retry))
            .routes(routes!(queues::list))
            .routes(routes!(queues::get))
            .routes(routes!(queues::pause))
            .routes(routes!(queues::resume))
            .routes(routes!(queues::set_limits))
            .routes(routes!(queues::retry_dead))
            .routes(routes!(queues::purge_dead))
            .routes(routes!(queues::recover)),
        open: OpenApiRouter::new()
            .routes(routes!(observe::livez))
            .routes(routes!(observe::readyz))
            .routes(routes!(observe::metrics))
            .routes(routes!(openapi::document)),
    }
}

/// The api's router.
pub fn app(state: AppState) -> Router {
    let timeout = state.request_timeout;
    let guard = |needs| auth::Guard {
        tokens: state.tokens.clone(),
        needs,
    };
    let needs =
        |needs| axum::middleware::from_fn_with_state((state.health.clone(), needs), health::guard);
    let Routes {
        submits,
        reads,
        admin,
        open,
    } = routes();
    let submitter = || axum::middleware::from_fn_with_state(guard(Role::Submit), auth::require);
    let submits = submits
        .route_layer(needs(Needs::SUBMIT))
        .route_layer(submitter());
    let reads = reads
        .route_layer(needs(Needs::RECORDS))
        .route_layer(submitter());
    let admin =
        admin
            .route_layer(needs(Needs::BOTH))
            .route_layer(axum::middleware::from_fn_with_state(
                guard(Role::Admin),
                auth::require,
            ));
    let (router, _) = submits
        .merge(reads)
        .merge(admin)
        .merge(open)
        .split_for_parts();
    // The dashboard: HTML, not part of the api's OpenAPI document.
    router
        .merge(ui::router(&state))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    observe::track,
                ))
                // Outside the concurrency limit: a slow body holds no slot.
                .layer(axum::middleware::from_fn_with_state(
                    BodyLimits {
                        max_bytes: state.max_body_bytes,
                        ..state.body
                    },
                    body::buffer,
                ))
                // A request slot and the request timeout (lengthened by a read's `wait`).
                .layer(axum::middleware::from_fn_with_state(
                    limit::RequestLimits::new(timeout, state.max_concurrent_requests),
                    limit::limit,
                )),
        )
        .with_state(state)
}

/// Connects, creates indexes, serves until SIGTERM or SIGINT, then drains.
pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let limits = args.limits().map_err(anyhow::Error::msg)?;
    let tokens = args.tokens().map_err(anyhow::Error::msg)?;
    let schedules = args.periodic(&limits).map_err(anyhow::Error::msg)?;
    let retention = args.retention().map_err(anyhow::Error::msg)?;
    let ui = ui::UiConfig::new(&args.ui, schedules.clone()).map_err(anyhow::Error::msg)?;
    if tokens.is_none() {
        tracing::warn!(
            "authentication is off (TASKQ_AUTH=off): anyone who reaches the api can use it"
        );
    }
    let broker = Broker::connect(&args.redis.config())
        .await
        .context("connecting to redis")?;
    let store = args
        .mongodb
        .connect()
        .await
        .context("connecting to mongodb")?;
    // Probes answer at once; readiness waits for the indexes.
    let indexes_ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(taskq_store::ensure_indexes_with_retry(
        store.clone(),
        Some(retention),
        indexes_ready.clone(),
    ));
    let state = AppState {
        limits: Arc::new(limits),
        max_batch: args.max_batch,
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        indexes_ready,
        tokens: tokens.map(Arc::new),
        idempotency_ttl: Duration::from_secs(args.idempotency_ttl_seconds.max(1)),
        max_concurrent_requests: args.max_concurrent_requests.max(1),
        body: BodyLimits {
            max_bytes: args.max_body_bytes,
            read_timeout: Duration::from_millis(args.body_read_timeout_ms),
            min_bytes_per_second: args.body_min_bytes_per_second.max(1),
        },
        connections: ConnectionLimits {
            max_connections: args.max_connections.max(1),
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(args.idle_timeout_ms.max(1)),
        },
        ui: Arc::new(ui),
        ..AppState::new(broker, store)
    };
    let probes = CancellationToken::new();
    let probing = tokio::spawn(health::probe(
        state.health.clone(),
        state.broker.clone(),
        state.store.clone(),
        state.metrics.clone(),
        health::ProbeSettings {
            interval: Duration::from_millis(args.store_probe_interval_ms.max(10)),
            timeout: Duration::from_millis(args.store_probe_timeout_ms.max(10)),
        },
        probes.clone(),
    ));
    let draining = state.draining.clone();
    let waits = state.waits.clone();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %args.listen, "api listening");
    let shutdown = CancellationToken::new();
    taskq_telemetry::cancel_on_signals(shutdown.clone());
    if !schedules.is_empty() {
        let names: Vec<&str> = schedules.iter().map(Schedule::name).collect();
        tracing::info!(schedules = ?names, "running periodic schedules");
    }
    // Stops with the same token; ticks being submitted finish, none starts after it.
    let periodic = spawn_periodic(state.clone(), schedules, shutdown.clone());
    let connections = state.connections;
    serve(listener, app(state), connections, async move {
        shutdown.cancelled().await;
        draining.store(true, Ordering::Relaxed);
        waits.drain();
        tracing::info!("draining in-flight requests");
    })
    .await
    .context("serving")?;
    probes.cancel();
    let _ = probing.await;
    if let Err(e) = periodic.await {
        tracing::error!(error = %e, "the periodic scheduler failed");
    }
    tracing::info!("api stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(env: &[&str]) -> ApiArgs {
        let mut argv = vec!["taskq-api"];
        argv.extend_from_slice(env);
        ApiArgs::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_payload_limit_must_leave_the_record_room_in_a_mongodb_document() {
        let limit = MAX_PAYLOAD_BYTES_LIMIT.to_string();
        let over = (MAX_PAYLOAD_BYTES_LIMIT + 1).to_string();
        let big_body = ["--max-body-bytes", "33554432"];
        let max = args(&[&big_body[..], &["--max-payload-bytes", &limit]].concat()).limits();
        assert_eq!(
            max.map(|l| l.max_payload_bytes),
            Ok(MAX_PAYLOAD_BYTES_LIMIT)
        );
        for bad in [
            args(&[&big_body[..], &["--max-payload-bytes", &over]].concat()),
            args(&["--max-payload-bytes", "0"]),
            args(&["--max-body-bytes", "1000", "--max-payload-bytes", "1001"]),
        ] {
            let e = bad.limits().map(|_| ());
            assert!(
                e.as_ref().is_err_and(|e| e.contains(
                    "TASKQ_MAX_PAYLOAD_BYTES must be 1 to 7340032 (7 MiB) and at most TASKQ_MAX_BODY_BYTES"
                )),
                "{e:?}"
            );
        }
    }

    #[test]
    fn retention_must_outlive_idempotency_keys() {
        let week = Duration::from_secs(604_800);
        assert_eq!(args(&[]).retention(), Ok(taskq_store::Retention::For(week)));
        assert_eq!(
            args(&["--retention-seconds", "0"]).retention(),
            Ok(taskq_store::Retention::Forever)
        );
        let short = args(&["--retention-seconds", "3600"]).retention();
        assert!(
            short
                .as_ref()
                .is_err_and(|e| e.contains("at least TASKQ_IDEMPOTENCY_TTL_SECONDS (86400)")),
            "{short:?}"
        );
        assert_eq!(
            args(&[
                "--retention-seconds",
                "3600",
                "--idempotency-ttl-seconds",
                "600"
            ])
            .retention(),
            Ok(taskq_store::Retention::For(Duration::from_secs(3600)))
        );
    }
}
