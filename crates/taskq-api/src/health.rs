//! Whether Redis and MongoDB answer: one circuit per store, kept by a background probe,
//! so that during an outage a request is refused at once (`503` with `Retry-After`)
//! instead of each one waiting out its own connection or server-selection timeout.
//!
//! - A circuit opens after [`FAILURES_TO_OPEN`] probes in a row failed or did not answer
//!   within the probe timeout, and closes on the first probe that succeeds. One slow
//!   answer under load therefore never refuses traffic.
//! - Probes run every `interval` while the store is up, and four times as often while it
//!   is down, so recovery is noticed within a fraction of the interval.
//! - Each probe's time is exported (`taskq_api_store_probe_seconds`), with the circuit's
//!   state (`taskq_api_store_up`), so how close a store comes to the timeout is visible
//!   before a circuit opens.
//! - [`guard`] refuses requests while a store they need is down and, for requests that
//!   may be dropped safely (submits, see `transitions::submit`), answers them shortly
//!   ([`ABANDON_GRACE`]) after a store they wait on goes down. `/readyz` reports the same state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use taskq_redis::Broker;
use taskq_store::Store;
use taskq_telemetry::metrics::{Metrics, StoreLabels};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ErrorCode};

/// Consecutive failed probes that open a circuit.
pub const FAILURES_TO_OPEN: u32 = 2;

/// Seconds a refused client is asked to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// A backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Redis,
    Mongodb,
}

impl StoreKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Mongodb => "mongodb",
        }
    }
}

/// Which stores a route needs.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    pub redis: bool,
    pub mongodb: bool,
    /// Whether the request may be dropped when a store it needs goes down mid-way.
    pub abandon_on_outage: bool,
}

impl Needs {
    /// Reads of records: MongoDB only.
    pub const RECORDS: Needs = Needs {
        redis: false,
        mongodb: true,
        abandon_on_outage: false,
    };
    /// Writes that touch both stores and must run to the end (their undo included).
    pub const BOTH: Needs = Needs {
        redis: true,
        mongodb: true,
        abandon_on_outage: false,
    };
    /// Submits: both stores; dropping one mid-way is safe (the submit check settles
    /// the record).
    pub const SUBMIT: Needs = Needs {
        redis: true,
        mongodb: true,
        abandon_on_outage: true,
    };
}

/// The circuits of both stores. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Health {
    redis_up: Arc<AtomicBool>,
    mongodb_up: Arc<AtomicBool>,
    /// Bumped each time a circuit opens, so waiting requests notice.
    opened: watch::Sender<u64>,
}

impl Default for Health {
    /// Both circuits closed (stores assumed up until a probe says otherwise).
    fn default() -> Self {
        Self {
            redis_up: Arc::new(AtomicBool::new(true)),
            mongodb_up: Arc::new(AtomicBool::new(true)),
            opened: watch::channel(0).0,
        }
    }
}

impl Health {
    fn flag(&self, store: StoreKind) -> &AtomicBool {
        match store {
            StoreKind::Redis => &self.redis_up,
            StoreKind::Mongodb => &self.mongodb_up,
        }
    }

    /// Whether `store`'s circuit is closed.
    pub fn is_up(&self, store: StoreKind) -> bool {
        self.flag(store).load(Ordering::Acquire)
    }

    /// The first store of `needs` whose circuit is open.
    pub fn down(&self, needs: Needs) -> Option<StoreKind> {
        [
            (needs.redis, StoreKind::Redis),
            (needs.mongodb, StoreKind::Mongodb),
        ]
        .into_iter()
        .find(|&(needed, store)| needed && !self.is_up(store))
        .map(|(_, store)| store)
    }

