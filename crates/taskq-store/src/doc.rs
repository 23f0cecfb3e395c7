//! The BSON layout of a task record in the `tasks` collection, and the mapping to and
//! from [`TaskRecord`].
//!
//! ```text
//! { _id: "<uuid text>", queue, type, payload: "<compact JSON text>",
//!   priority: "high|normal|low",
//!   st: { seq: Int64, status, attempts: Int64 },
//!   max_attempts, timeout_ms,
//!   backoff: { initial_ms, max_ms, multiplier, jitter },
//!   last_error: string|null, result: "<JSON text>"|null,
//!   created_at, scheduled_at, started_at|null, finished_at|null, updated_at,
//!   traceparent: string|null,
//!   key?: string,               (the task's key, when it has one)
//!   progress?: { attempt: Int64, value: "<JSON text>", at },   (the handler's latest
//!                                report: see `Store::set_progress`)
//!   events: [ { status, at, attempt, error?, worker? } ],
//!   sp?: date,                  (submit pending: see `f::SUBMIT_PENDING`)
//!   flow?: { id, name?, depends_on: [ids] } }   (a flow's task: see `crate::flows`)
//! ```
//!
//! Invariants:
//! - `st` is the record's live state and its fields are always in the order `seq`,
//!   `status`, `attempts`. Status updates write it with `$max`, which compares embedded
//!   documents field by field in order, so the state with the largest `seq` wins
//!   whatever order the updates arrive in (see [`crate::update`]). Never reorder it,
//!   and never write `st` with fields of a different type than Int64 `seq`.
//! - `payload` and `result` are JSON *text*: user JSON may hold `$`-prefixed or dotted
//!   keys and integers beyond Int64, which BSON documents cannot keep exactly.
//! - Times are BSON dates, so they keep millisecond precision; finer parts are dropped.
//! - Counters are written as Int64 and read from Int32, Int64 or an integral Double.
//! - An event is always written with the same field order, because the writer appends
//!   events with `$addToSet` (document equality is order-sensitive) to stay idempotent.
//! - Reading never panics: anything unexpected is [`Error::Corrupt`].

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use serde_json::Value;
use taskq_core::{Backoff, Priority, Progress, QueueName, TaskEvent, TaskId, TaskRecord};

use crate::{Error, Result, StoredTask};

/// Field names of the task document.
pub(crate) mod f {
    pub const ID: &str = "_id";
    pub const QUEUE: &str = "queue";
    pub const TYPE: &str = "type";
    pub const PAYLOAD: &str = "payload";
    pub const PRIORITY: &str = "priority";
    /// The live-state subdocument `{ seq, status, attempts }`.
    pub const ST: &str = "st";
    /// Fields of `st`, in their required order.
    pub const SEQ: &str = "seq";
    pub const STATUS: &str = "status";
    pub const ATTEMPTS: &str = "attempts";
    /// Dotted paths into `st`, for queries and indexes.
    pub const ST_SEQ: &str = "st.seq";
    pub const ST_STATUS: &str = "st.status";
    pub const ST_ATTEMPTS: &str = "st.attempts";
    pub const MAX_ATTEMPTS: &str = "max_attempts";
    pub const TIMEOUT_MS: &str = "timeout_ms";
    pub const BACKOFF: &str = "backoff";
    pub const LAST_ERROR: &str = "last_error";
    pub const RESULT: &str = "result";
    pub const CREATED_AT: &str = "created_at";
    pub const SCHEDULED_AT: &str = "scheduled_at";
    pub const STARTED_AT: &str = "started_at";
    pub const FINISHED_AT: &str = "finished_at";
    pub const UPDATED_AT: &str = "updated_at";
    pub const TRACEPARENT: &str = "traceparent";
    pub const EVENTS: &str = "events";
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// The task's key (absent when it has none).
    pub const KEY: &str = "key";
    /// `<queue>:<idempotency key>`, under a unique sparse index: at most one record per
    /// key and queue. Removed when the key's retention ends, so the key can be reused.
    pub const IDEM: &str = "idem";
    /// Submit pending: set (to the creation time) on a record the api inserted and not
    /// yet known to be in Redis; cleared by the first status update, or by the submit
    /// check once Redis holds the task. A record that keeps it past the grace period
    /// was never enqueued (see `Store::pending_submits`).
    pub const SUBMIT_PENDING: &str = "sp";
    /// A flow's task: `{ id, name?, depends_on }` (see `crate::flows`).
    pub const FLOW: &str = "flow";
    /// The handler's latest progress report (see `Store::set_progress`).
    pub const PROGRESS: &str = "progress";
    pub const FLOW_ID: &str = "flow.id";
}

