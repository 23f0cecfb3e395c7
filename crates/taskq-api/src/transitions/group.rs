//! Group commit of single submits: concurrent `POST /v1/tasks` without an idempotency
//! key (and periodic ticks) share one MongoDB insert and one Redis enqueue per queue.
//!
//! A submit joins the open group and waits for its own answer. Up to [`FLUSHES`] groups
//! are written at once; a submit that arrives while that many are in flight waits in
//! the open group, which the first flush to finish writes next. Nothing waits for a
//! group to fill: at a low rate every submit is written at once, alone. Each group is
//! written in a task of its own, so a request that times out or whose client goes away
//! cannot stop a group between the stores.
//!
//! Per submit, a single submit's guarantees hold:
//! - it is answered `201` only once its own record is in MongoDB and its own task in
//!   Redis ([`super::submit`]'s two steps, run for the group);
//! - a submit whose request was given up (its answer can no longer be sent) before its
//!   group's insert is not written; one given up between its group's insert and enqueue
//!   is left out of the enqueue and its record removed (once the insert returned: until
//!   then the record may show, as a failed single submit's may): like a single submit
//!   that failed, it never runs;
//! - when the group's insert fails for anything but an unreachable MongoDB, the group's
//!   submits are written again one by one, so a record the server refuses fails only its
//!   own submit. An unreachable MongoDB, or a failed enqueue (undone as for a single
//!   submit), fails the whole group with that error.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use taskq_core::TaskRecord;
use tokio::sync::oneshot;

use super::submit::{self, PersistError};
use crate::AppState;
use crate::error::ApiError;

/// Most groups written at once.
const FLUSHES: usize = 4;
/// Most submits in one group (one `insert_many`).
const MAX_GROUP: usize = 1_000;

/// One submit waiting in a group: its record and where its answer goes.
struct Waiting {
    rec: TaskRecord,
    answer: oneshot::Sender<Result<(), PersistError>>,
}

#[derive(Default)]
struct Inner {
    open: Vec<Waiting>,
    flushing: usize,
}

/// The api's group commit of single submits (see the module documentation).
#[derive(Clone, Default)]
pub struct GroupCommit(Arc<Mutex<Inner>>);

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Writes `rec` to both stores with the submits around it; returns once it is in
    /// both (or failed).
    pub(crate) async fn submit(
        &self,
        state: &AppState,
        rec: TaskRecord,
    ) -> Result<(), PersistError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut inner = self.lock();
            inner.open.push(Waiting { rec, answer });
            if inner.flushing < FLUSHES {
                inner.flushing += 1;
                Some(take_group(&mut inner))
            } else {
                None
            }
        };
        if let Some(group) = start {
            let this = self.clone();
            let state = state.clone();
            tokio::spawn(async move { this.flush_from(&state, group).await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(PersistError::Api(ApiError::internal(
                &"a submit group ended without an answer",
            )))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock was held cannot leave `Inner` half-changed (each change
        // is one push or one swap), so a poisoned lock is still good.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `group`, then every group that opened meanwhile, until none is left.
    async fn flush_from(&self, state: &AppState, mut group: Vec<Waiting>) {
        loop {
            write(state, group).await;
            let mut inner = self.lock();
            if inner.open.is_empty() {
                inner.flushing -= 1;
                return;
            }
            group = take_group(&mut inner);
        }
    }
}

/// The open group's first [`MAX_GROUP`] submits.
fn take_group(inner: &mut Inner) -> Vec<Waiting> {
    let n = inner.open.len().min(MAX_GROUP);
    inner.open.drain(..n).collect()
}

/// Writes one group and answers each of its submits.
async fn write(state: &AppState, mut group: Vec<Waiting>) {
    // Submits given up while they waited for their group are not written at all.
    group.retain(|w| !w.answer.is_closed());
    if group.is_empty() {
        return;
    }
    state.metrics.submit_group_size.observe(group.len() as f64);
    let recs: Vec<TaskRecord> = group.iter().map(|w| w.rec.clone()).collect();
    match submit::insert(state, &recs).await {
        Ok(()) => {}
        Err(PersistError::Api(e))
            if group.len() > 1 && e.status != StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::warn!(error = %e.message, submits = group.len(), "a grouped insert failed; writing its submits one by one");
            let each = group.into_iter().map(|w| async move {
                let result = submit::insert(state, std::slice::from_ref(&w.rec)).await;
                finish(state, vec![w], result).await;
            });
            futures::future::join_all(each).await;
            return;
        }
        Err(e) => {
            answer_all(group, &e);
            return;
        }
    }
    finish(state, group, Ok(())).await;
}

/// After the insert of `group`: the submits still waiting are enqueued, the records of
/// those given up are removed, and every submit is answered.
async fn finish(state: &AppState, group: Vec<Waiting>, inserted: Result<(), PersistError>) {
    if let Err(e) = inserted {
        answer_all(group, &e);
        return;
    }
    let (waiting, given_up): (Vec<Waiting>, Vec<Waiting>) =
        group.into_iter().partition(|w| !w.answer.is_closed());
    if !given_up.is_empty() {
        let recs: Vec<TaskRecord> = given_up.into_iter().map(|w| w.rec).collect();
        tracing::info!(
            submits = recs.len(),
            "submits given up before their enqueue; removing their records"
        );
        if let Err(e) = submit::unsubmit(state, &recs).await {
            tracing::warn!(error = %e, count = recs.len(), "could not remove the records of given-up submits; the submit check cancels them");
        }
    }
    let recs: Vec<TaskRecord> = waiting.iter().map(|w| w.rec.clone()).collect();
    match submit::enqueue(state, &recs).await {
        Ok(()) => {
            for w in waiting {
                let _ = w.answer.send(Ok(()));
            }
        }
        Err(e) => answer_all(waiting, &e),
    }
}

fn answer_all(group: Vec<Waiting>, error: &PersistError) {
    for w in group {
        let _ = w.answer.send(Err(error.clone()));
    }
}
