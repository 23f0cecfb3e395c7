//! Status updates: what the broker reports after each transition, how one update becomes
//! a write statement, and how updates for one task are merged before a flush.
//!
//! One update is one update document, addressed by `_id` alone (so that every server,
//! mongo-java-server included, finds the record through the `_id` index):
//!
//! ```text
//! u: { $max: { st: { seq, status, attempts }, updated_at, started_at?, finished_at?,
//!              scheduled_at? },
//!      $set: { last_error?, result? },
//!      $unset: { sp: "" },
//!      $addToSet: { events: { $each: [ ... ] } } }
//! ```
//!
//! Updates whose documents are identical (the same transition of several tasks made by
//! one script call: same seq, status, attempts, times, worker and event) are sent as one
//! multi-document statement `{ q: { _id: { $in: [...] } }, u, multi: true }`; any other
//! as `{ q: { _id }, u }` (see [`crate::Store::apply`]).
//!
//! `$unset: { sp }` clears the record's submit-pending mark: a task that made a
//! transition in Redis was enqueued (see `Store::pending_submits`).
//!
//! Invariants:
//! - Order independence comes from `$max` instead of a guard in the query: `st` is
//!   compared field by field in order, `seq` first, so the stored state is always the
//!   one with the largest `seq`; an update that arrives after a newer one leaves `st`
//!   as it is, and the status never goes backwards. `seq` is strictly increasing per
//!   task, so two different states never share a `seq`.
//! - The dates (`updated_at`, `started_at`, `finished_at`, `scheduled_at`) only grow:
//!   each takes the latest time any update carried, whatever their order.
//! - `last_error` and `result` are plain `$set`s: the last update to arrive that carries
//!   one wins.
//! - History is never lost: events are appended even when the update is stale.
//! - The statement is idempotent (`$max` of the same value, `$set` of the same value,
//!   events appended with `$addToSet`), so a batch may be re-sent after an ambiguous
//!   failure, such as a connection cut after the server applied it, without
//!   duplicating history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;
use taskq_core::{TaskEvent, TaskId, TaskStatus};

use crate::Result;
use crate::doc::{date, event_doc, f, json_text, state_doc};

/// One state change of one task, to be recorded in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub id: TaskId,
    /// The broker's per-task transition counter; strictly increasing per task. The
    /// store keeps the `status` and `attempts` of the update with the largest `seq`;
    /// a freshly inserted record has `seq` 1, so the first transition must carry 2 or
    /// more.
    pub seq: u64,
    pub status: TaskStatus,
    /// The task's attempt count after this transition (0 before the first run).
    pub attempts: u32,
    /// When the change happened; `updated_at` becomes the latest of these.
    pub at: DateTime<Utc>,
    /// `Some` moves `started_at` forward to it (dates only grow).
    pub started_at: Option<DateTime<Utc>>,
    /// `Some` moves `finished_at` forward to it (dates only grow).
    pub finished_at: Option<DateTime<Utc>>,
    /// `Some` moves `scheduled_at` forward to it (dates only grow).
    pub scheduled_at: Option<DateTime<Utc>>,
    /// `Some` sets `last_error`, even when the update is stale.
    pub last_error: Option<String>,
    /// `Some` sets `result` (stored as JSON text), even when the update is stale.
    pub result: Option<Value>,
    /// History entries to append. Appended even when the update is stale.
    pub events: Vec<TaskEvent>,
}

