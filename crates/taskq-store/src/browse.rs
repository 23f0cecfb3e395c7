//! Queries of the dashboard: a filtered, sorted, cursor-paginated search over the task
//! records, counts of what a filter matches, counts of one status in one queue, and the
//! conditional delete of finished records.
//!
//! Every filter field maps to an indexed field: `queue`, `st.status` and `type` to the
//! compound indexes that end in `_id`, and the time range to an `_id` range (task ids
//! are UUIDv7, whose text sorts by creation time). The text search is the one part no
//! index serves: it is a regular expression over `type`, `payload` and `last_error`
//! evaluated on the records the indexed part of the filter selects, in `_id` order,
//! until a page is full.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use taskq_core::{QueueName, TaskId, TaskStatus};

use crate::doc::f;
use crate::{Result, Store};

/// Which records [`Store::search`] returns; `None` fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Search {
    pub queue: Option<QueueName>,
    pub status: Option<TaskStatus>,
    /// The task type, exactly.
    pub kind: Option<String>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
    /// A substring (case-sensitive) of the type, the payload's JSON text or the last
    /// error; a whole task id matches that task.
    pub text: Option<String>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

/// The smallest id text of a UUIDv7 created at `t`: every id created at or after `t`
/// compares at least as large, every id created before it smaller.
fn id_floor(t: DateTime<Utc>) -> String {
    let ms = u64::try_from(t.timestamp_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// `s` with every regular-expression metacharacter escaped.
fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\^$.|?*+()[]{}-/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Search {
    /// The MongoDB filter, with the cursor bound when given.
    fn filter(&self, cursor: Option<TaskId>) -> Document {
        let mut q = Document::new();
        if let Some(queue) = &self.queue {
            q.insert(f::QUEUE, queue.as_str());
        }
        if let Some(s) = self.status {
            q.insert(f::ST_STATUS, s.as_str());
        }
        if let Some(k) = &self.kind {
            q.insert(f::TYPE, k.as_str());
        }
        let mut id = Document::new();
        if let Some(t) = self.from {
            id.insert("$gte", id_floor(t));
        }
        if let Some(t) = self.to {
            id.insert("$lt", id_floor(t));
        }
        if let Some(c) = cursor {
            // Both bounds may apply; MongoDB intersects them.
            let op = if self.oldest_first { "$gt" } else { "$lt" };
            if let Some(existing) = id.get(op).cloned() {
                let tighter = match (&existing, op) {
                    (Bson::String(e), "$lt") if e.as_str() < c.to_string().as_str() => existing,
                    (Bson::String(e), "$gt") if e.as_str() > c.to_string().as_str() => existing,
                    _ => Bson::String(c.to_string()),
                };
                id.insert(op, tighter);
            } else {
                id.insert(op, c.to_string());
            }
        }
        if !id.is_empty() {
            q.insert(f::ID, id);
        }
        if let Some(text) = self.text.as_deref().filter(|t| !t.is_empty()) {
            let re = regex_literal(text);
            let mut any = vec![
                doc! { f::TYPE: { "$regex": &re } },
                doc! { f::PAYLOAD: { "$regex": &re } },
                doc! { f::LAST_ERROR: { "$regex": &re } },
            ];
            if let Ok(id) = text.trim().parse::<TaskId>() {
                any.insert(0, doc! { f::ID: id.to_string() });
            }
            q.insert("$or", any);
        }
        q
    }

    fn sort(&self) -> Document {
        doc! { f::ID: if self.oldest_first { 1 } else { -1 } }
    }
}

impl Store {
    /// The indexes [`Store::search`] relies on beyond the ones every query needs:
    /// (type, status, `_id`) for "every dead task of type X".
    pub async fn ensure_browse_indexes(&self) -> Result<()> {
        self.tasks
            .create_index(
                IndexModel::builder()
                    .keys(doc! { f::TYPE: 1, f::ST_STATUS: 1, f::ID: -1 })
                    .options(
                        IndexOptions::builder()
                            .name("type_status_id".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// One page of the records matching `search`, at most `limit` (1 to
    /// [`crate::MAX_LIST_LIMIT`]), after `cursor` (the `next_cursor` of the page before).
    pub async fn search(
        &self,
        search: &Search,
        limit: u32,
        cursor: Option<TaskId>,
    ) -> Result<crate::Page> {
        let limit = limit.clamp(1, crate::MAX_LIST_LIMIT);
        self.page(search.filter(cursor), search.sort(), limit).await
    }

    /// The ids of the records matching `search`, in its order, after `cursor`: for bulk
    /// actions on everything a filter matches.
    pub async fn search_ids(
        &self,
        search: &Search,
        limit: u32,
        cursor: Option<TaskId>,
    ) -> Result<Vec<TaskId>> {
        let docs: Vec<Document> = self
            .tasks
            .find(search.filter(cursor))
            .sort(search.sort())
            .projection(doc! { f::ID: 1 })
            .limit(i64::from(limit.max(1)))
            .await?
            .try_collect()
            .await?;
        docs.iter()
            .map(|d| {
                d.get_str(f::ID)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| crate::Error::Corrupt {
                        id: format!("{:?}", d.get(f::ID)),
                        reason: "`_id` is not a task id".into(),
                    })
            })
            .collect()
    }

    /// How many records match `search`.
    pub async fn count_matching(&self, search: &Search) -> Result<u64> {
        Ok(self.tasks.count_documents(search.filter(None)).await?)
    }

    /// How many records of `queue` are in `status`, counting at most `cap` (a count on
    /// the (queue, status, `_id`) index costs one index entry per record counted, so the
    /// cap bounds it).
    pub async fn count_status(
        &self,
        queue: &QueueName,
        status: TaskStatus,
        cap: u64,
    ) -> Result<u64> {
        Ok(self
            .tasks
            .count_documents(doc! { f::QUEUE: queue.as_str(), f::ST_STATUS: status.as_str() })
            .limit(cap)
            .await?)
    }

    /// Deletes the records among `ids` whose task has finished (succeeded, dead or
    /// cancelled); unfinished ones, which Redis still holds, are left alone. Returns how
    /// many were deleted.
    pub async fn delete_finished(&self, ids: &[TaskId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let finished: Vec<&str> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(TaskStatus::as_str)
            .collect();
        Ok(self
            .tasks
            .delete_many(doc! { f::ID: { "$in": ids }, f::ST_STATUS: { "$in": finished } })
            .await?
            .deleted_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_floor_orders_like_uuidv7_ids() {
        let t = Utc::now();
        let id = TaskId::new().to_string();
        let before = id_floor(t - chrono::Duration::seconds(5));
        let after = id_floor(t + chrono::Duration::seconds(5));
        assert!(before.as_str() <= id.as_str(), "{before} {id}");
        assert!(after.as_str() > id.as_str(), "{after} {id}");
        assert_eq!(before.len(), id.len());
    }

    #[test]
    fn text_is_matched_literally() {
        assert_eq!(regex_literal("a.b*(c)"), "a\\.b\\*\\(c\\)");
        let s = Search {
            text: Some("x".into()),
            ..Search::default()
        };
        assert!(s.filter(None).contains_key("$or"));
    }

    #[test]
    fn cursor_and_time_range_combine() {
        let c = TaskId::new();
        let s = Search {
            from: Some(Utc::now() - chrono::Duration::hours(1)),
            ..Search::default()
        };
        let q = s.filter(Some(c));
        let id = q.get_document(f::ID).map(Document::len).unwrap_or(0);
        assert_eq!(id, 2, "{q}");
    }
}
