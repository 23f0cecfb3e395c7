//! Requests that wait for their task to finish: `GET /v1/tasks/{id}?wait=30s`.
//!
//! No waiter polls MongoDB. Whoever writes a task's final status (the workers' outbox
//! writers, the cancel transition) publishes its id on Redis afterwards
//! ([`taskq_redis::keys::FINISHED`]); each api process holds ONE subscription to that
//! channel, started with its first waiter, and [`Waits`] maps task ids to the requests
//! waiting for them. A wake-up makes the waiter read the record once more.
//!
//! Invariants:
//! - A waiter registers before it reads the record, so a finish published between the
//!   read and the wait is not missed (the wake-up is kept in its `watch` receiver).
//! - Every (re)subscription wakes every waiter once: while the subscription was down,
//!   finishes may have been published unheard.
//! - A waiter's entry leaves the map when its request ends, however it ends (answered,
//!   timed out, the client gone: the handler's future is dropped with its [`Waiter`]).
//! - When the api drains, every waiter is woken and answers with the record as it stands.
//! - A waiter holds no request slot while it waits: it gives its slot back before it
//!   parks and takes one again to read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::Duration;

use serde::Deserialize;
use taskq_core::{TaskId, TaskRecord};
use taskq_redis::{Broker, Finished, FinishedSubscription};
use taskq_telemetry::metrics::Metrics;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::limit::Slot;

/// The requests of this process waiting for tasks to finish. Cheap to clone.
#[derive(Clone)]
pub struct Waits {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    metrics: Arc<Metrics>,
    waiters: Mutex<HashMap<TaskId, Entry>>,
    /// Wakes everyone and keeps new waiters from waiting (set when the api drains).
    draining: CancellationToken,
    subscriber: Once,
    /// Stops the subscriber when the last handle is dropped.
    stop: CancellationToken,
}

/// The waiters of one task: a wake-up is a new value in `tx`.
struct Entry {
    tx: watch::Sender<()>,
    count: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Waits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waits")
            .field("tasks", &self.inner.lock().len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    // A std mutex: held for map updates only, never across an await.
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Entry>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self, ids: &[TaskId]) {
        let waiters = self.lock();
        for id in ids {
            if let Some(e) = waiters.get(id) {
                e.tx.send_replace(());
            }
        }
    }

    fn wake_all(&self) {
        for e in self.lock().values() {
            e.tx.send_replace(());
        }
    }
}

impl Waits {
    /// Waits whose subscription (on `broker`) starts with the first waiter.
    pub fn new(broker: Broker, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                metrics,
                waiters: Mutex::default(),
                draining: CancellationToken::new(),
                subscriber: Once::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Wakes every waiter to answer now; later ones do not wait. Called when the api
    /// begins to drain, so waiting requests do not hold the shutdown up.
    pub fn drain(&self) {
        self.inner.draining.cancel();
        self.inner.wake_all();
    }

    /// Tasks with at least one waiter.
    pub fn tasks(&self) -> usize {
        self.inner.lock().len()
    }

    /// Registers a waiter for `id` (starting the subscription if this is the first).
    fn register(&self, id: TaskId) -> Waiter {
        self.inner.subscriber.call_once(|| {
            let sub = self.inner.broker.finished_subscription();
            tokio::spawn(listen(
                Arc::downgrade(&self.inner),
                sub,
                self.inner.stop.clone(),
            ));
        });
        let mut waiters = self.inner.lock();
        let entry = waiters.entry(id).or_insert_with(|| Entry {
            tx: watch::Sender::new(()),
            count: 0,
        });
        entry.count += 1;
        self.inner.metrics.api_waiting.inc();
        Waiter {
            id,
            rx: entry.tx.subscribe(),
            inner: self.inner.clone(),
        }
    }
}

/// One waiting request; leaves the map when dropped.
struct Waiter {
    id: TaskId,
    rx: watch::Receiver<()>,
    inner: Arc<Inner>,
}

impl Waiter {
    /// Resolves on the next wake-up after the last one seen (or after registration).
    async fn woken(&mut self) {
        // The sender lives as long as this waiter's entry: an error cannot happen, and
        // would only mean "read again".
        let _ = self.rx.changed().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.inner.metrics.api_waiting.dec();
        let mut waiters = self.inner.lock();
        if let Some(e) = waiters.get_mut(&self.id) {
            e.count -= 1;
            if e.count == 0 {
                waiters.remove(&self.id);
            }
        }
    }
}

/// The subscription's loop: wakes the waiters of each finished task, and everyone after
/// each (re)subscription.
async fn listen(inner: Weak<Inner>, mut sub: FinishedSubscription, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = sub.next() => event,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match event {
            Finished::Subscribed => {
                tracing::info!("subscribed to finished tasks");
                inner.wake_all();
            }
            Finished::Tasks(ids) => inner.wake(&ids),
        }
    }
}

