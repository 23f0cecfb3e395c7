//! One reconcile of a `TaskQueueScaler`: validate the spec, find the Deployment, read the
//! queue depth, decide, scale through the Deployment's `scale` subresource, report.
//!
//! API calls of one reconcile, in order, each only when needed:
//! 1. `GET deployments/<name>` — only when the watch cache does not hold the Deployment
//!    (it does not exist, or the watch has not caught up with its creation);
//! 2. `PATCH deployments/<name>/scale` — only when the replica count changes (never on a
//!    Deployment annotated `taskq.dev/autoscaling-paused: "true"`, never on one that a
//!    HorizontalPodAutoscaler or KEDA ScaledObject also targets (read from watch caches;
//!    the scaler reports `Conflict`), never unless leader);
//! 3. `POST events` (events.k8s.io) — on a scale and when an error condition first appears
//!    (repeats of one event are `PATCH`ed into a series by the recorder);
//! 4. `PATCH taskqueuescalers/<name>/status` (server-side apply) — only when the status
//!    differs from what was last written.
//!
//! Failures never crash the controller: an invalid spec or a missing Deployment is
//! reported in the conditions and by an Event and waits for a change (or the next poll);
//! Redis and API errors are reported the same way and retried with exponential backoff
//! ([`error_policy`]).

mod context;
mod run;
mod status;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::field::Empty;

use crate::crd::TaskQueueScaler;

pub use context::{Context, OtherAutoscalers, hpa_target, scaled_object_target};
pub use run::Direction;
use run::{Run, is_paused};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "taskq-controller";

/// Condition types.
pub const READY: &str = "Ready";
pub const ACTIVE: &str = "Active";
pub const ERROR: &str = "Error";

/// Condition reasons (stable, for alerts and `kubectl wait`).
pub mod reasons {
    pub const SCALER_READY: &str = "ScalerReady";
    pub const PAUSED: &str = "AutoscalingPaused";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const DEPLOYMENT_NOT_FOUND: &str = "DeploymentNotFound";
    pub const REDIS_UNAVAILABLE: &str = "RedisUnavailable";
    pub const SCALE_FAILED: &str = "ScaleFailed";
    pub const API_ERROR: &str = "KubernetesApiError";
    pub const QUEUES_HAVE_TASKS: &str = "QueuesHaveTasks";
    pub const QUEUES_IDLE: &str = "QueuesIdle";
    pub const DEPTH_UNKNOWN: &str = "DepthUnknown";
    /// A HorizontalPodAutoscaler or KEDA ScaledObject also targets the Deployment.
    pub const CONFLICT: &str = "Conflict";
    pub const NO_ERROR: &str = "NoError";
}

/// Longest pause between retries of a failing reconcile.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("reading queue depth from redis: {0}")]
    Depth(#[from] taskq_redis::BrokerError),
    #[error("not the leader; nothing done")]
    NotLeader,
    #[error("the HorizontalPodAutoscaler or ScaledObject cache has not been filled yet")]
    CacheNotReady,
}

/// Reconciles one scaler (the controller's reconcile function).
pub async fn reconcile(scaler: Arc<TaskQueueScaler>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        otel.name = "reconcile TaskQueueScaler",
        namespace = %scaler.namespace().unwrap_or_default(),
        scaler = %scaler.name_any(),
        depth = Empty,
        current = Empty,
        desired = Empty,
        decision = Empty,
    );
    let started = Instant::now();
    let result = tracing::Instrument::instrument(reconcile_inner(&scaler, &ctx), span).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    if result.is_ok() {
        ctx.with_state(&scaler, |s| s.failures = 0);
    }
    result
}

