//! Recovery after Redis lost its data: MongoDB, the system of record, is read and every
//! unfinished task Redis lacks is enqueued again.
//!
//! Write order: MongoDB is only read (unfinished records, by id, a page at a time); each
//! page is enqueued in Redis with `seq` + 1, due at its schedule (a task that was
//! running is due now: its attempt was lost with Redis). The enqueue script skips tasks
//! Redis still holds, so the call is idempotent: no undo, and on a failure (`503`)
//! calling again finishes the job without duplicating anything. Then the flows' `waiting`
//! tasks are registered again (see [`super::flow::recover_waiting`]), and every queue's
//! task keys get their running counts recounted from the tasks running in Redis
//! (`KEY_RECOUNT`): after a partial loss a lost running task would otherwise hold its
//! key's running slot for ever.

use std::collections::BTreeSet;

use taskq_core::{QueueName, TaskStatus};
use taskq_redis::EnqueueItem;

use crate::AppState;
use crate::error::ApiError;

/// Enqueues every unfinished task Redis lacks. Returns (enqueued, already present).
pub(crate) async fn recover(state: &AppState) -> Result<(u64, u64), ApiError> {
    let mut after = None;
    let (mut enqueued, mut present) = (0u64, 0u64);
    // The queues to recount: those Redis knows, and those of the unfinished records (the
    // set of queues may be lost too).
    let mut queues: BTreeSet<QueueName> = state.broker.queues().await?.into_iter().collect();
    loop {
        let batch = state.store.unfinished(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.record.id);
        queues.extend(batch.iter().map(|t| t.record.queue.clone()));
        let items: Vec<EnqueueItem> = batch
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
                enqueued += 1;
            } else {
                present += 1;
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
        enqueued,
        already_present = present,
        waiting,
        keys_recounted,
        "recovery finished"
    );
    Ok((enqueued, present))
}
