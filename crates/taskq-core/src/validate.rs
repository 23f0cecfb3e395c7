//! Validation of submit requests against configurable limits. A request that passes
//! becomes a [`TaskRecord`]; one that fails names the field and what to fix.

use chrono::{DateTime, Duration, Utc};

use crate::task::{BackoffOverride, NewTask};
use crate::wire::WireInt;
use crate::{Backoff, QueueName, TaskEvent, TaskId, TaskRecord, TaskStatus};

/// Longest accepted task type.
pub const MAX_TYPE_LEN: usize = 128;

/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// Longest accepted task key.
pub const MAX_KEY_LEN: usize = 128;

/// Checks a task key: 1-[`MAX_KEY_LEN`] characters from letters, digits and `_ . : / @ -`
/// (no spaces, no braces: a key names Redis keys under its queue's `{queue}` hash tag).
/// Returns what to fix.
pub fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| is_type_byte(b) || b == b'@');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1-{MAX_KEY_LEN} characters from letters, digits and `_ . : / @ -`"
        ))
    }
}

/// Bounds and defaults applied to every submitted task.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted payload, in bytes of compact JSON.
    pub max_payload_bytes: usize,
    /// Largest accepted `max_attempts`.
    pub max_attempts: u32,
    /// `max_attempts` of a task that gives none.
    pub default_max_attempts: u32,
    /// Largest accepted `timeout_ms`.
    pub max_timeout_ms: u64,
    /// `timeout_ms` of a task that gives none.
    pub default_timeout_ms: u64,
    /// How far in the future a task may be scheduled.
    pub max_delay_ms: u64,
    /// Backoff of a task that overrides none of it.
    pub default_backoff: Backoff,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_attempts: 100,
            default_max_attempts: 5,
            max_timeout_ms: 24 * 3_600_000,
            default_timeout_ms: 600_000,
            max_delay_ms: 366 * 24 * 3_600_000,
            default_backoff: Backoff::default(),
        }
    }
}

/// Why a submit request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The payload is larger than [`Limits::max_payload_bytes`].
    #[error("payload is {size} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    /// A field holds a value outside its allowed range or format.
    #[error("`{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

impl ValidationError {
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self::Field {
            field,
            message: message.into(),
        }
    }
}

impl Limits {
    /// Checks `req` and builds the record of a new task created at `now`.
    pub fn admit(
        &self,
        req: NewTask,
        now: DateTime<Utc>,
        traceparent: Option<String>,
    ) -> Result<TaskRecord, ValidationError> {
        let kind = req.kind;
        if kind.is_empty() || kind.len() > MAX_TYPE_LEN || !kind.bytes().all(is_type_byte) {
            return Err(ValidationError::field(
                "type",
                format!("must be 1-{MAX_TYPE_LEN} characters from letters, digits and `_ . : / -`"),
            ));
        }
        let queue = match req.queue {
            None => QueueName::default_queue(),
            Some(q) => q.parse().map_err(|e: crate::queue::InvalidQueueName| {
                ValidationError::field("queue", e.to_string())
            })?,
        };
        let size = serde_json::to_vec(&req.payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.max_payload_bytes {
            return Err(ValidationError::PayloadTooLarge {
                size,
                limit: self.max_payload_bytes,
            });
        }
        let max_attempts = match req.max_attempts.map(i64::from) {
            None => self.default_max_attempts,
            Some(n) if n >= 1 && n <= i64::from(self.max_attempts) => n as u32,
            Some(_) => {
                return Err(ValidationError::field(
                    "max_attempts",
                    format!("must be between 1 and {}", self.max_attempts),
                ));
            }
        };
        let timeout_ms = match req.timeout_ms.map(i64::from) {
            None => self.default_timeout_ms,
            Some(n) => in_range("timeout_ms", n, 1, self.max_timeout_ms)?,
        };
        let scheduled_at = match (req.run_at, req.delay_ms.map(i64::from)) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::field(
                    "delay_ms",
                    "give either `run_at` or `delay_ms`, not both",
                ));
            }
            (Some(at), None) => {
                if at > now + Duration::milliseconds(self.max_delay_ms as i64) {
                    return Err(ValidationError::field(
                        "run_at",
                        format!("is more than {} ms in the future", self.max_delay_ms),
                    ));
                }
                // A time in the past means "now".
                at.max(now)
            }
            (None, Some(d)) => {
                let d = in_range("delay_ms", d, 0, self.max_delay_ms)?;
                now + Duration::milliseconds(d as i64)
            }
            (None, None) => now,
        };
        let backoff = merge_backoff(self.default_backoff, req.backoff)?;
        if let Some(k) = &req.idempotency_key
            && (k.is_empty()
                || k.len() > MAX_IDEMPOTENCY_KEY_LEN
                || !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ValidationError::field(
                "idempotency_key",
                format!(
                    "must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
                ),
            ));
        }
        if let Some(k) = &req.key {
            check_key(k).map_err(|m| ValidationError::field("key", m))?;
        }
        let status = if scheduled_at > now {
            TaskStatus::Scheduled
        } else {
            TaskStatus::Queued
        };
        Ok(TaskRecord {
            id: TaskId::new(),
            queue,
            kind,
            payload: req.payload,
            priority: req.priority.unwrap_or_default(),
            status,
            attempts: 0,
            max_attempts,
            timeout_ms,
            backoff,
            last_error: None,
            result: None,
            created_at: now,
            scheduled_at,
            started_at: None,
            finished_at: None,
            updated_at: now,
            traceparent,
            events: vec![TaskEvent {
                status,
                at: now,
                attempt: 0,
                error: None,
                worker: None,
            }],
            idempotency_key: req.idempotency_key,
            flow: None,
            key: req.key,
            progress: None,
        })
    }
}

