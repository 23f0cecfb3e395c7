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
//!   then the record may show, as a failed single submit's may); one given up while its
//!   enqueue ran is taken back out of Redis, then its record removed, as a failed
//!   enqueue is: like a single submit that failed, it never runs unless a worker took
//!   it first;
//! - when the group's insert fails before MongoDB is reached (a record that cannot be
//!   encoded), the group's submits are written again one by one, so that record fails
//!   only its own submit. Any error of MongoDB's (unreachable, timed out, or refusing a
//!   record), or a failed enqueue (undone as for a single submit), fails the whole group
//!   with that error (`503`: the submits may be sent again).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use futures::FutureExt;
use taskq_core::TaskRecord;
use taskq_telemetry::metrics::StageLabels;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::submit::{self, PersistError};
use crate::AppState;
use crate::error::ApiError;

/// Most groups written at once.
const FLUSHES: usize = 4;
/// Most submits in one group (one `insert_many`).
const MAX_GROUP: usize = 1_000;

/// Where a submit's answer goes: its record back, once it is in both stores.
type Answer = oneshot::Sender<Result<TaskRecord, PersistError>>;

/// Submits, each record beside its answer (kept apart so the records are written from
/// one slice, never copied).
#[derive(Default)]
struct Group {
    recs: Vec<TaskRecord>,
    answers: Vec<Answer>,
}

impl Group {
    fn one(rec: TaskRecord, answer: Answer) -> Self {
        Self {
            recs: vec![rec],
            answers: vec![answer],
        }
    }

    fn len(&self) -> usize {
        self.recs.len()
    }

    /// Splits off the submits whose request was given up (their answer can no longer be
    /// delivered): (still waiting, given up).
    fn split_given_up(self) -> (Group, Group) {
        let (mut waiting, mut given_up) = (Group::default(), Group::default());
        for (rec, answer) in self.recs.into_iter().zip(self.answers) {
            let to = if answer.is_closed() {
                &mut given_up
            } else {
                &mut waiting
            };
            to.recs.push(rec);
            to.answers.push(answer);
        }
        (waiting, given_up)
    }

    fn answer_ok(self) {
        for (rec, answer) in self.recs.into_iter().zip(self.answers) {
            let _ = answer.send(Ok(rec));
        }
    }

    fn answer_err(self, error: &PersistError) {
        for answer in self.answers {
            let _ = answer.send(Err(error.clone()));
        }
    }
}

#[derive(Default)]
struct Inner {
    open: Group,
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
    /// Writes `rec` to both stores with the submits around it; returns the record once it
    /// is in both (or the error).
    pub(crate) async fn submit(
        &self,
        state: &AppState,
        rec: TaskRecord,
    ) -> Result<TaskRecord, PersistError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut inner = self.lock();
            inner.open.recs.push(rec);
            inner.open.answers.push(answer);
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
        // No code that can panic runs while the lock is held (pushes and drains), so a
        // poisoned lock is still consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `group`, then every group that opened meanwhile, until none is left. A
    /// panic while writing one group fails that group's submits (their answers are
    /// dropped) and the loop goes on, so the flush slot is never lost.
    async fn flush_from(&self, state: &AppState, mut group: Group) {
        loop {
            if AssertUnwindSafe(write(state, group))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!("writing a submit group panicked; its submits failed");
            }
            let mut inner = self.lock();
            if inner.open.recs.is_empty() {
                inner.flushing -= 1;
                return;
            }
            group = take_group(&mut inner);
        }
    }
}

/// The open group's first [`MAX_GROUP`] submits.
fn take_group(inner: &mut Inner) -> Group {
    let n = inner.open.len().min(MAX_GROUP);
    Group {
        recs: inner.open.recs.drain(..n).collect(),
        answers: inner.open.answers.drain(..n).collect(),
    }
}

/// Writes one group and answers each of its submits.
async fn write(state: &AppState, group: Group) {
    // Submits given up while they waited for their group are not written at all.
    let (group, _) = group.split_given_up();
    if group.len() == 0 {
        return;
    }
    state.metrics.submit_group_size.observe(group.len() as f64);
    let now = chrono::Utc::now();
    let waited = group.recs.iter().map(|r| {
        (now - r.created_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64()
    });
    observe_stage(state, "wait", waited);
    let started = Instant::now();
    let inserted = submit::insert(state, &group.recs).await;
    let took = started.elapsed().as_secs_f64();
    observe_stage(state, "insert", std::iter::repeat_n(took, group.len()));
    match inserted {
        Ok(()) => finish(state, group).await,
        Err(PersistError::Api(e))
            if group.len() > 1 && e.status != StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::warn!(error = %e.message, submits = group.len(), "a grouped insert failed; writing its submits one by one");
            let each = group
                .recs
                .into_iter()
                .zip(group.answers)
                .map(|(rec, answer)| async move {
                    let one = Group::one(rec, answer);
                    match submit::insert(state, &one.recs).await {
                        Ok(()) => finish(state, one).await,
                        Err(e) => one.answer_err(&e),
                    }
                });
            futures::future::join_all(each).await;
        }
        Err(e) => group.answer_err(&e),
    }
}

/// After the insert of `group`: the submits still waiting are enqueued, the records of
/// those given up meanwhile are removed, those given up during their enqueue are taken
/// back out of both stores, and every submit still waiting is answered.
async fn finish(state: &AppState, group: Group) {
    let (waiting, given_up) = group.split_given_up();
    if given_up.len() > 0 {
        tracing::info!(
            submits = given_up.len(),
            "submits given up before their enqueue; removing their records"
        );
        if let Err(e) = submit::unsubmit(state, &given_up.recs).await {
            tracing::warn!(error = %e, count = given_up.len(), "could not remove the records of given-up submits; the submit check cancels them");
        }
    }
    let started = Instant::now();
    let enqueued = submit::enqueue(state, &waiting.recs).await;
    let took = started.elapsed().as_secs_f64();
    observe_stage(state, "enqueue", std::iter::repeat_n(took, waiting.len()));
    if let Err(e) = enqueued {
        return waiting.answer_err(&e);
    }
    // A submit given up while its enqueue ran was answered with an error: its task is
    // taken back out as for a failed enqueue (unless a worker took it already).
    let (enqueued, given_up) = waiting.split_given_up();
    if given_up.len() > 0 {
        tracing::info!(
            submits = given_up.len(),
            "submits given up while they were enqueued; taking them back"
        );
        submit::take_back(state, &given_up.recs).await;
    }
    submit::count_submitted(state, &enqueued.recs);
    enqueued.answer_ok();
}

/// Records one duration per submit in the `stage` series of the submit-stage histogram.
fn observe_stage(state: &AppState, stage: &'static str, seconds: impl Iterator<Item = f64>) {
    let h = state
        .metrics
        .submit_stage
        .get_or_create(&StageLabels { stage });
    for s in seconds {
        h.observe(s);
    }
}