async fn reconcile_inner(scaler: &TaskQueueScaler, ctx: &Context) -> Result<Action, Error> {
    ctx.prune();
    if !ctx.leadership.is_leader() {
        return Err(Error::NotLeader);
    }
    let mut run = Run::start(scaler, ctx);
    let settings = match run.validate_spec().await? {
        ControlFlow::Continue(s) => s,
        ControlFlow::Break(action) => return Ok(action),
    };
    let deployment = match run.find_deployment(&settings).await? {
        ControlFlow::Continue(d) => d,
        ControlFlow::Break(action) => return Ok(action),
    };
    if let ControlFlow::Break(action) = run.refuse_other_autoscalers(&settings).await? {
        return Ok(action);
    }
    let current = run.record_current(&deployment);
    let (total, active) = run.read_depth(&settings).await?;
    if is_paused(&deployment) {
        return run.report_paused(&settings, current, active).await;
    }
    run.decide_and_scale(&settings, &deployment, current, total, active)
        .await
}

/// Retries a failed reconcile after 1 s, 2 s, 4 s, … up to a minute (with jitter); see
/// [`retry_delay`].
pub fn error_policy(scaler: Arc<TaskQueueScaler>, error: &Error, ctx: Arc<Context>) -> Action {
    match retry_delay(&scaler, error, &ctx) {
        Some(delay) => Action::requeue(delay),
        None => Action::await_change(),
    }
}

/// Counts one more failure of `scaler` and returns the pause before its retry (`None`
/// when not leader: the next term starts afresh). A successful reconcile resets the count.
pub fn retry_delay(scaler: &TaskQueueScaler, error: &Error, ctx: &Context) -> Option<Duration> {
    if matches!(error, Error::NotLeader) {
        return None;
    }
    let failures = ctx.with_state(scaler, |s| {
        s.failures = s.failures.saturating_add(1);
        s.failures
    });
    let delay = backoff(failures);
    tracing::warn!(
        namespace = %scaler.namespace().unwrap_or_default(),
        scaler = %scaler.name_any(),
        %error,
        failures,
        retry_in = ?delay,
        "reconcile failed"
    );
    Some(delay)
}

/// The pause before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = Duration::from_secs(1u64 << exp).min(MAX_BACKOFF);
    base.mul_f64(0.9 + rand::random::<f64>() * 0.2)
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::status::{Health, error_reason, set_conditions, truncate};
    use super::*;
    use crate::crd::TaskQueueScalerStatus;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs = |n| backoff(n).as_secs_f64();
        assert!((0.9..=1.1).contains(&secs(1)), "{}", secs(1));
        assert!((1.8..=2.2).contains(&secs(2)));
        assert!((7.2..=8.8).contains(&secs(4)));
        assert!(secs(7) <= 60.0 && secs(7) >= 54.0);
        assert!(secs(1000) <= 60.0);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let mut status = TaskQueueScalerStatus::default();
        let ok = || Health::Ok {
            reason: reasons::SCALER_READY,
            message: "m".into(),
        };
        set_conditions(&mut status, Some(1), ok(), Some((true, "x".into())));
        let epoch = Time(Timestamp::UNIX_EPOCH);
        for c in &mut status.conditions {
            c.last_transition_time = epoch.clone();
        }
        set_conditions(&mut status, Some(2), ok(), Some((true, "y".into())));
        for c in &status.conditions {
            assert_eq!(c.last_transition_time, epoch, "{} kept its time", c.type_);
            assert_eq!(c.observed_generation, Some(2));
        }
        set_conditions(
            &mut status,
            Some(2),
            Health::Failed {
                reason: reasons::REDIS_UNAVAILABLE,
                message: "down".into(),
            },
            None,
        );
        let types: Vec<(&str, &str, &str)> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Ready", "False", "RedisUnavailable"),
                ("Active", "Unknown", "DepthUnknown"),
                ("Error", "True", "RedisUnavailable"),
            ]
        );
        for c in &status.conditions {
            assert_ne!(
                c.last_transition_time, epoch,
                "{} changed, so did its time",
                c.type_
            );
        }
        assert_eq!(error_reason(Some(&status)), Some("RedisUnavailable"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