fn is_type_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-')
}

fn in_range(field: &'static str, v: i64, min: u64, max: u64) -> Result<u64, ValidationError> {
    u64::try_from(v)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| ValidationError::field(field, format!("must be between {min} and {max}")))
}

/// `v` when it lies in `min..=max` (the message shows the bounds as given, `1` for `1.0`).
fn in_float_range(field: &'static str, v: f64, min: f64, max: f64) -> Result<f64, ValidationError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ValidationError::field(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

const MAX_BACKOFF_MS: u64 = 7 * 24 * 3_600_000;

fn merge_backoff(base: Backoff, o: Option<BackoffOverride>) -> Result<Backoff, ValidationError> {
    let Some(o) = o else { return Ok(base) };
    let mut b = base;
    if let Some(WireInt(v)) = o.initial_ms {
        b.initial_ms = in_range("backoff.initial_ms", v, 1, MAX_BACKOFF_MS)?;
    }
    if let Some(WireInt(v)) = o.max_ms {
        b.max_ms = in_range("backoff.max_ms", v, 1, MAX_BACKOFF_MS)?;
    }
    if let Some(v) = o.multiplier {
        b.multiplier = in_float_range("backoff.multiplier", v, 1.0, 10.0)?;
    }
    if let Some(v) = o.jitter {
        b.jitter = in_float_range("backoff.jitter", v, 0.0, 1.0)?;
    }
    if b.initial_ms > b.max_ms {
        return Err(ValidationError::field(
            "backoff.initial_ms",
            "must not exceed backoff.max_ms",
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> NewTask {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn admit(v: serde_json::Value) -> Result<TaskRecord, ValidationError> {
        Limits::default().admit(req(v), Utc::now(), None)
    }

    fn field_of(r: Result<TaskRecord, ValidationError>) -> &'static str {
        match r {
            Err(ValidationError::Field { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let t = admit(json!({"type": "email"})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.queue.as_str(), "default");
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.max_attempts, 5);
        assert_eq!(t.payload, serde_json::Value::Null);
        assert_eq!(t.events.len(), 1);
    }

    #[test]
    fn delay_schedules() {
        let t = admit(json!({"type": "x", "delay_ms": 5000})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.status, TaskStatus::Scheduled);
        assert!(t.scheduled_at > t.created_at);
        let past = admit(json!({"type": "x", "run_at": "2001-01-01T00:00:00Z"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(past.status, TaskStatus::Queued);
    }

    #[test]
    fn rejects_out_of_range_values() {
        assert_eq!(field_of(admit(json!({"type": ""}))), "type");
        assert_eq!(field_of(admit(json!({"type": "a b"}))), "type");
        assert_eq!(
            field_of(admit(json!({"type": "x", "queue": "{q}"}))),
            "queue"
        );
        assert_eq!(
            field_of(admit(json!({"type": "x", "delay_ms": -1}))),
            "delay_ms"
        );
        assert_eq!(
            field_of(admit(json!({"type": "x", "delay_ms": i64::MAX}))),
            "delay_ms"
        );
        assert_eq!(
            field_of(admit(json!({"type": "x", "timeout_ms": 0}))),
            "timeout_ms"
        );
        assert_eq!(
            field_of(admit(json!({"type": "x", "max_attempts": 0}))),
            "max_attempts"
        );
        assert_eq!(
            field_of(admit(json!({"type": "x", "max_attempts": 101}))),
            "max_attempts"
        );
        assert_eq!(
            field_of(admit(
                json!({"type": "x", "run_at": "3000-01-01T00:00:00Z"})
            )),
            "run_at"
        );
        assert_eq!(
            field_of(admit(
                json!({"type": "x", "delay_ms": 1, "run_at": "2030-01-01T00:00:00Z"})
            )),
            "delay_ms"
        );
        assert_eq!(field_of(admit(json!({"type": "x", "key": ""}))), "key");
        assert_eq!(field_of(admit(json!({"type": "x", "key": "a b"}))), "key");
        assert_eq!(field_of(admit(json!({"type": "x", "key": "{q}"}))), "key");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(field_of(admit(json!({"type": "x", "key": long}))), "key");
        let ok = admit(json!({"type": "x", "key": "customer-42@eu/1:a"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.key.as_deref(), Some("customer-42@eu/1:a"));
        assert_eq!(
            field_of(admit(json!({"type": "x", "backoff": {"multiplier": 0.5}}))),
            "backoff.multiplier"
        );
        assert_eq!(
            field_of(admit(
                json!({"type": "x", "backoff": {"initial_ms": 10, "max_ms": 5}})
            )),
            "backoff.initial_ms"
        );
    }

    #[test]
    fn rejects_large_payloads() {
        let limits = Limits {
            max_payload_bytes: 10,
            ..Limits::default()
        };
        let r = limits.admit(
            req(json!({"type": "x", "payload": "0123456789"})),
            Utc::now(),
            None,
        );
        assert!(matches!(
            r,
            Err(ValidationError::PayloadTooLarge {
                size: 12,
                limit: 10
            })
        ));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r = serde_json::from_value::<NewTask>(json!({"type": "x", "priorty": "high"}));
        assert!(r.is_err());
        let r = serde_json::from_value::<NewTask>(json!({"type": "x", "priority": "urgent"}));
        assert!(r.is_err());
    }
}
