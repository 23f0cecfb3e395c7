//! Flows: tasks submitted together whose `depends_on` form a DAG (checked by
//! [`taskq_core::flow::plan`]). A task with dependencies is `waiting` until every
//! dependency succeeded, then `queued`; a dependency that dies (or is cancelled) cancels
//! it with the reason `dependency <id> died` (transitively: the reason names the task
//! that died).
//!
//! **Redis** (see `taskq_redis::flow`): a waiting task is a task hash in state `waiting`
//! plus the set of its unmet dependencies, in its own queue; every dependency's queue
//! keeps the set of its dependents. Each script touches one queue, so a flow may span
//! queues on Redis Cluster.
//!
//! **Release.** The trigger is a dependency's final update being *applied to MongoDB*:
//! the workers' outbox writers, after applying a batch, settle the dependents of the
//! batch's finished tasks (`Broker::flow_settle`: read the dependents, queue or cancel
//! them with their status update in their queue's outbox, forget the dependents) and
//! only then acknowledge the entries, so a crash anywhere repeats the (idempotent)
//! settle. A dependent therefore starts only after its dependencies' results are in
//! MongoDB, where its handler reads them (`TaskContext::dependency_results`).
//!
//! **Register, then check.** Whoever registers waiting tasks ([`wait_for`]: a flow's
//! submit for dependencies on existing tasks, recovery, a flow's retry) links them to
//! their dependencies in Redis first and reads the dependencies' records afterwards,
//! settling the finished ones itself. A dependency finishing concurrently is then
//! settled by its writer (whose MongoDB write came after the read, so its settle comes
//! after the link) or by this read, possibly both: settling is idempotent.
//!
//! | transition | writes, in order | undo / what a caller sees |
//! |---|---|---|
//! | submit a flow (`POST /v1/flows`) | MongoDB: every record in one insert (`seq` 1, submit-pending mark; roots `queued`, dependents `waiting`); Redis: dependents sets, waiting tasks, then the roots' enqueue; then dependencies on existing tasks are checked | as a batch submit ([`super::submit`]): Redis remove, records deleted; `503`, nothing runs |
//! | dependency succeeded | (worker) MongoDB update applied, then `FLOW_RELEASE` queues the last-waiting dependents (`waiting → queued`, their update in their queue's outbox), then the outbox entry is acknowledged | none: repeated until acknowledged |
//! | dependency dead or cancelled | as above; the dependents become `cancelled` (`dependency <id> died`), and their own settle cascades; the flow's failure handler (`on_failure`, a waiting task depending on every task, hash field `mode` = `fail`) becomes `queued` instead | none |
//! | every task succeeded | as above; the failure handler's last dependency succeeding cancels it (`every task of the flow succeeded`) | none |
//! | cancel a flow (`POST /v1/flows/{id}/cancel`) | [`super::cancel`] for every unfinished task (a waiting one leaves Redis like a queued one) | per task as a cancel; finished tasks are skipped |
//! | retry a flow (`POST /v1/flows/{id}/retry`) | [`super::retry`] for every dead task; then every task cancelled because of a dependency goes back to `waiting` (MongoDB at `seq` + 1, then [`wait_for`]) | `503` part-way: call again (each step is skipped for tasks it already moved) |
//! | retry one dead task (`POST /v1/tasks/{id}/retry`, `retry-dead`) | [`super::retry`]; then the tasks of its flow cancelled because it died go back to `waiting` as above ([`rewait_dependents`]) | `503` after the task was queued: its dependents stay cancelled, the flow's retry puts them back |
//! | recover after Redis lost its data | [`recover_waiting`]: every `waiting` record is registered again by [`wait_for`] | idempotent: call again |

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use taskq_core::{FlowPlan, QueueName, TaskId, TaskRecord, TaskStatus};
use taskq_redis::EnqueueItem;
use taskq_redis::flow::{Finished, Waiting};
use taskq_store::{StatusUpdate, StoredTask};
use utoipa::{IntoResponses, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::transitions::cancel::Cancelled;
use crate::transitions::submit;

/// Submits a checked flow: its dependencies on existing tasks must exist (else `400`
/// `invalid_flow`, nothing written); then the records and the tasks are written as a
/// batch submit writes them ([`submit::persist`], whose Redis step is [`enqueue`]).
pub(crate) async fn submit_flow(state: &AppState, plan: &FlowPlan) -> Result<(), ApiError> {
    if !plan.external.is_empty() {
        let found: HashSet<TaskId> = state
            .store
            .get_many(&plan.external)
            .await?
            .into_iter()
            .map(|t| t.record.id)
            .collect();
        if let Some(missing) = plan.external.iter().find(|id| !found.contains(id)) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidFlow,
                format!("depends_on: no task {missing}"),
            ));
        }
    }
    submit::persist(state, &plan.records).await?;
    Ok(())
}