impl StatusUpdate {
    /// The transition of task `id` to `status` at `at`, as it is recorded: the status
    /// with its `seq` and attempt count, the date the status implies (`started_at` for
    /// `running`, `finished_at` for a final status, both `at`), and one history event
    /// `{ status, at, attempt: attempts }`. The other methods add to it; the status is
    /// stated once, here.
    pub fn transition(
        id: TaskId,
        seq: u64,
        status: TaskStatus,
        attempts: u32,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            started_at: (status == TaskStatus::Running).then_some(at),
            finished_at: status.is_final().then_some(at),
            events: vec![TaskEvent {
                status,
                at,
                attempt: attempts,
                error: None,
                worker: None,
            }],
            ..Self::new(id, seq, status, attempts, at)
        }
    }

    /// The worker that made the transition, on its event.
    pub fn by(mut self, worker: impl Into<Option<String>>) -> Self {
        let worker = worker.into();
        for e in &mut self.events {
            e.worker.clone_from(&worker);
        }
        self
    }

    /// The error of the transition: the record's `last_error` and its event's `error`.
    pub fn error(mut self, error: impl Into<Option<String>>) -> Self {
        self.last_error = error.into();
        for e in &mut self.events {
            e.error.clone_from(&self.last_error);
        }
        self
    }

    /// An error on the transition's event only; the record's `last_error` stays as it
    /// is (the transition explains itself without replacing the task's last failure).
    pub fn event_error(mut self, error: impl Into<String>) -> Self {
        let error = error.into();
        for e in &mut self.events {
            e.error = Some(error.clone());
        }
        self
    }

    /// The handler's result, stored as JSON text.
    pub fn result(mut self, result: impl Into<Option<Value>>) -> Self {
        self.result = result.into();
        self
    }

    /// When the task runs next (a retry's due time).
    pub fn scheduled_at(mut self, at: impl Into<Option<DateTime<Utc>>>) -> Self {
        self.scheduled_at = at.into();
        self
    }

    /// A finish time other than the transition's own (e.g. the time of an earlier
    /// death that this transition restores).
    pub fn finished_at(mut self, at: DateTime<Utc>) -> Self {
        self.finished_at = Some(at);
        self
    }

    /// A bare update: the status and attempt count only, with no implied date and no
    /// history event. [`StatusUpdate::transition`] is what records a transition.
    pub fn new(id: TaskId, seq: u64, status: TaskStatus, attempts: u32, at: DateTime<Utc>) -> Self {
        Self {
            id,
            seq,
            status,
            attempts,
            at,
            started_at: None,
            finished_at: None,
            scheduled_at: None,
            last_error: None,
            result: None,
            events: Vec::new(),
        }
    }

    /// Folds `later` (an update for the same task with a seq ≥ `self.seq`) into `self`
    /// the way the store would apply both: seq, status and attempts come from `later`,
    /// each date is the latest of the two, `last_error` and `result` come from `later`
    /// when it has one, and the events of `later` follow those of `self`.
    fn absorb(&mut self, later: StatusUpdate) {
        debug_assert_eq!(self.id, later.id);
        self.seq = later.seq;
        self.status = later.status;
        self.attempts = later.attempts;
        self.at = self.at.max(later.at);
        fn latest<T: Ord>(mine: &mut Option<T>, theirs: Option<T>) {
            // `None` < `Some`: a missing date never wins.
            if theirs > *mine {
                *mine = theirs;
            }
        }
        fn keep<T>(mine: &mut Option<T>, theirs: Option<T>) {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        latest(&mut self.started_at, later.started_at);
        latest(&mut self.finished_at, later.finished_at);
        latest(&mut self.scheduled_at, later.scheduled_at);
        keep(&mut self.last_error, later.last_error);
        keep(&mut self.result, later.result);
        self.events.extend(later.events);
    }

    /// The update document of this update (the `u` of its statement); see the module
    /// documentation.
    pub(crate) fn update_doc(&self) -> Result<Document> {
        let mut max = doc! {
            f::ST: state_doc(self.id, self.seq, self.status, self.attempts)?,
            f::UPDATED_AT: date(self.at),
        };
        if let Some(t) = self.started_at {
            max.insert(f::STARTED_AT, date(t));
        }
        if let Some(t) = self.finished_at {
            max.insert(f::FINISHED_AT, date(t));
        }
        if let Some(t) = self.scheduled_at {
            max.insert(f::SCHEDULED_AT, date(t));
        }
        let mut set = Document::new();
        if let Some(e) = &self.last_error {
            set.insert(f::LAST_ERROR, e.as_str());
        }
        if let Some(v) = &self.result {
            set.insert(f::RESULT, json_text(self.id, f::RESULT, v)?);
        }
        let mut u = doc! { "$max": max };
        if !set.is_empty() {
            u.insert("$set", set);
        }
        u.insert("$unset", doc! { f::SUBMIT_PENDING: "" });
        if !self.events.is_empty() {
            let events: Vec<Bson> = self.events.iter().map(|e| event_doc(e).into()).collect();
            u.insert("$addToSet", doc! { f::EVENTS: { "$each": events } });
        }
        Ok(u)
    }

    /// The update's statement on its own (an element of an `update` command's
    /// `updates`): query exactly `{ _id }`.
    #[cfg(test)]
    pub(crate) fn statement(&self) -> Result<Document> {
        Ok(statement(&[self.id], self.update_doc()?))
    }
}