/// The query of `GET /v1/tasks/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Wait up to this long for the task to finish (`succeeded`, `dead` or `cancelled`)
    /// before answering: whole seconds (`30`) or a duration (`30s`, `1500ms`), at most
    /// 60 s. The answer is the record as soon as the task finishes, or at the deadline
    /// as it stands then; its `status` says which. Without it the record is answered at
    /// once.
    #[param(value_type = Option<String>, example = "30s")]
    pub wait: Option<String>,
}

impl GetQuery {
    /// The requested wait, checked (`invalid_query` when malformed or too long).
    pub fn wait(&self) -> Result<Option<Duration>, ApiError> {
        self.wait
            .as_deref()
            .map(|w| {
                taskq_core::wait::parse_wait(w)
                    .map_err(|e| ApiError::bad_request(ErrorCode::InvalidQuery, e))
            })
            .transpose()
    }
}

/// The record of `id`, once it is final, the api drains, or `wait` has passed. While it
/// waits, the request gives its `slot` back (a waiter costs no request slot).
pub(crate) async fn record(
    state: &AppState,
    id: TaskId,
    wait: Duration,
    slot: Option<&Slot>,
) -> Result<TaskRecord, ApiError> {
    let deadline = Instant::now() + wait;
    // Registered before the first read: see the module documentation.
    let mut waiter = (!wait.is_zero()).then(|| state.waits.register(id));
    loop {
        if waiter.is_some() {
            state.metrics.api_wait_reads.inc();
        }
        let Some(stored) = state.store.get(id).await? else {
            return Err(ApiError::not_found(format!("no task {id}")));
        };
        let rec = stored.record;
        let Some(w) = waiter.as_mut() else {
            return Ok(rec);
        };
        if rec.status.is_final() || state.waits.inner.draining.is_cancelled() {
            return Ok(rec);
        }
        if let Some(s) = slot {
            s.release();
        }
        tokio::select! {
            () = w.woken() => {}
            () = tokio::time::sleep_until(deadline) => {
                // Answer with the state at the deadline: one more read, no more waiting.
                state.metrics.api_wait_reads.inc();
                waiter = None;
            }
        }
        if let Some(s) = slot {
            s.reacquire().await;
        }
    }
}

/// Tells this process's and every other api's waiters that `id` finished (its record
/// says so already). A failure only delays those answers to their deadline.
pub(crate) async fn publish(state: &AppState, id: TaskId) {
    if let Err(e) = state.broker.publish_finished(&[id]).await {
        tracing::warn!(error = %e, task = %id, "publishing a finished task failed; its waiters answer at their deadline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn waits() -> Waits {
        let config = taskq_redis::RedisConfig::from_urls("redis://127.0.0.1:1", false);
        // Lazy: nothing connects until a command is sent.
        Waits::new(
            Broker::connect(&config).await.expect("broker"),
            Metrics::new(),
        )
    }

    #[tokio::test]
    async fn waiters_wake_once_per_finish_and_leave_when_dropped() {
        let waits = waits().await;
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut first = waits.register(a);
        let mut second = waits.register(a);
        let mut other = waits.register(b);
        assert_eq!(waits.tasks(), 2);
        // A finish between registration and the wait is kept.
        waits.inner.wake(&[a]);
        let soon = Duration::from_secs(5);
        assert!(tokio::time::timeout(soon, first.woken()).await.is_ok());
        assert!(tokio::time::timeout(soon, second.woken()).await.is_ok());
        let quiet = Duration::from_millis(50);
        assert!(tokio::time::timeout(quiet, other.woken()).await.is_err());
        assert!(tokio::time::timeout(quiet, first.woken()).await.is_err());
        drop(first);
        assert_eq!(waits.tasks(), 2, "a's second waiter remains");
        drop(second);
        assert_eq!(waits.tasks(), 1);
        waits.drain();
        assert!(tokio::time::timeout(soon, other.woken()).await.is_ok());
        drop(other);
        assert_eq!(waits.tasks(), 0);
    }
}
