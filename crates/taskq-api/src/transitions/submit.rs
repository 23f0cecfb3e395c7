//! Submit: the record in MongoDB first (marked submit-pending), then the task in Redis,
//! for `POST /v1/tasks`, `POST /v1/tasks/batch` and the periodic scheduler alike.
//!
//! Write order ([`persist`]):
//!
//! 1. MongoDB: the records are inserted with `seq` 1 and the submit-pending mark `sp`
//!    (their `created_at`).
//! 2. Redis: the tasks are enqueued, one script call per queue, no later than
//!    [`ENQUEUE_DEADLINE`] after the mark.
//!
//! Undo, when step 2 fails or the deadline passed: the tasks are taken out of Redis,
//! then the records that still carry this submit's own mark are deleted (a repeat may
//! have taken one over). A task a worker already took (the enqueue landed and only its
//! reply was lost) is not taken out: it runs, and its record stays to follow it. A task
//! Redis no longer holds while its queue's outbox still has updates on the way may have
//! run to its end already: its record is cancelled (`submit_failed`, overridden by the
//! task's own updates) rather than deleted. When taking them out of Redis fails too, the
//! records are cancelled the same way; when the delete fails, the workers' submit check
//! cancels them once they are older than its grace period. What the caller sees: `503`,
//! and the task never runs unless Redis did get it (a lost reply), in which case its own
//! status updates override the cancellation. A repeat of the failed submit's idempotency
//! key answers `409` (retry) within its enqueue deadline, then `201` with a new task, or
//! `200` with the original if Redis did get it.
//!
//! With an idempotency key ([`submit_idempotent`]) a claim in Redis comes first, and a
//! repeat of the key finds the original ([`key_holder`]): a submit still in flight is a
//! conflict, an interrupted one is completed by the repeat ([`repeat_pending`]), and a
//! failed one (cancelled, `submit_failed`) gives the key up once it is sure its task
//! never reached Redis, so the repeat submits the task anew ([`repeat_failed`]). A batch
//! ([`submit_batch`]) reports each task's outcome on its own. Single submits without a
//! key are written in groups ([`super::group`]): the same two steps for every submit
//! that arrived meanwhile.

use std::collections::HashSet;
use std::time::Duration;

use taskq_core::{TaskId, TaskRecord};
use taskq_redis::EnqueueItem;
use taskq_store::StoredTask;
use taskq_telemetry::metrics::Metrics;
use tracing::Instrument;

use crate::AppState;
use crate::error::ApiError;

/// What a submit did.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// A new task, in both stores.
    Created(TaskRecord),
    /// The idempotency key repeats one used within its retention window: the key's task
    /// as it stands; nothing new was written.
    Existing(TaskRecord),
}

/// Submits one admitted task (through [`submit_idempotent`] when it has a key).
pub(crate) async fn submit(state: &AppState, rec: TaskRecord) -> Result<Submitted, ApiError> {
    if rec.idempotency_key.is_some() {
        return submit_idempotent(state, rec).await;
    }
    let span = tracing::info_span!(
        "task.enqueue",
        task.count = 1,
        task.id = %rec.id,
        task.queue = %rec.queue,
        task.type = %rec.kind,
    );
    let rec = state.submits.submit(state, rec).instrument(span).await?;
    Ok(Submitted::Created(rec))
}

/// Submits admitted tasks of one batch: those without an idempotency key together (one
/// `insert_many`, one enqueue script call per queue), those with one each on its own so
/// every key is checked. One outcome per task, in order: a failure is that task's own
/// (the keyless tasks share theirs, as they share their writes) and undoes no other
/// task, so a task reported submitted is in both stores whatever became of the others,
/// and a task reported failed is undone as a single submit's failure is.
pub(crate) async fn submit_batch(
    state: &AppState,
    recs: Vec<TaskRecord>,
) -> Vec<Result<Submitted, ApiError>> {
    let plain: Vec<TaskRecord> = recs
        .iter()
        .filter(|r| r.idempotency_key.is_none())
        .cloned()
        .collect();
    let plain_outcome = persist(state, &plain).await.map_err(ApiError::from);
    let mut out = Vec::with_capacity(recs.len());
    for rec in recs {
        out.push(if rec.idempotency_key.is_some() {
            submit_idempotent(state, rec).await
        } else {
            plain_outcome.clone().map(|()| Submitted::Created(rec))
        });
    }
    out
}