/// The Redis step of a flow's submit, once its records are in MongoDB: the waiting
/// tasks are registered (then linked to their dependencies), then the roots enqueued, then the dependencies
/// outside the flow checked ([`wait_for`]).
pub(crate) async fn enqueue(state: &AppState, recs: &[TaskRecord]) -> Result<(), ApiError> {
    let queues: HashMap<TaskId, QueueName> = recs.iter().map(|r| (r.id, r.queue.clone())).collect();
    let (waiting, roots): (Vec<&TaskRecord>, Vec<&TaskRecord>) =
        recs.iter().partition(|r| r.status == TaskStatus::Waiting);
    let waiting: Vec<(TaskRecord, u64)> = waiting.into_iter().map(|r| (r.clone(), 1)).collect();
    wait_for(state, &waiting, queues, false).await?;
    let items: Vec<EnqueueItem> = roots
        .iter()
        .map(|r| EnqueueItem::from_record(r, 1))
        .collect();
    state.broker.enqueue(&items).await?;
    Ok(())
}

/// Registers `waiting` records (each with the `seq` its Redis hash starts at) and
/// settles their dependencies that already finished (see the module documentation).
/// `queues` knows the queues of some dependencies (the others are read); with
/// `check_known` false, the dependencies in `queues` are known to be unfinished and
/// are not read again.
pub(crate) async fn wait_for(
    state: &AppState,
    waiting: &[(TaskRecord, u64)],
    mut queues: HashMap<TaskId, QueueName>,
    check_known: bool,
) -> Result<(), ApiError> {
    if waiting.is_empty() {
        return Ok(());
    }
    let deps: BTreeSet<TaskId> = waiting
        .iter()
        .flat_map(|(r, _)| r.flow.iter().flat_map(|f| f.depends_on.iter().copied()))
        .collect();
    let unknown: Vec<TaskId> = deps
        .iter()
        .filter(|d| !queues.contains_key(d))
        .copied()
        .collect();
    for t in state.store.get_many(&unknown).await? {
        queues.insert(t.record.id, t.record.queue);
    }
    let items: Vec<Waiting> = waiting
        .iter()
        .map(|(r, seq)| {
            let deps = r
                .flow
                .iter()
                .flat_map(|f| f.depends_on.iter())
                // A dependency without a record (removed by retention) cannot hold
                // the task back: it is left out.
                .filter_map(|d| Some((queues.get(d)?.clone(), *d)))
                .collect();
            Waiting {
                item: EnqueueItem::from_record(r, *seq),
                deps,
                on_failure: r.flow.as_ref().is_some_and(|f| f.on_failure),
            }
        })
        .collect();
    let (linked, free): (Vec<_>, Vec<_>) = items.into_iter().partition(|w| !w.deps.is_empty());
    state.broker.flow_register(&linked).await?;
    // Their dependencies are gone: ordinary tasks run, a failure handler (nothing left
    // whose failure it could handle) stays as it is.
    let free: Vec<EnqueueItem> = free
        .into_iter()
        .filter(|w| !w.on_failure)
        .map(|w| w.item)
        .collect();
    if !free.is_empty() {
        state.broker.enqueue(&free).await?;
    }
    let check: Vec<TaskId> = if check_known {
        deps.into_iter().collect()
    } else {
        unknown
    };
    settle_finished(state, &state.store.get_many(&check).await?).await
}

