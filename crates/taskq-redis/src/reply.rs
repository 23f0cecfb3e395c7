//! Readers of the values in Redis replies, failing with [`BrokerError::Protocol`] on
//! anything unexpected (never a panic).

use redis::Value;
use taskq_core::TaskId;

use crate::{BrokerError, Result};

pub(crate) fn bytes(v: &Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        other => Err(BrokerError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

pub(crate) fn string(v: &Value) -> Result<String> {
    String::from_utf8(bytes(v)?).map_err(|e| BrokerError::Protocol(e.to_string()))
}

pub(crate) fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BrokerError::Protocol("expected an integer".into())),
        other => Err(BrokerError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

pub(crate) fn task_id(v: &Value) -> Result<TaskId> {
    string(v)?
        .parse()
        .map_err(|e| BrokerError::Protocol(format!("{e}")))
}

/// A list of task ids as text.
pub(crate) fn task_ids(ids: Vec<String>) -> Result<Vec<TaskId>> {
    ids.iter()
        .map(|s| s.parse().map_err(|e| BrokerError::Protocol(format!("{e}"))))
        .collect()
}

/// A reply of four values per task, `id, seq, a, b`: each task read by `read` from its
/// id, its seq and its two other values.
pub(crate) fn per_task<T>(
    reply: &[Value],
    read: impl Fn(TaskId, u64, &Value, &Value) -> Result<T>,
) -> Result<Vec<T>> {
    reply
        .chunks_exact(4)
        .map(|v| read(task_id(&v[0])?, int(&v[1])? as u64, &v[2], &v[3]))
        .collect()
}