/// The value indexed for an idempotency key.
pub(crate) fn idem(queue: &str, key: &str) -> String {
    format!("{queue}:{key}")
}

/// A time as a BSON date (millisecond precision).
pub(crate) fn date(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

/// A `u64` as Int64, or an encode error naming the field.
pub(crate) fn int64(id: TaskId, field: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Encode {
        id,
        reason: format!("`{field}` = {v} does not fit in a BSON Int64"),
    })
}

/// JSON as its compact text.
pub(crate) fn json_text(id: TaskId, field: &str, v: &Value) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Encode {
        id,
        reason: format!("`{field}` cannot be written as JSON: {e}"),
    })
}

fn opt<T: Into<Bson>>(v: Option<T>) -> Bson {
    v.map_or(Bson::Null, Into::into)
}

/// The live-state subdocument `st`, fields in the order `$max` relies on.
pub(crate) fn state_doc(
    id: TaskId,
    seq: u64,
    status: taskq_core::TaskStatus,
    attempts: u32,
) -> Result<Document> {
    Ok(doc! {
        f::SEQ: int64(id, f::ST_SEQ, seq)?,
        f::STATUS: status.as_str(),
        f::ATTEMPTS: i64::from(attempts),
    })
}

/// [`state_doc`] for a `seq` known to fit in Int64.
pub(crate) fn state_doc_unchecked(
    seq: i64,
    status: taskq_core::TaskStatus,
    attempts: u32,
) -> Document {
    doc! {
        f::SEQ: seq,
        f::STATUS: status.as_str(),
        f::ATTEMPTS: i64::from(attempts),
    }
}

/// One history entry. Field order is fixed (see the module invariants).
pub(crate) fn event_doc(e: &TaskEvent) -> Document {
    let mut d = doc! {
        "status": e.status.as_str(),
        "at": date(e.at),
        "attempt": i64::from(e.attempt),
    };
    if let Some(err) = &e.error {
        d.insert("error", err.as_str());
    }
    if let Some(w) = &e.worker {
        d.insert("worker", w.as_str());
    }
    d
}

/// A progress report, as the record keeps it.
pub(crate) fn progress_doc(id: TaskId, p: &Progress) -> Result<Document> {
    Ok(doc! {
        "attempt": i64::from(p.attempt),
        "value": json_text(id, "progress.value", &p.value)?,
        "at": date(p.at),
    })
}

