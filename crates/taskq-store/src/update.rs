//! Status updates: what the broker reports after each transition, how one update becomes
//! write statements, and how updates for one task are merged before a flush.
//!
//! Invariants:
//! - The record's `seq` only grows. The `$set` of an update is guarded by
//!   `seq < update.seq`, so an update that arrives after a newer one is a no-op and the
//!   status never goes backwards.
//! - History is never lost: events are appended by a second, unguarded statement.
//! - Both statements are idempotent (`$set` is guarded, events are appended with
//!   `$addToSet`), so a batch may be re-sent after an ambiguous failure, such as a
//!   connection cut after the server applied it, without duplicating history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;
use taskq_core::{TaskEvent, TaskId, TaskStatus};

use crate::Result;
use crate::doc::{date, event_doc, f, int64, json_text};

/// One state change of one task, to be recorded in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub id: TaskId,
    /// The broker's per-task transition counter; strictly increasing per task. The store
    /// applies the fields below only when this is larger than the stored `seq`, which
    /// is 1 for a freshly inserted record: the first transition must carry 2 or more.
    pub seq: u64,
    pub status: TaskStatus,
    /// When the change happened; becomes the record's `updated_at`.
    pub at: DateTime<Utc>,
    pub attempts: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub scheduled_at: Option<DateTime<Utc>>,
    /// `Some` sets `last_error`.
    pub last_error: Option<String>,
    /// `Some` sets `result` (stored as JSON text).
    pub result: Option<Value>,
    /// History entries to append. Appended even when the update is stale.
    pub events: Vec<TaskEvent>,
}

impl StatusUpdate {
    /// An update that only changes the status (no optional fields, no events).
    pub fn new(id: TaskId, seq: u64, status: TaskStatus, at: DateTime<Utc>) -> Self {
        Self {
            id,
            seq,
            status,
            at,
            attempts: None,
            started_at: None,
            finished_at: None,
            scheduled_at: None,
            last_error: None,
            result: None,
            events: Vec::new(),
        }
    }

    /// Folds `later` (an update for the same task with a seq ≥ `self.seq`) into `self`:
    /// status, seq and time come from `later`, each optional field from `later` when it
    /// has one, and the events of `later` follow those of `self`.
    fn absorb(&mut self, later: StatusUpdate) {
        debug_assert_eq!(self.id, later.id);
        self.seq = later.seq;
        self.status = later.status;
        self.at = later.at;
        fn keep<T>(mine: &mut Option<T>, theirs: Option<T>) {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        keep(&mut self.attempts, later.attempts);
        keep(&mut self.started_at, later.started_at);
        keep(&mut self.finished_at, later.finished_at);
        keep(&mut self.scheduled_at, later.scheduled_at);
        keep(&mut self.last_error, later.last_error);
        keep(&mut self.result, later.result);
        self.events.extend(later.events);
    }

    /// The guarded `$set` statement (an element of an `update` command's `updates`).
    pub(crate) fn set_statement(&self) -> Result<Document> {
        let seq = int64(self.id, f::SEQ, self.seq)?;
        let mut set = doc! {
            f::STATUS: self.status.as_str(),
            f::SEQ: seq,
            f::UPDATED_AT: date(self.at),
        };
        if let Some(a) = self.attempts {
            set.insert(f::ATTEMPTS, i64::from(a));
        }
        if let Some(t) = self.started_at {
            set.insert(f::STARTED_AT, date(t));
        }
        if let Some(t) = self.finished_at {
            set.insert(f::FINISHED_AT, date(t));
        }
        if let Some(t) = self.scheduled_at {
            set.insert(f::SCHEDULED_AT, date(t));
        }
        if let Some(e) = &self.last_error {
            set.insert(f::LAST_ERROR, e.as_str());
        }
        if let Some(v) = &self.result {
            set.insert(f::RESULT, json_text(self.id, f::RESULT, v)?);
        }
        Ok(doc! {
            "q": { f::ID: self.id.to_string(), f::SEQ: { "$lt": seq } },
            "u": { "$set": set },
            "upsert": false,
            "multi": false,
        })
    }

    /// The unguarded statement appending the events, if there are any.
    pub(crate) fn events_statement(&self) -> Option<Document> {
        if self.events.is_empty() {
            return None;
        }
        let events: Vec<Bson> = self.events.iter().map(|e| event_doc(e).into()).collect();
        Some(doc! {
            "q": { f::ID: self.id.to_string() },
            "u": { "$addToSet": { f::EVENTS: { "$each": events } } },
            "upsert": false,
            "multi": false,
        })
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
    fn coalesces_per_task_in_seq_order() {
        let a = TaskId::new();
        let b = TaskId::new();
        let mut running = StatusUpdate::new(a, 2, TaskStatus::Running, t(1));
        running.attempts = Some(1);
        running.started_at = Some(t(1));
        running.events = vec![ev(TaskStatus::Running, 1, 1)];
        let mut done = StatusUpdate::new(a, 3, TaskStatus::Succeeded, t(2));
        done.finished_at = Some(t(2));
        done.result = Some(serde_json::json!({"ok": true}));
        done.events = vec![ev(TaskStatus::Succeeded, 2, 1)];
        let other = StatusUpdate::new(b, 2, TaskStatus::Running, t(1));

        // The later update arrives first: the merge still follows seq.
        let out = coalesce(vec![done.clone(), other.clone(), running.clone()]);
        assert_eq!(out.len(), 2);
        let (m, n) = &out[0];
        assert_eq!(*n, 2);
        assert_eq!(m.seq, 3);
        assert_eq!(m.status, TaskStatus::Succeeded);
        assert_eq!(m.at, t(2));
        assert_eq!(m.attempts, Some(1));
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
    fn later_some_overrides_earlier_some() {
        let a = TaskId::new();
        let mut first = StatusUpdate::new(a, 2, TaskStatus::Retrying, t(1));
        first.last_error = Some("boom".into());
        first.scheduled_at = Some(t(10));
        let mut second = StatusUpdate::new(a, 4, TaskStatus::Dead, t(2));
        second.last_error = Some("bang".into());
        let out = coalesce(vec![first, second]);
        assert_eq!(out[0].0.last_error.as_deref(), Some("bang"));
        assert_eq!(out[0].0.scheduled_at, Some(t(10)));
        assert_eq!(out[0].0.status, TaskStatus::Dead);
    }

    #[test]
    fn statements_have_the_documented_shape() -> Result<()> {
        let a = TaskId::new();
        let mut u = StatusUpdate::new(a, 7, TaskStatus::Succeeded, t(5));
        u.result = Some(serde_json::json!({"$k.x": 18446744073709551615u64}));
        let set = u.set_statement()?;
        assert_eq!(
            set,
            doc! {
                "q": { "_id": a.to_string(), "seq": { "$lt": 7_i64 } },
                "u": { "$set": {
                    "status": "succeeded",
                    "seq": 7_i64,
                    "updated_at": date(t(5)),
                    "result": "{\"$k.x\":18446744073709551615}",
                } },
                "upsert": false,
                "multi": false,
            }
        );
        assert!(u.events_statement().is_none());
        u.seq = u64::MAX;
        assert!(matches!(
            u.set_statement(),
            Err(crate::Error::Encode { .. })
        ));
        Ok(())
    }
}
