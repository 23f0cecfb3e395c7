//! The transactional outbox: the status updates the scripts decided, as the store
//! writers read, apply and acknowledge them.
//!
//! Every script that moves a task between states appends one entry to its queue's outbox
//! stream in the same atomic step (the entry layout is described in [`crate::scripts`]; the scripts
//! [`outbox_ack`](crate::scripts::outbox_ack) and
//! [`outbox_sweep`](crate::scripts::outbox_sweep) acknowledge entries and remove stopped writers).
//! The writers of all workers form one consumer group ([`OUTBOX_GROUP`]), each with a
//! consumer of its own, so every entry is delivered to one writer; the writer
//! acknowledges it ([`Broker::outbox_ack`]) only after MongoDB applied its updates. An
//! entry whose writer died stays pending under that writer's name until another writer
//! claims it ([`Broker::outbox_claim`]) after an idle time. Acknowledged entries are
//! trimmed from the stream.
//!
//! Invariants:
//! - An entry leaves the stream only after it was acknowledged, and it is acknowledged
//!   only after its updates were applied (or refused for good by the store).
//! - Delivering an entry twice (a claim racing a slow writer, a crash between apply and
//!   acknowledgement) is harmless: applying a status update is idempotent.

use std::collections::HashSet;
use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};
use taskq_core::{QueueName, TaskId, TaskStatus};

use crate::conn::{BLOCK_SECONDS, Conn};
use crate::keys::OUTBOX_GROUP;
use crate::{Broker, BrokerError, QueueKeys, Result};

/// Most outbox entries [`Broker::outbox_tasks`] reads (a few milliseconds of Redis time);
/// a longer outbox is a writer far behind, and the question waits until it caught up.
pub const OUTBOX_SCAN: usize = 10_000;

/// One task's status update as a script recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxUpdate {
    pub id: TaskId,
    /// The task's transition counter after this transition.
    pub seq: u64,
    pub status: TaskStatus,
    /// The task's attempt count after this transition.
    pub attempts: u32,
    /// When the transition happened (ms since the epoch).
    pub at_ms: i64,
    /// The worker that made it; `None` for promotion and reaping.
    pub worker: Option<String>,
    /// The attempt's error (failures and expired leases).
    pub error: Option<String>,
    /// The handler's result as JSON text (successes).
    pub result: Option<String>,
    /// When a retrying task runs again (ms since the epoch).
    pub due_ms: Option<i64>,
}

/// One outbox entry: the updates of one script call.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    /// The stream id; acknowledge it with [`Broker::outbox_ack`].
    pub id: String,
    pub updates: Vec<OutboxUpdate>,
    /// Fields that could not be read (logged; the entry is still acknowledged once the
    /// rest is applied, so one malformed field never blocks the stream).
    pub malformed: usize,
}

/// The optional part of a task's update in an entry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Extras {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    due: Option<i64>,
}

/// The extras text of an update: empty when there are none.
pub(crate) fn extras(error: Option<&str>, result: Option<&str>, due: Option<i64>) -> String {
    if error.is_none() && result.is_none() && due.is_none() {
        return String::new();
    }
    serde_json::to_string(&Extras {
        e: error.map(str::to_owned),
        r: result.map(str::to_owned),
        due,
    })
    .unwrap_or_default()
}

impl OutboxEntry {
    /// Reads one entry from its stream id and field list.
    fn parse(id: String, fields: &[Value]) -> Self {
        let mut at_ms = 0;
        let mut worker = None;
        let mut malformed = 0;
        let mut tasks = Vec::new();
        for pair in fields.chunks_exact(2) {
            let (Ok(name), Ok(value)) = (
                crate::reply::string(&pair[0]),
                crate::reply::string(&pair[1]),
            ) else {
                malformed += 1;
                continue;
            };
            match name.as_str() {
                "at" => at_ms = value.parse().unwrap_or(0),
                "w" => worker = (!value.is_empty()).then_some(value),
                _ => tasks.push((name, value)),
            }
        }
        let mut updates = Vec::with_capacity(tasks.len());
        for (task, value) in tasks {
            match parse_update(&task, &value, at_ms, &worker) {
                Some(u) => updates.push(u),
                None => {
                    tracing::warn!(entry = %id, task, value, "malformed outbox field");
                    malformed += 1;
                }
            }
        }
        OutboxEntry {
            id,
            updates,
            malformed,
        }
    }
}

