//! Reads of task records: one by id, a filtered page newest first, the unfinished ones
//! in id order (what recovery re-enqueues), and counts by status. Each filter is served
//! by `_id` or one of the indexes [`Store::ensure_indexes`] creates; the counts group
//! every record (of one queue, when given).

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use taskq_core::{QueueName, TaskId, TaskRecord, TaskStatus};

use crate::doc::{f, stored_task};
use crate::{Error, Result, Store, StoredTask};

/// Largest page [`Store::list`] returns; larger limits are lowered to it.
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// Which tasks [`Store::list`] returns; `None` fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<TaskStatus>,
    /// The task type.
    pub kind: Option<String>,
    pub queue: Option<QueueName>,
    /// The task's key.
    pub key: Option<String>,
}

/// One page of [`Store::list`], newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub tasks: Vec<TaskRecord>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<TaskId>,
}

impl Store {
    /// Up to `limit` unfinished tasks (scheduled, queued, running or retrying) with ids
    /// above `after`, oldest first: what recovery re-enqueues after Redis was lost.
    pub async fn unfinished(&self, after: Option<TaskId>, limit: u32) -> Result<Vec<StoredTask>> {
        let live: Vec<&str> = [
            TaskStatus::Scheduled,
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Retrying,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        self.by_status_after(doc! { "$in": live }, after, limit)
            .await
    }

    /// Up to `limit` tasks whose status matches `status` (a value or a query on it) with
    /// ids above `after`, oldest first.
    pub(crate) async fn by_status_after(
        &self,
        status: impl Into<Bson>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<StoredTask>> {
        let mut q = doc! { f::ST_STATUS: status.into() };
        if let Some(a) = after {
            q.insert(f::ID, doc! { "$gt": a.to_string() });
        }
        let docs: Vec<Document> = self
            .tasks
            .find(q)
            .sort(doc! { f::ID: 1 })
            .limit(i64::from(limit.clamp(1, MAX_LIST_LIMIT)))
            .await?
            .try_collect()
            .await?;
        docs.iter().map(stored_task).collect()
    }

    /// The record of one task.
    pub async fn get(&self, id: TaskId) -> Result<Option<StoredTask>> {
        let doc = self.tasks.find_one(doc! { f::ID: id.to_string() }).await?;
        doc.as_ref().map(stored_task).transpose()
    }

    /// Tasks matching `filter`, newest first, at most `limit` (clamped to
    /// 1..=[`MAX_LIST_LIMIT`]). `cursor` is the `next_cursor` of the previous page; the
    /// next page holds the tasks older than it, so tasks created meanwhile (which have
    /// larger ids) never shift or repeat entries of later pages.
    pub async fn list(
        &self,
        filter: &ListFilter,
        limit: u32,
        cursor: Option<TaskId>,
    ) -> Result<Page> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let mut q = Document::new();
        if let Some(s) = filter.status {
            q.insert(f::ST_STATUS, s.as_str());
        }
        if let Some(k) = &filter.kind {
            q.insert(f::TYPE, k.as_str());
        }
        if let Some(queue) = &filter.queue {
            q.insert(f::QUEUE, queue.as_str());
        }
        if let Some(k) = &filter.key {
            q.insert(f::KEY, k.as_str());
        }
        if let Some(c) = cursor {
            q.insert(f::ID, doc! { "$lt": c.to_string() });
        }
        self.page(q, doc! { f::ID: -1 }, limit).await
    }

    /// Up to `limit` records matching `filter` in `sort` order (`limit` already clamped),
    /// with the cursor of the next page when there is one: the last id of this page.
    pub(crate) async fn page(&self, filter: Document, sort: Document, limit: u32) -> Result<Page> {
        // One extra document tells whether another page exists.
        let docs: Vec<Document> = self
            .tasks
            .find(filter)
            .sort(sort)
            .limit(i64::from(limit) + 1)
            .await?
            .try_collect()
            .await?;
        let more = docs.len() > limit as usize;
        let tasks = docs
            .iter()
            .take(limit as usize)
            .map(|d| stored_task(d).map(|s| s.record))
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = if more {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok(Page { tasks, next_cursor })
    }

    /// How many tasks are in each status, optionally in one queue. Every status is
    /// present in the map, with 0 when no task has it.
    pub async fn count_by_status(
        &self,
        queue: Option<&QueueName>,
    ) -> Result<HashMap<TaskStatus, u64>> {
        let mut pipeline = Vec::new();
        if let Some(q) = queue {
            pipeline.push(doc! { "$match": { f::QUEUE: q.as_str() } });
        }
        pipeline
            .push(doc! { "$group": { "_id": format!("${}", f::ST_STATUS), "n": { "$sum": 1 } } });
        let groups: Vec<Document> = self.tasks.aggregate(pipeline).await?.try_collect().await?;
        let mut counts: HashMap<TaskStatus, u64> =
            TaskStatus::ALL.into_iter().map(|s| (s, 0)).collect();
        for g in groups {
            let status = match g.get("_id") {
                Some(Bson::String(s)) => s.parse::<TaskStatus>().map_err(|e| Error::Corrupt {
                    id: "<some task>".to_owned(),
                    reason: format!("field `{}`: {e}", f::ST_STATUS),
                })?,
                other => {
                    return Err(Error::Corrupt {
                        id: "<some task>".to_owned(),
                        reason: format!("field `{}` is {other:?}", f::ST_STATUS),
                    });
                }
            };
            let n = match g.get("n") {
                Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
                Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
                Some(Bson::Double(n)) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
                _ => None,
            }
            .ok_or_else(|| Error::Reply {
                command: "aggregate",
                reason: format!("count is not a non-negative integer: {g}"),
            })?;
            *counts.entry(status).or_default() += n;
        }
        Ok(counts)
    }
}
