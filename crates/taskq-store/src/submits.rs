//! The submit side of a record's life, before its task's first transition: the api
//! inserts records marked submit-pending (the time its submit began, `sp`), removes them
//! again when their enqueue failed, and a repeat of an idempotent submit takes a record
//! over or frees its key; the workers' submit check reads the records still marked and
//! settles them once it has looked at Redis. The mark goes with the task's first status
//! update ([`crate::update`]), so a marked record is one whose task may never have
//! reached Redis.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use taskq_core::{QueueName, TaskId, TaskRecord, TaskStatus};

use crate::doc::{date, event_doc, f, record_doc, stored_task};
use crate::read::MAX_LIST_LIMIT;
use crate::{Error, Result, Store, StoredTask};

impl StoredTask {
    /// Whether the record is that of a failed submit: cancelled as [`SUBMIT_FAILED`] by
    /// [`Store::settle_submits`] and not moved on since by a status update of its task
    /// (it is still at `seq` 1).
    pub fn is_failed_submit(&self) -> bool {
        self.seq == 1
            && self.submit_pending.is_none()
            && self.record.status == TaskStatus::Cancelled
            && self.record.last_error.as_deref() == Some(SUBMIT_FAILED_ERROR)
    }
}

/// A record still marked submit-pending (see [`Store::pending_submits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSubmit {
    pub id: TaskId,
    pub queue: QueueName,
    pub created_at: DateTime<Utc>,
}

/// The reason a record whose task never reached Redis ends `cancelled` with: its
/// `last_error` starts with it, and its `cancelled` event carries it as error.
pub const SUBMIT_FAILED: &str = "submit_failed";

/// The `last_error` of such a record.
const SUBMIT_FAILED_ERROR: &str = "submit_failed: the record was written but the task never \
     reached Redis (the api stopped or failed mid-submit); it never ran";

/// The document of a record the api inserts: `seq` 1, marked submit-pending.
fn new_record_doc(rec: &TaskRecord) -> Result<Document> {
    let mut d = record_doc(rec, 1)?;
    d.insert(f::SUBMIT_PENDING, date(rec.created_at));
    Ok(d)
}

impl Store {
    /// Writes a new record with `seq` 1, marked submit-pending until its first status
    /// update (or a submit check) shows that its task reached Redis.
    pub async fn insert(&self, rec: &TaskRecord) -> Result<()> {
        self.tasks.insert_one(new_record_doc(rec)?).await?;
        Ok(())
    }