/// The document of a new record with the given `seq`.
pub(crate) fn record_doc(rec: &TaskRecord, seq: u64) -> Result<Document> {
    let id = rec.id;
    let result = match &rec.result {
        Some(v) => Bson::String(json_text(id, f::RESULT, v)?),
        None => Bson::Null,
    };
    let mut d = doc! {
        f::ID: id.to_string(),
        f::QUEUE: rec.queue.as_str(),
        f::TYPE: rec.kind.as_str(),
        f::PAYLOAD: json_text(id, f::PAYLOAD, &rec.payload)?,
        f::PRIORITY: rec.priority.as_str(),
        f::ST: state_doc(id, seq, rec.status, rec.attempts)?,
        f::MAX_ATTEMPTS: i64::from(rec.max_attempts),
        f::TIMEOUT_MS: int64(id, f::TIMEOUT_MS, rec.timeout_ms)?,
        f::BACKOFF: {
            "initial_ms": int64(id, "backoff.initial_ms", rec.backoff.initial_ms)?,
            "max_ms": int64(id, "backoff.max_ms", rec.backoff.max_ms)?,
            "multiplier": rec.backoff.multiplier,
            "jitter": rec.backoff.jitter,
        },
        f::LAST_ERROR: opt(rec.last_error.as_deref()),
        f::RESULT: result,
        f::CREATED_AT: date(rec.created_at),
        f::SCHEDULED_AT: date(rec.scheduled_at),
        f::STARTED_AT: opt(rec.started_at.map(date)),
        f::FINISHED_AT: opt(rec.finished_at.map(date)),
        f::UPDATED_AT: date(rec.updated_at),
        f::TRACEPARENT: opt(rec.traceparent.as_deref()),
        f::EVENTS: rec.events.iter().map(event_doc).collect::<Vec<_>>(),
    };
    if let Some(key) = &rec.idempotency_key {
        d.insert(f::IDEMPOTENCY_KEY, key.as_str());
        d.insert(f::IDEM, idem(rec.queue.as_str(), key));
    }
    if let Some(link) = &rec.flow {
        d.insert(f::FLOW, crate::flows::link_doc(link));
    }
    if let Some(key) = &rec.key {
        d.insert(f::KEY, key.as_str());
    }
    if let Some(p) = &rec.progress {
        d.insert(f::PROGRESS, progress_doc(id, p)?);
    }
    Ok(d)
}

/// The projection reading only a record's id and result (see [`id_and_result`]).
pub(crate) fn id_and_result_fields() -> Document {
    doc! { f::ID: 1, f::RESULT: 1 }
}

/// A task's id and result from a document holding (at least) those two fields.
pub(crate) fn id_and_result(doc: &Document) -> Result<(TaskId, Option<Value>)> {
    let label = label(doc);
    let r = Reader {
        doc,
        label: &label,
        path: "",
    };
    Ok((r.parse(f::ID)?, r.opt_json(f::RESULT)?))
}

/// How errors name a document: its `_id`, shortened.
fn label(doc: &Document) -> String {
    match doc.get(f::ID) {
        Some(Bson::String(s)) => s.chars().take(64).collect(),
        Some(other) => other.to_string().chars().take(64).collect(),
        None => "<no _id>".to_owned(),
    }
}