/// `<seq>|<status>|<attempts>|<extras>` of task `task`.
fn parse_update(
    task: &str,
    value: &str,
    at_ms: i64,
    worker: &Option<String>,
) -> Option<OutboxUpdate> {
    let mut parts = value.splitn(4, '|');
    let seq = parts.next()?.parse().ok()?;
    let status = parts.next()?.parse().ok()?;
    let attempts = parts.next()?.parse().ok()?;
    let extras = parts.next()?;
    let extras: Extras = if extras.is_empty() {
        Extras::default()
    } else {
        serde_json::from_str(extras).ok()?
    };
    Some(OutboxUpdate {
        id: task.parse().ok()?,
        seq,
        status,
        attempts,
        at_ms,
        worker: worker.clone(),
        error: extras.e,
        result: extras.r,
        due_ms: extras.due,
    })
}

/// Entries of an `XREADGROUP` or `XAUTOCLAIM` entry list. Entries whose fields are gone
/// (deleted while pending) come back with no updates, to be acknowledged.
fn entries(v: &Value) -> Result<Vec<OutboxEntry>> {
    let Value::Array(list) = v else {
        return Err(BrokerError::Protocol(format!(
            "expected outbox entries, got {v:?}"
        )));
    };
    list.iter()
        .map(|e| match e {
            Value::Array(pair) if pair.len() == 2 => {
                let id = crate::reply::string(&pair[0])?;
                Ok(match &pair[1] {
                    Value::Array(fields) => OutboxEntry::parse(id, fields),
                    Value::Map(kv) => {
                        let flat: Vec<Value> = kv
                            .iter()
                            .flat_map(|(k, v)| [k.clone(), v.clone()])
                            .collect();
                        OutboxEntry::parse(id, &flat)
                    }
                    _ => OutboxEntry {
                        id,
                        updates: Vec::new(),
                        malformed: 0,
                    },
                })
            }
            other => Err(BrokerError::Protocol(format!(
                "expected an outbox entry, got {other:?}"
            ))),
        })
        .collect()
}

/// The entries of an `XREADGROUP` reply on one stream (RESP2 or RESP3).
fn read_reply(v: &Value) -> Result<Vec<OutboxEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.first() {
            None => Ok(Vec::new()),
            Some(Value::Array(kv)) if kv.len() == 2 => entries(&kv[1]),
            Some(other) => Err(BrokerError::Protocol(format!(
                "unexpected XREADGROUP reply {other:?}"
            ))),
        },
        Value::Map(streams) => match streams.first() {
            None => Ok(Vec::new()),
            Some((_, list)) => entries(list),
        },
        other => Err(BrokerError::Protocol(format!(
            "unexpected XREADGROUP reply {other:?}"
        ))),
    }
}

/// Reads one queue's outbox for one writer, on a connection of its own (its reads block
/// for up to a second when the stream has nothing new).
pub struct OutboxReader {
    conn: Conn,
    key: String,
    consumer: String,
    /// Where the next read of this consumer's own pending entries starts; `None` once
    /// they were all read (then only new entries are read).
    backlog_from: Option<String>,
}

