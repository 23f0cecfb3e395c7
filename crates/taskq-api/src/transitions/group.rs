//! Group commit of single submits: submits that arrive while earlier ones are being
//! written share one MongoDB `insert_many` and one enqueue script call per queue.
//!
//! - Each request is still answered only after its own task is durable in both stores
//!   ([`super::submit::persist`]'s write order and undo apply to every group).
//! - Nothing waits for a group to fill: a flush takes whatever is waiting when a flush
//!   slot is free, so at low rates a submit is written alone, at once; under load
//!   requests gather while up to [`MAX_FLUSHES`] flushes are in flight.
//! - A group is split by queue, each queue flushed on its own, so a failure of one
//!   queue's Redis script fails only that queue's submits. Within a queue a failure fails
//!   the group's submits of that queue together, as it would each of them alone (an
//!   outage), and undoes all of them.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use taskq_core::{QueueName, TaskRecord};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::submit::{PersistError, persist};
use crate::AppState;
use crate::error::{ApiError, ErrorCode};

/// Flushes in flight at once.
pub const MAX_FLUSHES: usize = 4;
/// Most submits in one flush.
pub const MAX_GROUP: usize = 512;

struct Pending {
    rec: TaskRecord,
    done: oneshot::Sender<Result<(), ApiError>>,
}

/// The group committer of one api; started by the first submit. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct GroupCommit {
    queue: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("task", &self.rec.id)
            .finish()
    }
}

impl GroupCommit {
    /// Writes `rec` with the other submits waiting; returns once it is durable in both
    /// stores, or with the error that kept it out (then nothing of it is kept).
    pub(crate) async fn submit(&self, state: &AppState, rec: TaskRecord) -> Result<(), ApiError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(state.clone(), rx));
            tx
        });
        let (done, answer) = oneshot::channel();
        queue.send(Pending { rec, done }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        "the api is shutting down; retry",
    )
}

/// Takes waiting submits into groups and flushes each on its own task.
async fn run(state: AppState, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_FLUSHES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let state = state.clone();
        tokio::spawn(async move {
            flush(&state, group).await;
            drop(slot);
        });
    }
}

async fn flush(state: &AppState, group: Vec<Pending>) {
    let mut by_queue: BTreeMap<QueueName, Vec<Pending>> = BTreeMap::new();
    for p in group {
        by_queue.entry(p.rec.queue.clone()).or_default().push(p);
    }
    futures::future::join_all(by_queue.into_values().map(|pending| async move {
        let recs: Vec<TaskRecord> = pending.iter().map(|p| p.rec.clone()).collect();
        let result = persist(state, &recs).await;
        for p in pending {
            // A requester that went away (a timeout) no longer listens.
            let _ = p.done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(copy(e)),
            });
        }
    }))
    .await;
}

/// One requester's copy of a group's error.
fn copy(e: &PersistError) -> ApiError {
    match e {
        PersistError::Duplicate => ApiError::internal(&"a fresh task id was taken"),
        PersistError::Api(e) => ApiError::new(e.status, e.code, e.message.clone()),
    }
}
