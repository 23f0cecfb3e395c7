//! A scaler's status conditions (Ready, Active, Error) and how a failure is reported:
//! the conditions, a Warning Event when its reason is new, the error metric.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};

use super::{ACTIVE, Context, ERROR, READY, reasons};
use crate::crd::{TaskQueueScaler, TaskQueueScalerStatus};

/// Now, in whole seconds: what the API server stores of a `Time`, so that a status read
/// back compares equal to the one written.
pub(super) fn now_time() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The health part of a status: either working, or failing for a reason.
pub(super) enum Health<'a> {
    Ok { reason: &'a str, message: String },
    Failed { reason: &'a str, message: String },
}

/// Sets the Ready, Active and Error conditions of `status`, keeping each one's
/// `lastTransitionTime` unless its status changes. `active` is `None` when the depth is
/// unknown.
pub(super) fn set_conditions(
    status: &mut TaskQueueScalerStatus,
    generation: Option<i64>,
    health: Health<'_>,
    active: Option<(bool, String)>,
) {
    let now = now_time();
    let old = std::mem::take(&mut status.conditions);
    let make = |type_: &str, value: &str, reason: &str, message: String| {
        let previous = old.iter().find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(p) if p.status == value => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        Condition {
            type_: type_.to_owned(),
            status: value.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time,
            observed_generation: generation,
        }
    };
    let (ready, error) = match health {
        Health::Ok { reason, message } => (
            make(READY, "True", reason, message),
            make(ERROR, "False", reasons::NO_ERROR, String::new()),
        ),
        Health::Failed { reason, message } => (
            make(READY, "False", reason, message.clone()),
            make(ERROR, "True", reason, message),
        ),
    };
    let active = match active {
        Some((true, message)) => make(ACTIVE, "True", reasons::QUEUES_HAVE_TASKS, message),
        Some((false, message)) => make(ACTIVE, "False", reasons::QUEUES_IDLE, message),
        None => make(
            ACTIVE,
            "Unknown",
            reasons::DEPTH_UNKNOWN,
            "the queue depth could not be read".to_owned(),
        ),
    };
    status.conditions = vec![ready, active, error];
}

/// The reason of the Error condition when it is True.
pub(super) fn error_reason(status: Option<&TaskQueueScalerStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == ERROR && c.status == "True")
        .map(|c| c.reason.as_str())
}

/// Reports a failure: conditions, a Warning Event when the reason is new, the metric.
pub(super) async fn report_failure(
    ctx: &Context,
    scaler: &TaskQueueScaler,
    mut status: TaskQueueScalerStatus,
    reason: &str,
    message: String,
    active: Option<(bool, String)>,
) -> Result<(), kube::Error> {
    tracing::warn!(reason, %message, "scaler not working");
    let previous = ctx
        .with_state(scaler, |s| s.written.clone())
        .or_else(|| scaler.status.clone());
    if error_reason(previous.as_ref()) != Some(reason) {
        ctx.publish(
            scaler,
            Event {
                type_: EventType::Warning,
                reason: reason.to_owned(),
                note: Some(truncate(&message, 1000)),
                action: "Reconcile".to_owned(),
                secondary: None,
            },
        )
        .await;
    }
    ctx.count_error(scaler, reason);
    set_conditions(
        &mut status,
        scaler.metadata.generation,
        Health::Failed { reason, message },
        active,
    );
    ctx.write_status(scaler, status).await
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