/// Submits a task with an idempotency key, deduplicated twice over:
///
/// 1. a claim on the key in Redis (`SET NX` in a script): of concurrent submits on any
///    number of api replicas exactly one wins; the others answer with the winner's task
///    once its record is written, or 409 when it does not appear in time;
/// 2. the unique index on (queue, key) in MongoDB, which still decides when Redis lost its
///    claims (a flush, a failover): exactly one insert wins.
///
/// The winner's claim lasts as long as the key's retention window.
pub(crate) async fn submit_idempotent(
    state: &AppState,
    rec: TaskRecord,
) -> Result<Submitted, ApiError> {
    let Some(key) = rec.idempotency_key.clone() else {
        return Err(ApiError::internal(&"submit_idempotent without a key"));
    };
    let expired_before = rec.created_at
        - chrono::Duration::from_std(state.idempotency_ttl).unwrap_or(chrono::Duration::days(1));
    // Long enough for the claimant to write its task; a claimant that died mid-way holds
    // the key no longer than this.
    let hold = state.request_timeout + Duration::from_secs(5);
    let mut claimed = false;
    for pause_ms in CLAIM_WAITS_MS {
        if pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        let Some(holder) = state
            .broker
            .claim_idempotency_key(&rec.queue, &key, rec.id, hold)
            .await?
        else {
            claimed = true;
            break;
        };
        match state.store.get(holder).await? {
            Some(t) if t.record.created_at >= expired_before => {
                match key_holder(state, t, &key).await? {
                    Holder::Answer(answer) => return Ok(*answer),
                    // A failed submit gave the key up: so does its claim.
                    Holder::Freed => {
                        state
                            .broker
                            .drop_idempotency_claim(&rec.queue, &key, holder)
                            .await?;
                    }
                    Holder::Undecided => {}
                }
            }
            // A claim that outlived its task's retention: no longer binding.
            Some(_) => {
                state
                    .broker
                    .drop_idempotency_claim(&rec.queue, &key, holder)
                    .await?;
            }
            // No record: the holder is still writing it, or its submit failed or died.
            // A holder past the enqueue deadline can no longer leave a live task (a late
            // insert is removed again by its own submit, or cancelled by the submit
            // check), so its claim is no longer binding.
            None => {
                if submit_age(holder_started(holder)) > ENQUEUE_DEADLINE + CLAIM_TAKEOVER_MARGIN {
                    state
                        .broker
                        .drop_idempotency_claim(&rec.queue, &key, holder)
                        .await?;
                }
            }
        }
    }
    if !claimed {
        return Err(ApiError::conflict(
            "the idempotency key is being used by a concurrent submit; retry",
        ));
    }
    let outcome = insert_idempotent(state, &rec, &key, expired_before).await;
    let settled = match &outcome {
        Ok(Submitted::Created(_)) => {
            state
                .broker
                .keep_idempotency_claim(&rec.queue, &key, rec.id, state.idempotency_ttl)
                .await
        }
        // Nothing of ours was written: let the key go (MongoDB knows the original).
        _ => {
            state
                .broker
                .drop_idempotency_claim(&rec.queue, &key, rec.id)
                .await
        }
    };
    if let Err(e) = settled {
        // The claim lapses on its own; MongoDB's unique index still guards the key.
        tracing::warn!(error = %e, task = %rec.id, "could not settle an idempotency claim");
    }
    outcome
}

/// Beyond the enqueue deadline, how much older a claim's holder must be before a repeat
/// takes the key over (the holder's id is made a little before its record's time).
const CLAIM_TAKEOVER_MARGIN: Duration = Duration::from_secs(1);