/// Settles the dependents of those of `tasks` that finished (one call per queue).
async fn settle_finished(state: &AppState, tasks: &[StoredTask]) -> Result<(), ApiError> {
    let mut by_queue: BTreeMap<&QueueName, Vec<(TaskId, Finished)>> = BTreeMap::new();
    for t in tasks {
        let r = &t.record;
        if let Some(how) = Finished::of(r.id, r.status, r.last_error.as_deref()) {
            by_queue.entry(&r.queue).or_default().push((r.id, how));
        }
    }
    for (queue, finished) in by_queue {
        state.broker.flow_settle(queue, &finished).await?;
    }
    Ok(())
}

/// Recovery's part for flows: every `waiting` record is registered again (tasks Redis
/// still holds are left alone). Returns how many records were read.
pub(crate) async fn recover_waiting(state: &AppState) -> Result<u64, ApiError> {
    let mut after = None;
    let mut read = 0u64;
    loop {
        let batch = state.store.waiting(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.record.id);
        read += batch.len() as u64;
        let waiting: Vec<(TaskRecord, u64)> =
            batch.into_iter().map(|t| (t.record, t.seq + 1)).collect();
        wait_for(state, &waiting, HashMap::new(), true).await?;
    }
    Ok(read)
}

/// What `POST /v1/flows/{id}/cancel` did.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct FlowCancelled {
    /// Tasks that were waiting, queued, scheduled or retrying and are now cancelled.
    pub cancelled: u64,
    /// Running tasks whose handlers were signalled (they end `cancelled` shortly).
    pub signalled: u64,
}

/// How a failed [`cancel_flow`] leaves the flow, as the OpenAPI document lists it.
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub(crate) enum CancelFlowErrors {
    #[response(
        status = 503,
        description = "Redis or MongoDB is unavailable; the tasks cancelled before it stay cancelled; call again."
    )]
    Unavailable(ErrorBody),
}

