//! Dead letters: a manual retry puts a dead task's record back to `queued` in one
//! atomic write; a purge deletes every record of a queue in one status.

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, doc};
use mongodb::options::ReturnDocument;
use taskq_core::{QueueName, TaskId, TaskStatus};

use crate::doc::{date, event_doc, f, stored_task};
use crate::{Error, Result, Store, StoredTask};

/// What [`Store::requeue_dead`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum RequeueOutcome {
    /// The task was dead and is now queued; the record after the change.
    Requeued(Box<StoredTask>),
    /// The task exists but is not dead; its current status.
    NotDead(TaskStatus),
    NotFound,
}

impl Store {
    /// Deletes every record of `queue` in `status` (e.g. purging the dead letters).
    pub async fn delete_by_status(&self, queue: &QueueName, status: TaskStatus) -> Result<u64> {
        let res = self
            .tasks
            .delete_many(doc! { f::QUEUE: queue.as_str(), f::ST_STATUS: status.as_str() })
            .await?;
        Ok(res.deleted_count)
    }

    /// Puts a dead task back in the queued state, atomically: status `queued`, attempts
    /// 0, `finished_at` cleared, `scheduled_at` and `updated_at` set to `now`, `seq`
    /// incremented, and a `queued` event appended. (The dates are `$set`, not `$max`ed:
    /// this is the one write that may move them back.) The caller re-enqueues the task in
    /// the broker and must continue its transition counter above the returned `seq`.
    pub async fn requeue_dead(&self, id: TaskId, now: DateTime<Utc>) -> Result<RequeueOutcome> {
        let event = event_doc(&taskq_core::TaskEvent {
            status: TaskStatus::Queued,
            at: now,
            attempt: 0,
            error: None,
            worker: None,
        });
        let updated = self
            .tasks
            .find_one_and_update(
                doc! { f::ID: id.to_string(), f::ST_STATUS: TaskStatus::Dead.as_str() },
                // Dotted paths change the values of `st` in place, keeping its field
                // order; `$inc` keeps `seq` an Int64.
                doc! {
                    "$set": {
                        f::ST_STATUS: TaskStatus::Queued.as_str(),
                        f::ST_ATTEMPTS: 0_i64,
                        f::FINISHED_AT: Bson::Null,
                        f::SCHEDULED_AT: date(now),
                        f::UPDATED_AT: date(now),
                    },
                    "$inc": { f::ST_SEQ: 1_i64 },
                    "$push": { f::EVENTS: event },
                },
            )
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(doc) = updated {
            return Ok(RequeueOutcome::Requeued(Box::new(stored_task(&doc)?)));
        }
        let current = self
            .tasks
            .find_one(doc! { f::ID: id.to_string() })
            .projection(doc! { f::ST_STATUS: 1 })
            .await?;
        match current {
            None => Ok(RequeueOutcome::NotFound),
            Some(doc) => {
                let status = doc
                    .get_document(f::ST)
                    .ok()
                    .and_then(|st| st.get_str(f::STATUS).ok())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::Corrupt {
                        id: id.to_string(),
                        reason: format!("field `{}` is missing or unknown", f::ST_STATUS),
                    })?;
                Ok(RequeueOutcome::NotDead(status))
            }
        }
    }
}