impl std::fmt::Debug for OutboxReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxReader")
            .field("key", &self.key)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl OutboxReader {
    /// Up to `count` entries: first the ones this consumer read before and never
    /// acknowledged (a writer restarted under the same name), then new ones. With `block`,
    /// waits up to a second for a new entry when there is none.
    pub async fn read(&mut self, count: usize, block: bool) -> Result<Vec<OutboxEntry>> {
        if let Some(from) = self.backlog_from.clone() {
            let got = self.xreadgroup(count, None, &from).await?;
            match got.last() {
                Some(last) => {
                    self.backlog_from = Some(last.id.clone());
                    return Ok(got);
                }
                None => self.backlog_from = None,
            }
        }
        let block = block.then_some((BLOCK_SECONDS * 1000.0) as u64);
        self.xreadgroup(count, block, ">").await
    }

    async fn xreadgroup(
        &mut self,
        count: usize,
        block_ms: Option<u64>,
        from: &str,
    ) -> Result<Vec<OutboxEntry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(OUTBOX_GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(ms) = block_ms {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(from);
        let reply: Value = cmd.query_async(&mut self.conn).await?;
        read_reply(&reply)
    }
}

impl Broker {
    /// Creates the writers' consumer group of `queue`'s outbox (and the stream) unless
    /// it exists. A group created after entries were written still delivers them all.
    /// Also sets the queue's epoch unless it exists.
    pub async fn outbox_join(&self, queue: &QueueName) -> Result<()> {
        let mut c = self.conn.clone();
        let keys = QueueKeys::new(queue);
        // A worker serving the queue: Redis knows the queue from now on.
        let _: () = redis::cmd("SET")
            .arg(keys.epoch())
            .arg(taskq_core::now_ms())
            .arg("NX")
            .query_async(&mut c)
            .await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(QueueKeys::new(queue).outbox())
            .arg(OUTBOX_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// A reader of `queue`'s outbox for writer `consumer` (see [`OutboxReader`]).
    pub async fn outbox_reader(&self, queue: &QueueName, consumer: &str) -> Result<OutboxReader> {
        Ok(OutboxReader {
            conn: self.source.dedicated().await?,
            key: QueueKeys::new(queue).outbox(),
            consumer: consumer.to_owned(),
            backlog_from: Some("0".to_owned()),
        })
    }

    /// Takes over up to `count` entries that other writers read but have not acknowledged
    /// for `min_idle` (their worker died or is stuck), scanning from `cursor` ("0-0" at
    /// first). Returns the cursor of the next call ("0-0" when the scan is complete) and
    /// the entries, now pending for `consumer`.
    pub async fn outbox_claim(
        &self,
        queue: &QueueName,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<OutboxEntry>)> {
        let mut c = self.conn.clone();
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(QueueKeys::new(queue).outbox())
            .arg(OUTBOX_GROUP)
            .arg(consumer)
            .arg(crate::millis(min_idle))
            .arg(cursor)
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut c)
            .await?;
        let Value::Array(parts) = &reply else {
            return Err(BrokerError::Protocol(format!(
                "unexpected XAUTOCLAIM reply {reply:?}"
            )));
        };
        let (Some(next), Some(list)) = (parts.first(), parts.get(1)) else {
            return Err(BrokerError::Protocol(format!(
                "unexpected XAUTOCLAIM reply {reply:?}"
            )));
        };
        Ok((crate::reply::string(next)?, entries(list)?))
    }

    /// The tasks with updates in `queue`'s outbox (an entry leaves only once it was
    /// applied), or `None` when the outbox holds more than [`OUTBOX_SCAN`] entries or one
    /// that cannot be read (then nothing can be said of a task's updates). Whoever asks
    /// whether a task absent from Redis ran to its end reads it after that look.
    pub async fn outbox_tasks(&self, queue: &QueueName) -> Result<Option<HashSet<TaskId>>> {
        let limit = OUTBOX_SCAN;
        let mut c = self.conn.clone();
        let v: Value = redis::cmd("XRANGE")
            .arg(QueueKeys::new(queue).outbox())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit + 1)
            .query_async(&mut c)
            .await?;
        let list = entries(&v)?;
        if list.len() > limit || list.iter().any(|e| e.malformed > 0) {
            return Ok(None);
        }
        Ok(Some(
            list.iter()
                .flat_map(|e| e.updates.iter().map(|u| u.id))
                .collect(),
        ))
    }

    /// Entries in `queue`'s outbox: those not yet applied, plus applied ones behind a
    /// pending entry (not trimmed yet); 0 only when every entry was applied.
    pub async fn outbox_len(&self, queue: &QueueName) -> Result<u64> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("XLEN")
            .arg(QueueKeys::new(queue).outbox())
            .query_async(&mut c)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_entry_reads_back_every_update() {
        let a = TaskId::new();
        let b = TaskId::new();
        let fields = [
            bulk("at"),
            bulk("1700000000123"),
            bulk("w"),
            bulk("w1"),
            bulk(&a.to_string()),
            bulk(&format!(
                "3|succeeded|1|{}",
                extras(None, Some("{\"x\":1}"), None)
            )),
            bulk(&b.to_string()),
            bulk(&format!(
                "5|retrying|2|{}",
                extras(Some("a|b"), None, Some(99))
            )),
            bulk("not-a-task"),
            bulk("1|queued|0|"),
        ];
        let e = OutboxEntry::parse("1-0".into(), &fields);
        assert_eq!(e.malformed, 1);
        assert_eq!(
            e.updates,
            vec![
                OutboxUpdate {
                    id: a,
                    seq: 3,
                    status: TaskStatus::Succeeded,
                    attempts: 1,
                    at_ms: 1_700_000_000_123,
                    worker: Some("w1".into()),
                    error: None,
                    result: Some("{\"x\":1}".into()),
                    due_ms: None,
                },
                OutboxUpdate {
                    id: b,
                    seq: 5,
                    status: TaskStatus::Retrying,
                    attempts: 2,
                    at_ms: 1_700_000_000_123,
                    worker: Some("w1".into()),
                    error: Some("a|b".into()),
                    result: None,
                    due_ms: Some(99),
                },
            ]
        );
    }

    #[test]
    fn no_extras_is_empty_text() {
        assert_eq!(extras(None, None, None), "");
        assert_eq!(extras(Some("e"), None, Some(1)), r#"{"e":"e","due":1}"#);
    }
}