/// Reads a stored document back. History is returned oldest first: events are sorted
/// by time (stably), because updates from different processes may append them out of
/// order.
pub(crate) fn stored_task(doc: &Document) -> Result<StoredTask> {
    let label = label(doc);
    let r = Reader {
        doc,
        label: &label,
        path: "",
    };
    let id: TaskId = r.parse(f::ID)?;
    let backoff_doc = r.doc(f::BACKOFF)?;
    let b = r.nested(f::BACKOFF, backoff_doc);
    let backoff = Backoff {
        initial_ms: b.uint("initial_ms")?,
        max_ms: b.uint("max_ms")?,
        multiplier: b.float("multiplier")?,
        jitter: b.float("jitter")?,
    };
    let st_doc = r.doc(f::ST)?;
    let st = r.nested(f::ST, st_doc);
    let mut events = Vec::new();
    // A record written without history has none (the model defaults it too).
    let stored_events = match r.get_opt(f::EVENTS) {
        None => &[][..],
        Some(_) => r.array(f::EVENTS)?,
    };
    for (i, item) in stored_events.iter().enumerate() {
        let path = format!("{}[{i}]", f::EVENTS);
        let Bson::Document(e) = item else {
            return Err(r.corrupt(&path, "is not a document"));
        };
        let er = Reader {
            doc: e,
            label: &label,
            path: &path,
        };
        events.push(TaskEvent {
            status: er.parse("status")?,
            at: er.date("at")?,
            attempt: er.uint("attempt")?,
            error: er.opt_str("error")?,
            worker: er.opt_str("worker")?,
        });
    }
    events.sort_by_key(|e| e.at);
    let record = TaskRecord {
        id,
        queue: r.parse::<QueueName>(f::QUEUE)?,
        kind: r.str(f::TYPE)?.to_owned(),
        payload: r.json(f::PAYLOAD)?,
        priority: r.priority(f::PRIORITY)?,
        status: st.parse(f::STATUS)?,
        attempts: st.uint(f::ATTEMPTS)?,
        max_attempts: r.uint(f::MAX_ATTEMPTS)?,
        timeout_ms: r.uint(f::TIMEOUT_MS)?,
        backoff,
        last_error: r.opt_str(f::LAST_ERROR)?,
        result: r.opt_json(f::RESULT)?,
        created_at: r.date(f::CREATED_AT)?,
        scheduled_at: r.date(f::SCHEDULED_AT)?,
        started_at: r.opt_date(f::STARTED_AT)?,
        finished_at: r.opt_date(f::FINISHED_AT)?,
        updated_at: r.date(f::UPDATED_AT)?,
        traceparent: r.opt_str(f::TRACEPARENT)?,
        idempotency_key: r.opt_str(f::IDEMPOTENCY_KEY)?,
        flow: match doc.get(f::FLOW) {
            None | Some(Bson::Null) => None,
            Some(_) => Some(crate::flows::read_link(r.doc(f::FLOW)?, &label)?),
        },
        key: r.opt_str(f::KEY)?,
        progress: match doc.get(f::PROGRESS) {
            None | Some(Bson::Null) => None,
            Some(_) => {
                let p = r.nested(f::PROGRESS, r.doc(f::PROGRESS)?);
                Some(Progress {
                    attempt: p.uint("attempt")?,
                    value: p.json("value")?,
                    at: p.date("at")?,
                })
            }
        },
        events,
    };
    let seq = st.uint(f::SEQ)?;
    Ok(StoredTask {
        record,
        seq,
        submit_pending: doc
            .get_datetime(f::SUBMIT_PENDING)
            .ok()
            .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis())),
    })
}

/// Reads typed fields of one (sub)document, turning every surprise into
/// [`Error::Corrupt`] with the field's path.
struct Reader<'a> {
    doc: &'a Document,
    label: &'a str,
    path: &'a str,
}