/// When the submit of task `id` began, from its time-ordered id.
fn holder_started(id: TaskId) -> chrono::DateTime<chrono::Utc> {
    id.as_uuid()
        .get_timestamp()
        .map(|t| t.to_unix())
        .and_then(|(secs, nanos)| {
            chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .unwrap_or_else(taskq_core::now)
}

/// How long ago `started` was (zero for a time in the future).
fn submit_age(started: chrono::DateTime<chrono::Utc>) -> Duration {
    (taskq_core::now() - started).to_std().unwrap_or_default()
}

/// What a repeat of an idempotency key makes of the record that holds the key.
enum Holder {
    /// The key is bound to this task: the repeat's answer.
    Answer(Box<Submitted>),
    /// The record was a failed submit and gave the key up: the repeat submits anew.
    Freed,
    /// Not decided yet (a submit in flight, or a task whose updates are still on their
    /// way to MongoDB): the repeat waits, or answers 409 (retry).
    Undecided,
}

/// A repeat of idempotency key `key` found `t`, the record holding it within the key's
/// retention window:
/// - submit-pending: nothing has shown yet that its task reached Redis
///   ([`repeat_pending`]);
/// - a failed submit (cancelled, `submit_failed`, at `seq` 1): [`repeat_failed`];
/// - otherwise its task is under way or finished: the answer.
async fn key_holder(state: &AppState, t: StoredTask, key: &str) -> Result<Holder, ApiError> {
    if let Some(mark) = t.submit_pending {
        return Ok(match repeat_pending(state, t.record, mark).await? {
            Some(answer) => Holder::Answer(Box::new(answer)),
            None => Holder::Undecided,
        });
    }
    if t.is_failed_submit() {
        return repeat_failed(state, t.record, key).await;
    }
    Ok(Holder::Answer(Box::new(Submitted::Existing(t.record))))
}

/// A repeat of idempotency key `key` of a failed submit `rec` (its record cancelled as
/// `submit_failed` at `seq` 1: no status update of its task has arrived):
/// - Redis holds the task: the enqueue did land (only its reply was lost); the task runs
///   and its own updates override the cancellation. The answer is the task.
/// - Not in Redis, within the original submit's enqueue deadline: its enqueue may still
///   be on its way; undecided.
/// - Not in Redis, past it, and no update of the task in the queue's outbox (read after
///   the look at Redis: a task that ran to its end is absent too, its updates unapplied):
///   the task never reached Redis and never will. The record gives the key up (only if it
///   is still such a record: had the task run, its updates would have moved it on), and
///   the repeat submits the task anew. With updates of it in the outbox, or an outbox
///   too long to read, undecided: once they are applied the record says what ran.
async fn repeat_failed(state: &AppState, rec: TaskRecord, key: &str) -> Result<Holder, ApiError> {
    let (_, present) = state.broker.present(&rec.queue, &[rec.id]).await?;
    if present.first().copied().unwrap_or(false) {
        return Ok(Holder::Answer(Box::new(Submitted::Existing(rec))));
    }
    if submit_age(rec.created_at) <= ENQUEUE_DEADLINE + CLAIM_TAKEOVER_MARGIN {
        return Ok(Holder::Undecided);
    }
    match state.broker.outbox_tasks(&rec.queue).await? {
        Some(updated) if !updated.contains(&rec.id) => {}
        _ => return Ok(Holder::Undecided),
    }
    if !state
        .store
        .release_failed_submit_key(rec.id, &rec.queue, key)
        .await?
    {
        return Ok(Holder::Undecided);
    }
    tracing::info!(task = %rec.id, queue = %rec.queue, "a failed submit gave its idempotency key up to a repeat");
    Ok(Holder::Freed)
}

/// A repeat of an idempotency key whose task's record is still submit-pending (marked
/// `mark`): nothing has shown yet that the task reached Redis.
/// - Redis holds the task: it was enqueued; the answer is the task.
/// - Not in Redis, and its submit is still within the enqueue deadline: the original
///   submit may still enqueue it; `None` (wait, then 409).
/// - Not in Redis, past the deadline, the queue's outbox empty and the record still
///   pending: the original submit can no longer enqueue it (it died or gave up), so
///   this repeat takes the record over and enqueues the task itself ([`take_over`]),
///   and answers with it. (With entries in the outbox the task may have run already:
///   `None`, and the submit check decides.) A repeat therefore completes an
///   interrupted submit instead of binding the key to a task that never runs.
async fn repeat_pending(
    state: &AppState,
    rec: TaskRecord,
    mark: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Submitted>, ApiError> {
    let (_, present) = state.broker.present(&rec.queue, &[rec.id]).await?;
    if present.first().copied().unwrap_or(false) {
        return Ok(Some(Submitted::Existing(rec)));
    }
    if submit_age(mark) <= ENQUEUE_DEADLINE {
        return Ok(None);
    }
    // A task that reached Redis and already finished is absent too, its first status
    // update still in the outbox: only with the outbox drained, and the record still
    // pending after that, did the task never reach Redis.
    if state.broker.outbox_len(&rec.queue).await? > 0 {
        return Ok(None);
    }
    match state.store.get(rec.id).await? {
        Some(t) if t.submit_pending == Some(mark) => take_over(state, rec, mark).await.map(Some),
        // Its task's first update arrived meanwhile: the task as it stands.
        Some(t) if t.submit_pending.is_none() && !t.is_failed_submit() => {
            Ok(Some(Submitted::Existing(t.record)))
        }
        // Taken over by another repeat, settled as failed, or removed: decided later.
        _ => Ok(None),
    }
}

/// Takes over the submit of `rec` (marked `mark`, not in Redis, past its deadline): the
/// record is re-marked as this submit's (so the original's undo no longer matches it),
/// then enqueued. If another repeat won the record, the answer is the record as it then
/// stands.
async fn take_over(
    state: &AppState,
    rec: TaskRecord,
    mark: chrono::DateTime<chrono::Utc>,
) -> Result<Submitted, ApiError> {
    let now = taskq_core::now();
    if !state.store.take_over_submit(rec.id, mark, now).await? {
        let current = state
            .store
            .get(rec.id)
            .await?
            .ok_or_else(|| ApiError::conflict("the task's submit failed meanwhile; retry"))?;
        if current.submit_pending.is_some() || current.is_failed_submit() {
            return Err(ApiError::conflict(
                "a concurrent repeat is completing this task's submit, or it failed; retry",
            ));
        }
        return Ok(Submitted::Existing(current.record));
    }
    tracing::info!(task = %rec.id, queue = %rec.queue, "a repeated submit completes a submit that never reached Redis");
    state
        .broker
        .enqueue(&[EnqueueItem::from_record(&rec, 1)])
        .await?;
    Ok(Submitted::Existing(rec))
}

/// Pauses (ms) between attempts to claim an idempotency key another submit holds.
const CLAIM_WAITS_MS: [u64; 6] = [0, 25, 50, 100, 200, 400];

/// The MongoDB half of [`submit_idempotent`], once Redis granted the claim.
async fn insert_idempotent(
    state: &AppState,
    rec: &TaskRecord,
    key: &str,
    expired_before: chrono::DateTime<chrono::Utc>,
) -> Result<Submitted, ApiError> {
    for _ in 0..3 {
        match persist(state, std::slice::from_ref(rec)).await {
            Ok(()) => return Ok(Submitted::Created(rec.clone())),
            Err(PersistError::Api(e)) => return Err(e),
            // MongoDB holds the key (Redis lost its claim, or the key's retention is over).
            Err(PersistError::Duplicate) => {}
        }
        match state.store.find_by_idempotency_key(&rec.queue, key).await? {
            // The same rules as for a claim's holder: a task whose submit is still in
            // flight may yet fail and be removed, so it is no answer (409, retry).
            Some(existing) if existing.record.created_at >= expired_before => {
                match key_holder(state, existing, key).await? {
                    Holder::Answer(answer) => return Ok(*answer),
                    // A failed submit gave the key up: insert again.
                    Holder::Freed => {}
                    Holder::Undecided => {
                        return Err(ApiError::conflict(
                            "the task of this idempotency key is still being submitted; retry",
                        ));
                    }
                }
            }
            // Its retention is over: the key may be used again.
            Some(_) => {
                state
                    .store
                    .release_idempotency_key(&rec.queue, key, expired_before)
                    .await?;
            }
            // Released by another submit in between: insert again.
            None => {}
        }
    }
    Err(ApiError::conflict(
        "the idempotency key is being used by a concurrent submit; retry",
    ))
}

/// Why [`persist`] failed.
#[derive(Clone, Debug)]
pub(crate) enum PersistError {
    /// A record with the same idempotency key exists; nothing was written.
    Duplicate,
    Api(ApiError),
}

impl From<PersistError> for ApiError {
    fn from(e: PersistError) -> Self {
        match e {
            PersistError::Duplicate => {
                ApiError::conflict("a task with this idempotency key was submitted concurrently")
            }
            PersistError::Api(e) => e,
        }
    }
}

/// The latest a submit enqueues its task, counted from the record's `created_at` (its
/// submit-pending mark). The workers' `TASKQ_SUBMIT_GRACE_MS` must exceed it plus the
/// clock skew between hosts.
pub const ENQUEUE_DEADLINE: Duration = Duration::from_secs(5);

/// Writes records to MongoDB (marked submit-pending), then to Redis, inside a
/// `task.enqueue` span. When Redis fails the tasks are taken out of Redis and the records
/// removed again, so no task whose submit was answered with an error ever runs; when
/// taking them out of Redis fails too, the records are cancelled (`submit_failed`)
/// instead. A record left behind (the api died between the writes, or the undo failed
/// in MongoDB as well) is settled by the workers' submit check the same way, unless
/// Redis holds its task.
///
/// The submit check relies on this: no api sends a task's enqueue later than
/// [`ENQUEUE_DEADLINE`] after the record's creation time; a record that took longer to
/// write (MongoDB slow or just back from an outage) is removed again and the submit
/// answered `503`.
pub(crate) async fn persist(state: &AppState, recs: &[TaskRecord]) -> Result<(), PersistError> {
    let span = tracing::info_span!(
        "task.enqueue",
        task.count = recs.len(),
        task.id = recs.first().map(|r| r.id.to_string()).unwrap_or_default(),
        task.queue = recs.first().map(|r| r.queue.to_string()).unwrap_or_default(),
        task.type = recs.first().map(|r| r.kind.clone()).unwrap_or_default(),
    );
    persist_inner(state, recs).instrument(span).await
}

/// Removes the records of `recs` that still carry their own submit-pending mark (their
/// `created_at`; a repeat may have taken a record over, see [`take_over`]). Records of
/// one submit share one creation time.
pub(super) async fn unsubmit(state: &AppState, recs: &[TaskRecord]) -> taskq_store::Result<u64> {
    let mut marks: Vec<chrono::DateTime<chrono::Utc>> = recs.iter().map(|r| r.created_at).collect();
    marks.sort();
    marks.dedup();
    let mut removed = 0;
    for mark in marks {
        let ids: Vec<TaskId> = recs
            .iter()
            .filter(|r| r.created_at == mark)
            .map(|r| r.id)
            .collect();
        removed += state.store.delete_unsubmitted(&ids, mark).await?;
    }
    Ok(removed)
}

async fn persist_inner(state: &AppState, recs: &[TaskRecord]) -> Result<(), PersistError> {
    insert(state, recs).await?;
    enqueue(state, recs).await?;
    count_submitted(state, recs);
    Ok(())
}

/// Counts `recs` in `taskq_tasks_submitted_total`: submits accepted, once they are in
/// both stores and will be answered as such.
pub(super) fn count_submitted(state: &AppState, recs: &[TaskRecord]) {
    for r in recs {
        state
            .metrics
            .submitted
            .get_or_create(&Metrics::task(r.queue.as_str(), &r.kind))
            .inc();
    }
}

/// Step 1 of [`persist`]: the records, marked submit-pending. On a failure nothing of
/// them is left (an unordered `insert_many` that wrote part of them is undone).
pub(super) async fn insert(state: &AppState, recs: &[TaskRecord]) -> Result<(), PersistError> {
    let inserted = match recs {
        [] => return Ok(()),
        [one] => state.store.insert(one).await,
        many => state.store.insert_many(many).await,
    };
    match inserted {
        Ok(()) => {}
        Err(e) if e.is_duplicate_key() && recs.len() == 1 => return Err(PersistError::Duplicate),
        Err(e) => {
            // An unordered insert_many may have written some records: remove them, so
            // recovery never runs a task whose submit failed.
            if recs.len() > 1
                && let Err(undo) = unsubmit(state, recs).await
            {
                tracing::error!(error = %undo, count = recs.len(), "could not remove records of a failed batch insert; the submit check cancels them");
            }
            return Err(PersistError::Api(e.into()));
        }
    }
    Ok(())
}

/// Cancels the records of tasks whose enqueue failed and which Redis may still have
/// run (`submit_failed`, at `seq` 1: the task's own status updates override it).
async fn cancel_unsubmitted(state: &AppState, ids: &[TaskId]) {
    if ids.is_empty() {
        return;
    }
    if let Err(e) = state
        .store
        .settle_submits(ids, &[], taskq_core::now())
        .await
    {
        tracing::error!(error = %e, count = ids.len(), "could not cancel records whose enqueue failed; the submit check cancels them");
    }
}

/// Takes back submits whose enqueue failed or whose answer was given up while it ran:
/// their tasks out of Redis first, so nothing answered with an error runs, then their
/// records (see the module documentation for what stays).
pub(super) async fn take_back(state: &AppState, recs: &[TaskRecord]) {
    // Part of the batch may be in Redis (another queue's script, or a lost reply):
    // take it out before the records go, so nothing answered with an error runs.
    let tasks: Vec<_> = recs.iter().map(|r| (r.queue.clone(), r.id)).collect();
    let removed = match state.broker.remove(&tasks).await {
        Ok(removed) => removed,
        Err(undo) => {
            // Redis may hold some of the tasks (a lost reply): keep their records but
            // cancel them (submit_failed), so recovery never runs them. A task that
            // does run after all overrides that with its own, later status updates.
            let ids: Vec<TaskId> = recs.iter().map(|r| r.id).collect();
            tracing::error!(error = %undo, count = ids.len(), "could not remove tasks whose enqueue failed; cancelling their records");
            cancel_unsubmitted(state, &ids).await;
            return;
        }
    };
    // A task a worker took already did reach Redis (the reply was lost): it runs, so
    // its record stays and follows it.
    if !removed.taken.is_empty() {
        tracing::warn!(
            count = removed.taken.len(),
            "tasks whose enqueue reported an error were already taken by a worker; their records stay"
        );
    }
    // A task absent while its queue's outbox is not yet applied may have run to its
    // end already: its record is cancelled, not deleted, so that its own status
    // updates (later in seq) can still land on it.
    cancel_unsubmitted(state, &removed.unknown).await;
    let stay: HashSet<TaskId> = removed
        .taken
        .iter()
        .chain(&removed.unknown)
        .copied()
        .collect();
    let recs: Vec<TaskRecord> = recs
        .iter()
        .filter(|r| !stay.contains(&r.id))
        .cloned()
        .collect();
    if let Err(undo) = unsubmit(state, &recs).await {
        // Nothing of them is in Redis: the submit check cancels these records.
        tracing::error!(error = %undo, count = recs.len(), "could not remove records whose enqueue failed; the submit check cancels them");
    }
}

/// Step 2 of [`persist`], once the records are in MongoDB: the tasks, unless the
/// enqueue deadline passed; undone (Redis, then the records) on a failure.
pub(super) async fn enqueue(state: &AppState, recs: &[TaskRecord]) -> Result<(), PersistError> {
    if recs.is_empty() {
        return Ok(());
    }
    let oldest = recs.iter().map(|r| r.created_at).min().unwrap_or_default();
    if taskq_core::now() - oldest > chrono::Duration::from_std(ENQUEUE_DEADLINE).unwrap_or_default()
    {
        if let Err(undo) = unsubmit(state, recs).await {
            tracing::error!(error = %undo, count = recs.len(), "could not remove records written too late to enqueue; the submit check cancels them");
        }
        return Err(PersistError::Api(ApiError::unavailable(
            "mongodb",
            &"the record took longer than the enqueue deadline to write",
        )));
    }
    let enqueued = if recs.iter().any(|r| r.flow.is_some()) {
        // A flow's tasks: its waiting tasks are registered, its roots enqueued.
        super::flow::enqueue(state, recs).await
    } else {
        let items: Vec<EnqueueItem> = recs
            .iter()
            .map(|r| EnqueueItem::from_record(r, 1))
            .collect();
        state
            .broker
            .enqueue(&items)
            .await
            .map(drop)
            .map_err(Into::into)
    };
    if let Err(e) = enqueued {
        take_back(state, recs).await;
        return Err(PersistError::Api(e));
    }
    Ok(())
}