/// Cancels every unfinished task of flow `tasks` (all of one flow, in the order of the
/// flow request) through [`super::cancel`]; a task that finishes meanwhile is skipped.
pub(crate) async fn cancel_flow(
    state: &AppState,
    tasks: Vec<StoredTask>,
) -> Result<FlowCancelled, ApiError> {
    let mut out = FlowCancelled::default();
    // Dependents first: a dependency's cancel would otherwise cascade to them too,
    // racing this loop (harmless, but noisier).
    for t in tasks.iter().rev() {
        if t.record.status.is_final() {
            continue;
        }
        match super::cancel::cancel(state, t.record.id).await {
            Ok(Cancelled::Now(_)) => out.cancelled += 1,
            Ok(Cancelled::Signalled(_)) => out.signalled += 1,
            // Finished meanwhile.
            Err(e) if e.status == StatusCode::CONFLICT => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What `POST /v1/flows/{id}/retry` did.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct FlowRetried {
    /// Dead tasks queued again.
    pub requeued: u64,
    /// Tasks that had been cancelled because a dependency died, waiting again.
    pub waiting: u64,
}

/// How a failed [`retry_flow`] leaves the flow, as the OpenAPI document lists it.
#[derive(IntoResponses)]
#[allow(dead_code, reason = "only documents answers that `ApiError` produces")]
pub(crate) enum RetryFlowErrors {
    #[response(
        status = 503,
        description = "Redis or MongoDB is unavailable part-way; call again (tasks already waiting again are completed by `POST /v1/admin/recover`)."
    )]
    Unavailable(ErrorBody),
}

/// Retries flow `tasks` (all of one flow): every dead task is retried
/// ([`super::retry`]), then every task cancelled because of a dependency (its
/// `last_error` starts with `dependency `) goes back to `waiting`: its record first
/// (`cancelled → waiting` at `seq` + 1), then Redis ([`wait_for`], which settles the
/// dependencies that already succeeded). Tasks cancelled by a user stay cancelled.
pub(crate) async fn retry_flow(
    state: &AppState,
    tasks: Vec<StoredTask>,
) -> Result<FlowRetried, ApiError> {
    let mut out = FlowRetried::default();
    let dead: Vec<TaskId> = tasks
        .iter()
        .filter(|t| t.record.status == TaskStatus::Dead)
        .map(|t| t.record.id)
        .collect();
    if !dead.is_empty() {
        let outcomes = super::retry::retry(state, dead)
            .await
            .map_err(|f| f.error)?;
        out.requeued = outcomes
            .iter()
            .filter(|o| matches!(o, super::retry::Outcome::Queued(_)))
            .count() as u64;
    }
    out.waiting = rewait(state, tasks, |reason| reason.starts_with("dependency ")).await?;
    Ok(out)
}

/// After dead tasks were retried one by one (`POST /v1/tasks/{id}/retry`,
/// `POST /v1/queues/{name}/retry-dead`): the tasks of their flows that were cancelled
/// because one of them died (reason `dependency <id> died`, which a whole branch
/// carries) go back to `waiting`, as a flow's retry puts them. Dependents in other
/// flows (a flow depending on an existing task) are left cancelled: their flow's retry
/// puts them back. Returns how many wait again. Its error says that the dead tasks were
/// queued again and names the flow whose retry completes the step.
pub(crate) async fn rewait_dependents(
    state: &AppState,
    retried: &[&TaskRecord],
) -> Result<u64, ApiError> {
    let mut by_flow: BTreeMap<TaskId, HashSet<String>> = BTreeMap::new();
    for r in retried {
        if let Some(flow) = &r.flow {
            by_flow
                .entry(flow.id)
                .or_default()
                .insert(format!("dependency {} died", r.id));
        }
    }
    let mut rewaiting = 0;
    for (flow, reasons) in by_flow {
        let step = async {
            let tasks = state.store.flow_tasks(flow).await?;
            rewait(state, tasks, |reason| reasons.contains(reason)).await
        };
        rewaiting += step.await.map_err(|e| {
            e.with_outcome(&format!(
                "the dead tasks were queued again, but the tasks of flow {flow} cancelled \
                 because they died stay cancelled; POST /v1/flows/{flow}/retry puts them \
                 back to waiting"
            ))
        })?;
    }
    Ok(rewaiting)
}

/// Puts those of `tasks` (of one flow) that were cancelled because of a dependency, with
/// a reason `cause` accepts, back to `waiting`: the record first (`cancelled → waiting`
/// at `seq` + 1), then Redis ([`wait_for`], which settles the dependencies that already
/// finished). Returns how many wait again.
async fn rewait(
    state: &AppState,
    tasks: Vec<StoredTask>,
    cause: impl Fn(&str) -> bool,
) -> Result<u64, ApiError> {
    let now = taskq_core::now();
    let mut waiting = Vec::new();
    for t in tasks {
        let r = &t.record;
        let by_dependency = r.last_error.as_deref().is_some_and(&cause);
        if r.status != TaskStatus::Cancelled || !by_dependency || r.flow.is_none() {
            continue;
        }
        let seq = t.seq + 1;
        let update = StatusUpdate::transition(r.id, seq, TaskStatus::Waiting, r.attempts, now);
        state.store.apply(std::slice::from_ref(&update)).await?;
        let mut rec = t.record;
        rec.status = TaskStatus::Waiting;
        waiting.push((rec, seq));
    }
    let n = waiting.len() as u64;
    wait_for(state, &waiting, HashMap::new(), true).await?;
    Ok(n)
}