/// The statement applying update document `u` to the records `ids` (at least one): by
/// `{ _id }` for one, by `{ _id: { $in } }` with `multi` for several.
pub(crate) fn statement(ids: &[TaskId], u: Document) -> Document {
    let q = match ids {
        [one] => doc! { f::ID: one.to_string() },
        many => {
            let ids: Vec<String> = many.iter().map(ToString::to_string).collect();
            doc! { f::ID: { "$in": ids } }
        }
    };
    doc! {
        "q": q,
        "u": u,
        "upsert": false,
        "multi": ids.len() > 1,
    }
}

/// Merges the updates of each task into one, in seq order, keeping the order in which
/// tasks first appear. Returns each merged update with the number of updates it
/// replaces.
pub(crate) fn coalesce(updates: Vec<StatusUpdate>) -> Vec<(StatusUpdate, usize)> {
    let mut slot: HashMap<TaskId, usize> = HashMap::with_capacity(updates.len());
    let mut groups: Vec<Vec<StatusUpdate>> = Vec::new();
    for u in updates {
        match slot.get(&u.id) {
            Some(&i) => groups[i].push(u),
            None => {
                slot.insert(u.id, groups.len());
                groups.push(vec![u]);
            }
        }
    }
    groups
        .into_iter()
        .filter_map(|mut g| {
            let n = g.len();
            // Stable: updates with equal seq keep their arrival order.
            g.sort_by_key(|u| u.seq);
            let mut it = g.into_iter();
            let mut merged = it.next()?;
            for later in it {
                merged.absorb(later);
            }
            Some((merged, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn ev(status: TaskStatus, s: i64, attempt: u32) -> TaskEvent {
        TaskEvent {
            status,
            at: t(s),
            attempt,
            error: None,
            worker: Some("w1".into()),
        }
    }

    #[test]
    fn a_transition_implies_its_dates_and_one_event() {
        let a = TaskId::new();
        let running =
            StatusUpdate::transition(a, 2, TaskStatus::Running, 1, t(1)).by("w1".to_owned());
        assert_eq!(
            (running.started_at, running.finished_at),
            (Some(t(1)), None)
        );
        assert_eq!(running.events, vec![ev(TaskStatus::Running, 1, 1)]);
        assert_eq!(
            (running.last_error.as_deref(), running.result.as_ref()),
            (None, None)
        );
        for status in [
            TaskStatus::Succeeded,
            TaskStatus::Dead,
            TaskStatus::Cancelled,
        ] {
            let u = StatusUpdate::transition(a, 3, status, 1, t(2));
            assert_eq!(
                (u.started_at, u.finished_at),
                (None, Some(t(2))),
                "{status}"
            );
            assert_eq!(u.events.len(), 1);
            assert_eq!(
                (u.events[0].status, u.events[0].worker.as_deref()),
                (status, None)
            );
        }
        let retry = StatusUpdate::transition(a, 3, TaskStatus::Retrying, 1, t(2))
            .error("boom".to_owned())
            .scheduled_at(t(9));
        assert_eq!((retry.started_at, retry.finished_at), (None, None));
        assert_eq!(retry.scheduled_at, Some(t(9)));
        assert_eq!(retry.last_error.as_deref(), Some("boom"));
        assert_eq!(retry.events[0].error.as_deref(), Some("boom"));
        // An event-only error leaves `last_error` alone; an explicit finish time wins.
        let back = StatusUpdate::transition(a, 4, TaskStatus::Dead, 1, t(5))
            .event_error("why")
            .finished_at(t(3));
        assert_eq!(back.last_error, None);
        assert_eq!(back.events[0].error.as_deref(), Some("why"));
        assert_eq!(back.finished_at, Some(t(3)));
    }

    #[test]
    fn coalesces_per_task_in_seq_order() {
        let a = TaskId::new();
        let b = TaskId::new();
        let running =
            StatusUpdate::transition(a, 2, TaskStatus::Running, 1, t(1)).by("w1".to_owned());
        let done = StatusUpdate::transition(a, 3, TaskStatus::Succeeded, 1, t(2))
            .result(serde_json::json!({"ok": true}))
            .by("w1".to_owned());
        let other = StatusUpdate::new(b, 2, TaskStatus::Running, 1, t(1));

        // The later update arrives first: the merge still follows seq.
        let out = coalesce(vec![done.clone(), other.clone(), running.clone()]);
        assert_eq!(out.len(), 2);
        let (m, n) = &out[0];
        assert_eq!(*n, 2);
        assert_eq!(m.seq, 3);
        assert_eq!(m.status, TaskStatus::Succeeded);
        assert_eq!(m.attempts, 1);
        assert_eq!(m.at, t(2));
        assert_eq!(m.started_at, Some(t(1)));
        assert_eq!(m.finished_at, Some(t(2)));
        assert_eq!(m.result, done.result);
        assert_eq!(
            m.events,
            vec![running.events[0].clone(), done.events[0].clone()]
        );
        assert_eq!(out[1], (other, 1));
    }

    #[test]
    fn merge_takes_newest_state_latest_dates_and_last_error() {
        let a = TaskId::new();
        let mut first = StatusUpdate::new(a, 2, TaskStatus::Retrying, 1, t(5));
        first.last_error = Some("boom".into());
        first.scheduled_at = Some(t(10));
        // Newer by seq, but its clock is behind and it schedules earlier.
        let mut second = StatusUpdate::new(a, 4, TaskStatus::Dead, 2, t(3));
        second.last_error = Some("bang".into());
        second.scheduled_at = Some(t(7));
        let out = coalesce(vec![second, first]);
        let m = &out[0].0;
        assert_eq!((m.seq, m.status, m.attempts), (4, TaskStatus::Dead, 2));
        assert_eq!(m.last_error.as_deref(), Some("bang"));
        assert_eq!(m.at, t(5), "dates take the max, as `$max` would");
        assert_eq!(m.scheduled_at, Some(t(10)));
        assert_eq!(m.finished_at, None);
    }

    #[test]
    fn statement_has_the_documented_shape() -> Result<()> {
        let a = TaskId::new();
        let mut u = StatusUpdate::transition(a, 7, TaskStatus::Succeeded, 3, t(5))
            .result(serde_json::json!({"$k.x": 18446744073709551615u64}))
            .by("w1".to_owned());
        assert_eq!(
            u.statement()?,
            doc! {
                "q": { "_id": a.to_string() },
                "u": {
                    "$max": {
                        "st": { "seq": 7_i64, "status": "succeeded", "attempts": 3_i64 },
                        "updated_at": date(t(5)),
                        "finished_at": date(t(5)),
                    },
                    "$set": { "result": "{\"$k.x\":18446744073709551615}" },
                    "$unset": { "sp": "" },
                    "$addToSet": { "events": { "$each": [ {
                        "status": "succeeded",
                        "at": date(t(5)),
                        "attempt": 3_i64,
                        "worker": "w1",
                    } ] } },
                },
                "upsert": false,
                "multi": false,
            }
        );
        u.seq = u64::MAX;
        assert!(matches!(u.statement(), Err(crate::Error::Encode { .. })));
        Ok(())
    }

    #[test]
    fn several_records_share_one_multi_statement() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let st = statement(&[a, b], doc! { "$max": { "x": 1 } });
        assert_eq!(
            st,
            doc! {
                "q": { "_id": { "$in": [a.to_string(), b.to_string()] } },
                "u": { "$max": { "x": 1 } },
                "upsert": false,
                "multi": true,
            }
        );
    }

    #[test]
    fn statement_query_is_exactly_the_id() -> Result<()> {
        // Only `{ _id: x }` uses the `_id` index on every server we support; anything
        // more (a seq guard, a status) makes mongo-java-server scan the collection.
        let a = TaskId::new();
        let bare = StatusUpdate::new(a, 2, TaskStatus::Running, 1, t(1));
        let mut full = bare.clone();
        full.started_at = Some(t(1));
        full.scheduled_at = Some(t(2));
        full.finished_at = Some(t(3));
        full.last_error = Some("e".into());
        full.result = Some(serde_json::json!(1));
        full.events = vec![ev(TaskStatus::Running, 1, 1)];
        for u in [&bare, &full] {
            let st = u.statement()?;
            assert_eq!(
                st.get_document("q").ok(),
                Some(&doc! { "_id": a.to_string() })
            );
            let ops: Vec<&str> = st
                .get_document("u")
                .map(|u| u.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if u.events.is_empty() {
                // Operators without fields are left out (an empty `$set` is an error).
                assert_eq!(ops, ["$max", "$unset"]);
            } else {
                assert_eq!(ops, ["$max", "$set", "$unset", "$addToSet"]);
            }
        }
        Ok(())
    }
}