    /// Writes new records with `seq` 1 in one unordered `insert_many`. On error some
    /// records may have been written; [`Store::delete`] removes them.
    pub async fn insert_many(&self, recs: &[TaskRecord]) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let docs = recs
            .iter()
            .map(new_record_doc)
            .collect::<Result<Vec<_>>>()?;
        self.tasks.insert_many(docs).ordered(false).await?;
        Ok(())
    }

    /// Removes records (to undo a submit whose enqueue failed). Returns how many existed.
    pub async fn delete(&self, ids: &[TaskId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let res = self
            .tasks
            .delete_many(doc! { f::ID: { "$in": ids } })
            .await?;
        Ok(res.deleted_count)
    }

    /// Removes the records of a submit whose enqueue did not happen: each only while it
    /// still carries the mark `mark` (the submit's own), so a record another api has
    /// taken over meanwhile ([`Store::take_over_submit`]) stays. Returns how many were
    /// removed.
    pub async fn delete_unsubmitted(&self, ids: &[TaskId], mark: DateTime<Utc>) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let res = self
            .tasks
            .delete_many(doc! { f::ID: { "$in": ids }, f::SUBMIT_PENDING: date(mark) })
            .await?;
        Ok(res.deleted_count)
    }

    /// Takes over the submit of a record still marked `old` (its submit can no longer
    /// enqueue it: the api that wrote it died or gave up): the mark becomes `now`, so the
    /// submit check gives the new owner a full grace period and the old owner's undo
    /// ([`Store::delete_unsubmitted`]) no longer matches. Returns whether this caller won
    /// the record (exactly one of concurrent callers does).
    pub async fn take_over_submit(
        &self,
        id: TaskId,
        old: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let res = self
            .tasks
            .update_one(
                doc! { f::ID: id.to_string(), f::SUBMIT_PENDING: date(old) },
                doc! { "$set": { f::SUBMIT_PENDING: date(now) } },
            )
            .await?;
        Ok(res.modified_count == 1)
    }

    /// The task submitted to `queue` with idempotency key `key`, if any.
    pub async fn find_by_idempotency_key(
        &self,
        queue: &QueueName,
        key: &str,
    ) -> Result<Option<StoredTask>> {
        let doc = self
            .tasks
            .find_one(doc! { f::IDEM: crate::doc::idem(queue.as_str(), key) })
            .await?;
        doc.as_ref().map(stored_task).transpose()
    }

    /// Frees `key` in `queue` when the task holding it was created before `before` (its
    /// retention is over), so a new submit may use it. Returns whether it was freed.
    pub async fn release_idempotency_key(
        &self,
        queue: &QueueName,
        key: &str,
        before: DateTime<Utc>,
    ) -> Result<bool> {
        let res = self
            .tasks
            .update_one(
                doc! {
                    f::IDEM: crate::doc::idem(queue.as_str(), key),
                    f::CREATED_AT: { "$lt": date(before) },
                },
                doc! { "$unset": { f::IDEM: "" } },
            )
            .await?;
        Ok(res.modified_count > 0)
    }

    /// Frees idempotency key `key` of `queue` from record `id` if that record is a failed
    /// submit ([`StoredTask::is_failed_submit`]) whose task the caller found to have never
    /// reached Redis, so a repeat of the key can submit the task anew. Conditional on the
    /// record still being such a record and still holding the key (the unique index on the
    /// key is sparse: a record without it is not indexed). Returns whether it was freed.
    pub async fn release_failed_submit_key(
        &self,
        id: TaskId,
        queue: &QueueName,
        key: &str,
    ) -> Result<bool> {
        let res = self
            .tasks
            .update_one(
                doc! {
                    f::ID: id.to_string(),
                    f::IDEM: crate::doc::idem(queue.as_str(), key),
                    f::SUBMIT_PENDING: { "$exists": false },
                    f::ST_SEQ: 1_i64,
                    f::ST_STATUS: TaskStatus::Cancelled.as_str(),
                    f::LAST_ERROR: SUBMIT_FAILED_ERROR,
                },
                doc! { "$unset": { f::IDEM: "" } },
            )
            .await?;
        Ok(res.modified_count > 0)
    }

    /// Up to `limit` records still marked submit-pending that were created before
    /// `before`: tasks whose status never changed since the api wrote them, and of which
    /// no submit check has yet seen in Redis. Served by a sparse index on the mark, which
    /// only holds such records (each is cleared by the task's first status update).
    pub async fn pending_submits(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingSubmit>> {
        let docs: Vec<Document> = self
            .tasks
            .find(doc! { f::SUBMIT_PENDING: { "$lt": date(before) } })
            .projection(doc! { f::ID: 1, f::QUEUE: 1, f::SUBMIT_PENDING: 1 })
            .limit(i64::from(limit.clamp(1, MAX_LIST_LIMIT)))
            .await?
            .try_collect()
            .await?;
        docs.iter()
            .map(|d| {
                let corrupt = |what: &str| Error::Corrupt {
                    id: d.get_str(f::ID).unwrap_or("<no _id>").to_owned(),
                    reason: format!("pending submit: {what}"),
                };
                Ok(PendingSubmit {
                    id: d
                        .get_str(f::ID)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| corrupt("bad _id"))?,
                    queue: d
                        .get_str(f::QUEUE)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| corrupt("bad queue"))?,
                    created_at: d
                        .get_datetime(f::SUBMIT_PENDING)
                        .ok()
                        .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis()))
                        .ok_or_else(|| corrupt("bad mark"))?,
                })
            })
            .collect()
    }

    /// Settles submit-pending records after a look at Redis: `never_enqueued` (Redis does
    /// not hold them) end `cancelled` with reason [`SUBMIT_FAILED`] — unless their status
    /// changed meanwhile, i.e. their task did reach Redis — and every record of both
    /// lists loses its mark. Each write is conditional on the mark, so any number of
    /// callers may settle the same records at once. The cancellation keeps `seq` 1, so a
    /// status update from Redis (a task that did run after all) still overrides it. A
    /// cancelled record keeps its idempotency key until a repeat of the key has made sure
    /// its task never reached Redis ([`Store::release_failed_submit_key`]).
    /// Returns how many records were cancelled.
    pub async fn settle_submits(
        &self,
        never_enqueued: &[TaskId],
        in_redis: &[TaskId],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let strings = |ids: &[TaskId]| ids.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut cancelled = 0;
        if !never_enqueued.is_empty() {
            let waiting: Vec<&str> = [TaskStatus::Queued, TaskStatus::Scheduled]
                .iter()
                .map(|s| s.as_str())
                .collect();
            let event = event_doc(&taskq_core::TaskEvent {
                status: TaskStatus::Cancelled,
                at: now,
                attempt: 0,
                error: Some(SUBMIT_FAILED.to_owned()),
                worker: None,
            });
            let res = self
                .tasks
                .update_many(
                    doc! {
                        f::ID: { "$in": strings(never_enqueued) },
                        f::SUBMIT_PENDING: { "$exists": true },
                        f::ST_SEQ: 1_i64,
                        f::ST_STATUS: { "$in": waiting },
                    },
                    doc! {
                        "$set": {
                            f::ST: crate::doc::state_doc_unchecked(1, TaskStatus::Cancelled, 0),
                            f::FINISHED_AT: date(now),
                            f::UPDATED_AT: date(now),
                            f::LAST_ERROR: SUBMIT_FAILED_ERROR,
                        },
                        "$unset": { f::SUBMIT_PENDING: "" },
                        "$push": { f::EVENTS: event },
                    },
                )
                .await?;
            cancelled = res.modified_count;
        }
        let all: Vec<TaskId> = never_enqueued.iter().chain(in_redis).copied().collect();
        if !all.is_empty() {
            self.tasks
                .update_many(
                    doc! {
                        f::ID: { "$in": strings(&all) },
                        f::SUBMIT_PENDING: { "$exists": true },
                    },
                    doc! { "$unset": { f::SUBMIT_PENDING: "" } },
                )
                .await?;
        }
        Ok(cancelled)
    }
}