impl<'a> Reader<'a> {
    fn nested<'b>(&'b self, path: &'b str, doc: &'b Document) -> Reader<'b> {
        Reader {
            doc,
            label: self.label,
            path,
        }
    }

    fn corrupt(&self, field: &str, what: impl std::fmt::Display) -> Error {
        let path = if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        };
        Error::Corrupt {
            id: self.label.to_owned(),
            reason: format!("field `{path}` {what}"),
        }
    }

    /// The field's value; a missing field is an error, `null` is returned as is.
    fn get(&self, field: &str) -> Result<&'a Bson> {
        self.doc
            .get(field)
            .ok_or_else(|| self.corrupt(field, "is missing"))
    }

    /// `None` for a missing or `null` field.
    fn get_opt(&self, field: &str) -> Option<&'a Bson> {
        match self.doc.get(field) {
            None | Some(Bson::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn str(&self, field: &str) -> Result<&'a str> {
        match self.get(field)? {
            Bson::String(s) => Ok(s),
            other => Err(self.corrupt(
                field,
                format!("is {:?}, expected a string", other.element_type()),
            )),
        }
    }

    fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.get_opt(field) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.corrupt(
                field,
                format!("is {:?}, expected a string or null", other.element_type()),
            )),
        }
    }

    fn parse<T>(&self, field: &str) -> Result<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.str(field)?
            .parse()
            .map_err(|e: T::Err| self.corrupt(field, format!("is invalid: {e}")))
    }

    fn priority(&self, field: &str) -> Result<Priority> {
        let s = self.str(field)?;
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| self.corrupt(field, format!("has unknown priority `{s}`")))
    }

    fn int(&self, field: &str, v: &Bson) -> Result<i64> {
        match v {
            Bson::Int32(n) => Ok(i64::from(*n)),
            Bson::Int64(n) => Ok(*n),
            // Written by hand in a shell, numbers are doubles.
            Bson::Double(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(*x as i64),
            other => Err(self.corrupt(
                field,
                format!("is {:?}, expected an integer", other.element_type()),
            )),
        }
    }

    /// A non-negative integer that fits `T`.
    fn uint<T: TryFrom<i64>>(&self, field: &str) -> Result<T> {
        let n = self.int(field, self.get(field)?)?;
        T::try_from(n).map_err(|_| self.corrupt(field, format!("= {n} is out of range")))
    }

    fn float(&self, field: &str) -> Result<f64> {
        match self.get(field)? {
            Bson::Double(x) => Ok(*x),
            Bson::Int32(n) => Ok(f64::from(*n)),
            Bson::Int64(n) => Ok(*n as f64),
            other => Err(self.corrupt(
                field,
                format!("is {:?}, expected a number", other.element_type()),
            )),
        }
    }

    fn to_time(&self, field: &str, d: &bson::DateTime) -> Result<DateTime<Utc>> {
        DateTime::<Utc>::from_timestamp_millis(d.timestamp_millis())
            .ok_or_else(|| self.corrupt(field, "is a date out of range"))
    }

    fn date(&self, field: &str) -> Result<DateTime<Utc>> {
        match self.get(field)? {
            Bson::DateTime(d) => self.to_time(field, d),
            other => Err(self.corrupt(
                field,
                format!("is {:?}, expected a date", other.element_type()),
            )),
        }
    }

    fn opt_date(&self, field: &str) -> Result<Option<DateTime<Utc>>> {
        match self.get_opt(field) {
            None => Ok(None),
            Some(Bson::DateTime(d)) => self.to_time(field, d).map(Some),
            Some(other) => Err(self.corrupt(
                field,
                format!("is {:?}, expected a date or null", other.element_type()),
            )),
        }
    }

    fn json(&self, field: &str) -> Result<Value> {
        serde_json::from_str(self.str(field)?)
            .map_err(|e| self.corrupt(field, format!("is not JSON text: {e}")))
    }

    fn opt_json(&self, field: &str) -> Result<Option<Value>> {
        match self.opt_str(field)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| self.corrupt(field, format!("is not JSON text: {e}"))),
        }
    }

    fn doc(&self, field: &str) -> Result<&'a Document> {
        match self.get(field)? {
            Bson::Document(d) => Ok(d),
            other => Err(self.corrupt(
                field,
                format!("is {:?}, expected a document", other.element_type()),
            )),
        }
    }

    fn array(&self, field: &str) -> Result<&'a [Bson]> {
        match self.get(field)? {
            Bson::Array(a) => Ok(a),
            other => Err(self.corrupt(
                field,
                format!("is {:?}, expected an array", other.element_type()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use taskq_core::TaskStatus;

    fn ms(n: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(n).single().unwrap_or_default()
    }

    fn record() -> TaskRecord {
        TaskRecord {
            id: TaskId::new(),
            queue: QueueName::default_queue(),
            kind: "email".into(),
            payload: serde_json::json!({"$set": {"a.b": 18446744073709551615u64}, "x": [1.5, null]}),
            priority: Priority::High,
            status: TaskStatus::Running,
            attempts: 2,
            max_attempts: 5,
            timeout_ms: 30_000,
            backoff: Backoff::default(),
            last_error: Some("boom".into()),
            result: None,
            created_at: ms(1_700_000_000_000),
            scheduled_at: ms(1_700_000_000_500),
            started_at: Some(ms(1_700_000_001_000)),
            finished_at: None,
            updated_at: ms(1_700_000_001_000),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            idempotency_key: Some("order-42".into()),
            flow: None,
            key: Some("customer-7".into()),
            progress: Some(Progress {
                attempt: 2,
                value: serde_json::json!({"$done": 40, "total": 100}),
                at: ms(1_700_000_001_200),
            }),
            events: vec![
                TaskEvent {
                    status: TaskStatus::Queued,
                    at: ms(1_700_000_000_000),
                    attempt: 0,
                    error: None,
                    worker: None,
                },
                TaskEvent {
                    status: TaskStatus::Running,
                    at: ms(1_700_000_001_000),
                    attempt: 1,
                    error: None,
                    worker: Some("w-1".into()),
                },
            ],
        }
    }

    #[test]
    fn round_trips() -> Result<()> {
        let rec = record();
        let d = record_doc(&rec, 1)?;
        assert_eq!(
            d.get_str("payload").ok(),
            Some(r#"{"$set":{"a.b":18446744073709551615},"x":[1.5,null]}"#)
        );
        assert_eq!(
            d.get_document("st").ok(),
            Some(&doc! { "seq": 1_i64, "status": "running", "attempts": 2_i64 }),
            "`st` keeps the field order `$max` relies on"
        );
        for gone in ["status", "attempts", "seq"] {
            assert!(!d.contains_key(gone), "no top-level `{gone}`");
        }
        let back = stored_task(&d)?;
        assert_eq!(back.seq, 1);
        assert_eq!(back.record, rec);
        Ok(())
    }

    #[test]
    fn corrupt_documents_are_errors() -> Result<()> {
        let rec = record();
        let good = record_doc(&rec, 3)?;
        let cases: Vec<(&str, Bson, &str)> = vec![
            (
                "st",
                doc! { "seq": 3_i64, "status": "done", "attempts": 0_i64 }.into(),
                "st.status",
            ),
            ("payload", "{not json".into(), "payload"),
            (
                "st",
                doc! { "seq": 3_i64, "status": "queued", "attempts": -1_i64 }.into(),
                "st.attempts",
            ),
            (
                "st",
                doc! { "status": "queued", "attempts": 0_i64 }.into(),
                "st.seq",
            ),
            ("st", "queued".into(), "st"),
            ("created_at", "yesterday".into(), "created_at"),
            ("backoff", doc! { "initial_ms": 1 }.into(), "backoff.max_ms"),
            (
                "events",
                vec![Bson::from(doc! { "status": "queued" })].into(),
                "events[0].at",
            ),
            ("_id", "not-a-uuid".into(), "_id"),
            ("priority", "urgent".into(), "priority"),
        ];
        for (field, value, path) in cases {
            let mut d = good.clone();
            d.insert(field, value);
            match stored_task(&d) {
                Err(Error::Corrupt { reason, .. }) => {
                    assert!(reason.contains(&format!("`{path}`")), "{field}: {reason}");
                }
                other => panic!("{field}: expected corrupt, got {other:?}"),
            }
        }
        let mut d = good.clone();
        d.remove("queue");
        assert!(matches!(stored_task(&d), Err(Error::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn events_come_back_oldest_first_and_nulls_are_none() -> Result<()> {
        let mut rec = record();
        rec.events.reverse();
        let mut d = record_doc(&rec, 1)?;
        d.remove("traceparent");
        // Counters written by other tools may be Int32.
        d.insert(
            "st",
            doc! { "seq": 1_i32, "status": "running", "attempts": 2_i32 },
        );
        let back = stored_task(&d)?.record;
        assert_eq!(back.events[0].status, TaskStatus::Queued);
        assert_eq!(back.traceparent, None);
        assert_eq!(back.attempts, 2);
        Ok(())
    }
}
