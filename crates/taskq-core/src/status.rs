//! Task statuses, the one state machine every component follows, and priorities.
//!
//! ```text
//!   waiting ──last dependency succeeded──> queued      (a flow's task; see `crate::flow`)
//!   waiting ──a dependency died, or cancel──> cancelled
//! scheduled ──due──> queued ──lease──> running ──ok──> succeeded
//!     │                ▲  ▲               │ ├──error, attempts left──> retrying ──due──> queued
//!     │                │  └─lease expired─┘ └──error, none left / non-retryable──> dead
//!     │                └───────────── manual retry ─────────────────────────────────┘ (from dead)
//!     └──> cancelled <── queued | retrying | running (the handler is signalled)
//! ```
//!
//! The api, the store and the metrics use exactly these names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a task is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// A flow's task waiting for its dependencies to succeed.
    Waiting,
    /// Waiting for its `run_at` time.
    Scheduled,
    /// Runnable; waiting for a worker.
    Queued,
    /// Leased by a worker whose handler is running it.
    Running,
    /// Finished successfully. Final.
    Succeeded,
    /// Failed an attempt; waiting for its backoff delay before it is queued again.
    Retrying,
    /// Failed for good (attempts exhausted or a non-retryable error); kept in the
    /// dead-letter queue until retried or purged. Final unless retried by hand.
    Dead,
    /// Cancelled before it finished. Final.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Waiting,
        TaskStatus::Scheduled,
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Retrying,
        TaskStatus::Dead,
        TaskStatus::Cancelled,
    ];

    /// The status's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Dead => "dead",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// True when no automatic transition leaves this status.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Dead | TaskStatus::Cancelled
        )
    }

    /// Whether the state machine allows `self → to`.
    pub fn can_become(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            (Scheduled, Queued)
                // The last dependency of a flow's task succeeded.
                | (Waiting, Queued)
                | (Queued, Running)
                | (Running, Succeeded)
                | (Running, Retrying)
                | (Running, Dead)
                // A lease that expired, or a task released at shutdown.
                | (Running, Queued)
                | (Retrying, Queued)
                | (Dead, Queued)
                // Running tasks are cancelled cooperatively: the handler is signalled.
                | (Waiting | Queued | Scheduled | Retrying | Running, Cancelled)
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text named no status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown status `{0}` (expected one of waiting, scheduled, queued, running, succeeded, retrying, dead, cancelled)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for TaskStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.chars().take(64).collect()))
    }
}

/// Priority inside one queue: every `high` task is dequeued before any `normal` one,
/// and every `normal` before any `low`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Every priority, highest first (the dequeue order).
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The priority's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for st in TaskStatus::ALL {
            assert_eq!(st.as_str().parse::<TaskStatus>(), Ok(st));
            assert_eq!(
                serde_json::to_string(&st).ok(),
                Some(format!("\"{}\"", st.as_str()))
            );
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn final_states_have_no_automatic_exit() {
        use TaskStatus::*;
        for from in [Succeeded, Cancelled] {
            for to in TaskStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        // Dead only leaves through a manual retry.
        let exits: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|to| Dead.can_become(*to))
            .collect();
        assert_eq!(exits, vec![Queued]);
        assert!(Running.can_become(Cancelled));
        assert!(!Succeeded.can_become(Queued));
        assert!(Queued.can_become(Cancelled));
    }
}