    /// Records a probe's verdict (`Err` with why the last probe failed); logs and wakes
    /// waiters when the circuit changes.
    fn set(&self, store: StoreKind, verdict: Result<(), &str>) {
        let up = verdict.is_ok();
        if self.flag(store).swap(up, Ordering::AcqRel) != up {
            match verdict {
                Ok(()) => tracing::info!(
                    store = store.as_str(),
                    "store reachable again; circuit closed"
                ),
                Err(why) => {
                    tracing::warn!(
                        store = store.as_str(),
                        last_probe = why,
                        "store unreachable; circuit open: requests that need it are refused until a probe succeeds"
                    );
                    self.opened.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Resolves when a store of `needs` goes down (or at once if one is down).
    async fn wait_down(&self, needs: Needs) -> StoreKind {
        let mut rx = self.opened.subscribe();
        loop {
            if let Some(store) = self.down(needs) {
                return store;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// How the probe runs.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    /// Pause between probes while the store is up (a quarter of it while down).
    pub interval: Duration,
    /// How long a probe may take before it counts as failed.
    pub timeout: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(1_000),
        }
    }
}

/// Probes both stores until `stop`, updating `health` and the probe metrics.
pub async fn probe(
    health: Health,
    broker: Broker,
    store: Store,
    metrics: Arc<Metrics>,
    settings: ProbeSettings,
    stop: CancellationToken,
) {
    let probes = Probes {
        health,
        metrics,
        settings,
        stop,
    };
    let redis = probes.clone().run(StoreKind::Redis, move || {
        let broker = broker.clone();
        async move { broker.ping().await.map_err(|e| e.to_string()) }
    });
    let mongodb = probes.run(StoreKind::Mongodb, move || {
        let store = store.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }
    });
    tokio::join!(redis, mongodb);
}

/// What one store's probe loop updates and how it runs.
#[derive(Clone)]
struct Probes {
    health: Health,
    metrics: Arc<Metrics>,
    settings: ProbeSettings,
    stop: CancellationToken,
}

impl Probes {
    async fn run<F, Fut>(self, kind: StoreKind, ping: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let Self {
            health,
            metrics,
            settings,
            stop,
        } = self;
        let labels = StoreLabels {
            store: kind.as_str(),
        };
        let mut failures = 0u32;
        loop {
            let started = std::time::Instant::now();
            let verdict = match tokio::time::timeout(settings.timeout, ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    settings.timeout.as_millis()
                )),
            };
            metrics
                .store_probe
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            match &verdict {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(store = kind.as_str(), error = %e, failures, "probe failed");
                }
            }
            if verdict.is_ok() || failures >= FAILURES_TO_OPEN {
                health.set(kind, verdict.as_ref().copied().map_err(String::as_str));
            }
            metrics
                .store_up
                .get_or_create(&labels)
                .set(i64::from(health.is_up(kind)));
            let pause = if health.is_up(kind) {
                settings.interval
            } else {
                settings.interval / 4
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The answer to a request refused because `store` is down.
pub fn refused(store: StoreKind) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        format!("{} is unreachable; retry later", store.as_str()),
    )
}

/// Adds `Retry-After` to a `503`.
pub fn with_retry_after(mut resp: Response) -> Response {
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    resp
}

/// Middleware: refuses the request at once while a store it needs is down and, when
/// the route allows it, abandons it as soon as one goes down mid-way.
pub async fn guard(
    State((health, needs)): State<(Health, Needs)>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(store) = health.down(needs) {
        return refused(store).into_response();
    }
    if !needs.abandon_on_outage {
        return next.run(req).await;
    }
    let run = next.run(req);
    tokio::pin!(run);
    tokio::select! {
        resp = &mut run => resp,
        store = health.wait_down(needs) => {
            // A request that is failing on its own (a refused connection) gets a moment
            // to finish its undo; one that waits on a silent store is abandoned.
            match tokio::time::timeout(ABANDON_GRACE, &mut run).await {
                Ok(resp) => resp,
                Err(_) => refused(store).into_response(),
            }
        }
    }
}

/// How long a request that may be abandoned still runs after a store it needs went down.
pub const ABANDON_GRACE: Duration = Duration::from_millis(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circuit_opens_and_closes_per_store() {
        let h = Health::default();
        assert_eq!(h.down(Needs::BOTH), None);
        h.set(StoreKind::Mongodb, Err("down"));
        assert_eq!(h.down(Needs::BOTH), Some(StoreKind::Mongodb));
        assert_eq!(h.down(Needs::RECORDS), Some(StoreKind::Mongodb));
        h.set(StoreKind::Mongodb, Ok(()));
        h.set(StoreKind::Redis, Err("down"));
        assert_eq!(h.down(Needs::RECORDS), None, "reads need MongoDB only");
        assert_eq!(h.down(Needs::SUBMIT), Some(StoreKind::Redis));
    }

    #[tokio::test]
    async fn waiters_wake_when_a_circuit_opens() {
        let h = Health::default();
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.wait_down(Needs::SUBMIT).await }
        });
        tokio::task::yield_now().await;
        h.set(StoreKind::Redis, Err("down"));
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(
            matches!(woke, Ok(Ok(StoreKind::Redis))),
            "the waiter did not wake: {woke:?}"
        );
    }

    #[tokio::test]
    async fn two_failed_probes_open_and_one_success_closes() {
        let h = Health::default();
        let stop = CancellationToken::new();
        let up = Arc::new(AtomicBool::new(true));
        let settings = ProbeSettings {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
        };
        let metrics = Metrics::new();
        let probes = Probes {
            health: h.clone(),
            metrics: metrics.clone(),
            settings,
            stop: stop.clone(),
        };
        let task = tokio::spawn(probes.run(StoreKind::Redis, {
            let up = up.clone();
            move || {
                let up = up.load(Ordering::Acquire);
                async move { if up { Ok(()) } else { Err("down".to_owned()) } }
            }
        }));
        up.store(false, Ordering::Release);
        let opened = tokio::time::timeout(Duration::from_secs(5), h.wait_down(Needs::BOTH)).await;
        assert!(opened.is_ok(), "the circuit never opened");
        let exported = metrics.encode();
        assert!(
            exported.contains("taskq_api_store_up{store=\"redis\"} 0"),
            "the open circuit is not exported: {exported}"
        );
        assert!(
            exported.contains("taskq_api_store_probe_seconds_count{store=\"redis\"}"),
            "the probes' times are not exported: {exported}"
        );
        up.store(true, Ordering::Release);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while !h.is_up(StoreKind::Redis) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok();
        assert!(closed, "the circuit never closed");
        let closed_exported = tokio::time::timeout(Duration::from_secs(5), async {
            while !metrics
                .encode()
                .contains("taskq_api_store_up{store=\"redis\"} 1")
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok();
        assert!(closed_exported, "the closed circuit is not exported");
        stop.cancel();
        assert!(task.await.is_ok());
    }
}
