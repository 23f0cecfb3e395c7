//! Recovery after Redis lost its data: MongoDB, the system of record, is read and every
//! unfinished task Redis lacks is enqueued again.
//!
//! Write order: MongoDB is only read (unfinished records, by id, a page at a time). Per
//! page and queue:
//!
//! 1. Redis is asked which of the tasks it holds (`PRESENT`); those are left alone.
//! 2. The queue's outbox is read: a task absent from Redis with an update in it ran to
//!    its end (its final update is on its way to MongoDB) and is left alone too.
//! 3. MongoDB is read again for the rest: a record finished since the page was read ran
//!    to its end as well (its update was applied and left the outbox before step 2).
//! 4. The tasks still unfinished are enqueued with `seq` + 1, due at their schedule (a
//!    task that was running is due now: its attempt was lost with Redis). The enqueue
//!    script skips tasks Redis holds by then.
//!
//! A task absent in step 1 cannot finish in Redis afterwards (only an enqueue brings it
//! back), so steps 2 and 3 see every task that ran to its end: recovery never runs a
//! finished task again, even on a healthy Redis under load. The call is idempotent: no
//! undo, and on a failure (`503`, also when an outbox holds more updates than can be read
//! to tell) calling again finishes the job without duplicating anything. Then the flows'
//! `waiting` tasks are registered again (see [`super::flow::recover_waiting`]), and every
//! queue's task keys get their running counts recounted from the tasks running in Redis
//! (`KEY_RECOUNT`): after a partial loss a lost running task would otherwise hold its
//! key's running slot for ever.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use taskq_core::{QueueName, TaskId, TaskStatus};
use taskq_redis::EnqueueItem;
use taskq_store::StoredTask;

use crate::AppState;
use crate::error::ApiError;

/// Records read from MongoDB at once.
const PAGE: u32 = 1000;

/// What a recovery did.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Unfinished tasks Redis lacked, enqueued again.
    pub enqueued: u64,
    /// Unfinished tasks Redis still held (left alone).
    pub present: u64,
    /// Unfinished records whose tasks had run to their end in Redis, their final updates
    /// on their way to MongoDB (left alone).
    pub finishing: u64,
}

/// Enqueues every unfinished task Redis lacks (see the module documentation).
pub(crate) async fn recover(state: &AppState) -> Result<Recovery, ApiError> {
    let mut after = None;
    let mut out = Recovery::default();
    // The queues to recount: those Redis knows, and those of the unfinished records (the
    // set of queues may be lost too).
    let mut queues: BTreeSet<QueueName> = state.broker.queues().await?.into_iter().collect();
    loop {
        let batch = state.store.unfinished(after, PAGE).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.record.id);
        let mut by_queue: BTreeMap<&QueueName, Vec<TaskId>> = BTreeMap::new();
        for t in &batch {
            by_queue
                .entry(&t.record.queue)
                .or_default()
                .push(t.record.id);
        }
        let mut lost = Vec::new();
        for (queue, ids) in by_queue {
            queues.insert(queue.clone());
            let (_, held) = state.broker.present(queue, &ids).await?;
            let absent: Vec<TaskId> = ids
                .iter()
                .zip(held)
                .filter_map(|(id, held)| (!held).then_some(*id))
                .collect();
            out.present += (ids.len() - absent.len()) as u64;
            if absent.is_empty() {
                continue;
            }
            let Some(ran) = state.broker.outbox_tasks(queue).await? else {
                return Err(ApiError::outbox_behind(queue));
            };
            for id in absent {
                if ran.contains(&id) {
                    out.finishing += 1;
                } else {
                    lost.push(id);
                }
            }
        }
        if lost.is_empty() {
            continue;
        }
        // The lost tasks' records read again: one finished since the page was read ran
        // to its end (one deleted meanwhile is left out too). The rest keep the page's
        // order, their submit order, which a key's tasks are queued in.
        let mut again: HashMap<TaskId, StoredTask> = state
            .store
            .get_many(&lost)
            .await?
            .into_iter()
            .filter(|t| !t.record.status.is_final())
            .map(|t| (t.record.id, t))
            .collect();
        let fresh: Vec<StoredTask> = lost.iter().filter_map(|id| again.remove(id)).collect();
        out.finishing += (lost.len() - fresh.len()) as u64;
        let items: Vec<EnqueueItem> = fresh
            .iter()
            .map(|t| {
                let mut item = EnqueueItem::from_record(&t.record, t.seq + 1);
                if t.record.status == TaskStatus::Running {
                    // Its attempt was lost with Redis; it runs again now.
                    item.due_ms = taskq_core::now_ms();
                }
                item
            })
            .collect();
        for added in state.broker.enqueue(&items).await? {
            if added {
                out.enqueued += 1;
            } else {
                out.present += 1;
            }
        }
    }
    // After the unfinished tasks, so the waiting ones find their dependencies' queues
    // known again.
    let waiting = super::flow::recover_waiting(state).await?;
    let mut keys_recounted = 0;
    for queue in &queues {
        keys_recounted += state.broker.key_recount(queue).await?;
    }
    tracing::info!(
        enqueued = out.enqueued,
        already_present = out.present,
        finishing = out.finishing,
        waiting,
        keys_recounted,
        "recovery finished"
    );
    Ok(out)
}
