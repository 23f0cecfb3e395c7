//! One reconcile of a `TaskQueueScaler`: validate the spec, find the Deployment, read the
//! queue depth, decide, scale through the Deployment's `scale` subresource, report.
//!
//! API calls of one reconcile, in order, each only when needed:
//! 1. `GET deployments/<name>` — only when the watch cache does not hold the Deployment
//!    (it does not exist, or the watch has not caught up with its creation);
//! 2. `PATCH deployments/<name>/scale` — only when the replica count changes (never on a
//!    Deployment annotated `taskq.dev/autoscaling-paused: "true"`, never unless leader);
//! 3. `POST events` (events.k8s.io) — on a scale and when an error condition first appears
//!    (repeats of one event are `PATCH`ed into a series by the recorder);
//! 4. `PATCH taskqueuescalers/<name>/status` (server-side apply) — only when the status
//!    differs from what was last written.
//!
//! Failures never crash the controller: an invalid spec or a missing Deployment is
//! reported in the conditions and by an Event and waits for a change (or the next poll);
//! Redis and API errors are reported the same way and retried with exponential backoff
//! ([`error_policy`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use tracing::field::Empty;

use crate::crd::{PAUSED_ANNOTATION, Settings, TaskQueueScaler, TaskQueueScalerStatus};
use crate::depth::{self, DepthSource};
use crate::leader::Leadership;
use crate::metrics::{ErrorLabels, Metrics, QueueLabels, ScaleLabels, ScalerLabels};
use crate::scaling::{self, Decision, Recommendations};

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
}

/// What one scaler's reconciles remember between runs (in memory, per leadership term).
#[derive(Debug, Default)]
struct ScalerState {
    /// The scaler object's uid: a scaler deleted and recreated starts afresh.
    uid: Option<String>,
    history: Recommendations,
    /// Failed reconciles in a row (for the backoff).
    failures: u32,
    /// The status last written, to skip identical writes.
    written: Option<TaskQueueScalerStatus>,
    /// Queues whose metric series exist (to remove them when the scaler goes).
    queues: Vec<String>,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: kube::Client,
    pub depth: Arc<dyn DepthSource>,
    /// The Deployments of the watched namespace (a reflector cache).
    pub deployments: Store<Deployment>,
    /// The scalers of the watched namespace (to forget deleted ones).
    pub scalers: Store<TaskQueueScaler>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub leadership: Leadership,
    state: Mutex<HashMap<(String, String), ScalerState>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: kube::Client,
        depth: Arc<dyn DepthSource>,
        deployments: Store<Deployment>,
        scalers: Store<TaskQueueScaler>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        leadership: Leadership,
    ) -> Self {
        Self {
            client,
            depth,
            deployments,
            scalers,
            recorder,
            metrics,
            leadership,
            state: Mutex::default(),
        }
    }

    fn with_state<T>(&self, scaler: &TaskQueueScaler, f: impl FnOnce(&mut ScalerState) -> T) -> T {
        let key = (scaler.namespace().unwrap_or_default(), scaler.name_any());
        let mut map = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(key).or_default();
        if entry.uid != scaler.metadata.uid {
            *entry = ScalerState {
                uid: scaler.metadata.uid.clone(),
                ..ScalerState::default()
            };
        }
        f(entry)
    }

    /// Drops the state and metric series of scalers that no longer exist.
    fn prune(&self) {
        let mut map = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|(ns, name), state| {
            let exists = self.scalers.get(&ObjectRef::new(name).within(ns)).is_some();
            if !exists {
                self.metrics.forget(ns, name, &state.queues);
            }
            exists
        });
    }

    /// The Deployment from the watch cache, or from the API server when the cache does
    /// not hold it.
    async fn deployment(&self, ns: &str, name: &str) -> Result<Option<Deployment>, kube::Error> {
        if let Some(d) = self.deployments.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some((*d).clone()));
        }
        Api::<Deployment>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
    }

    async fn scale(&self, ns: &str, name: &str, replicas: i32) -> Result<(), kube::Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        Api::<Deployment>::namespaced(self.client.clone(), ns)
            .patch_scale(name, &params, &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn publish(&self, scaler: &TaskQueueScaler, event: Event) {
        if let Err(e) = self.recorder.publish(&event, &scaler.object_ref(&())).await {
            tracing::warn!(error = %e, reason = %event.reason, "publishing an event failed");
        }
    }

    /// Writes `status` unless it is what was last written and what the cache shows.
    async fn write_status(
        &self,
        scaler: &TaskQueueScaler,
        status: TaskQueueScalerStatus,
    ) -> Result<(), kube::Error> {
        let cached = scaler.status.as_ref();
        let unchanged = self.with_state(scaler, |s| s.written.as_ref() == Some(&status))
            && cached == Some(&status);
        if unchanged {
            return Ok(());
        }
        let api: Api<TaskQueueScaler> =
            Api::namespaced(self.client.clone(), &scaler.namespace().unwrap_or_default());
        let body = serde_json::json!({
            "apiVersion": TaskQueueScaler::api_version(&()),
            "kind": TaskQueueScaler::kind(&()),
            "status": status,
        });
        api.patch_status(
            &scaler.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        self.with_state(scaler, |s| s.written = Some(status));
        Ok(())
    }

    fn count_error(&self, scaler: &TaskQueueScaler, reason: &str) {
        self.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                namespace: scaler.namespace().unwrap_or_default(),
                scaler: scaler.name_any(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Now, in whole seconds: what the API server stores of a `Time`, so that a status read
/// back compares equal to the one written.
fn now_time() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The health part of a status: either working, or failing for a reason.
enum Health<'a> {
    Ok { reason: &'a str, message: String },
    Failed { reason: &'a str, message: String },
}

/// Sets the Ready, Active and Error conditions of `status`, keeping each one's
/// `lastTransitionTime` unless its status changes. `active` is `None` when the depth is
/// unknown.
fn set_conditions(
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
fn error_reason(status: Option<&TaskQueueScalerStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == ERROR && c.status == "True")
        .map(|c| c.reason.as_str())
}

/// Reports a failure: conditions, a Warning Event when the reason is new, the metric.
async fn report_failure(
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

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn is_paused(d: &Deployment) -> bool {
    d.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn activity(total: u64, settings: &Settings) -> (bool, String) {
    let active = scaling::is_active(total, &settings.policy);
    let message = format!(
        "{total} pending tasks in {} (activation at {})",
        settings
            .queues
            .iter()
            .map(|q| q.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        settings.policy.activation.max(1)
    );
    (active, message)
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
    let span = tracing::Span::current();
    let ns = scaler.namespace().unwrap_or_default();
    let name = scaler.name_any();
    let labels = ScalerLabels {
        namespace: ns.clone(),
        scaler: name.clone(),
    };
    let generation = scaler.metadata.generation;
    let mut status = TaskQueueScalerStatus {
        observed_generation: generation,
        ..scaler.status.clone().unwrap_or_default()
    };
    if let Some(written) = ctx.with_state(scaler, |s| s.written.clone()) {
        // What we wrote last is newer than (or as new as) the cached object.
        status = TaskQueueScalerStatus {
            observed_generation: generation,
            ..written
        };
    }

    // 1. The spec.
    let settings = match scaler.spec.validate() {
        Ok(s) => s,
        Err(problems) => {
            ctx.with_state(scaler, |s| s.history.clear());
            status.desired_replicas = None;
            report_failure(
                ctx,
                scaler,
                status,
                reasons::INVALID_SPEC,
                problems.join("; "),
                None,
            )
            .await?;
            // Nothing to do until the spec changes.
            return Ok(Action::await_change());
        }
    };
    ctx.with_state(scaler, |s| {
        s.queues = settings.queues.iter().map(|q| q.to_string()).collect();
    });

    // 2. The Deployment.
    let deployment = match ctx.deployment(&ns, &settings.deployment).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            ctx.with_state(scaler, |s| s.history.clear());
            status.current_replicas = None;
            status.desired_replicas = None;
            report_failure(
                ctx,
                scaler,
                status,
                reasons::DEPLOYMENT_NOT_FOUND,
                format!("deployment {ns}/{} does not exist", settings.deployment),
                None,
            )
            .await?;
            // Its creation triggers a reconcile through the Deployment watch; poll too.
            return Ok(Action::requeue(settings.polling_interval));
        }
        Err(e) => {
            report_failure(
                ctx,
                scaler,
                status,
                reasons::API_ERROR,
                format!("reading deployment {ns}/{}: {e}", settings.deployment),
                None,
            )
            .await?;
            return Err(e.into());
        }
    };
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    status.current_replicas = Some(current);
    span.record("current", current);
    ctx.metrics
        .current
        .get_or_create(&labels)
        .set(i64::from(current));

    // 3. The depth.
    let depths: BTreeMap<String, u64> =
        match depth::read_all(ctx.depth.as_ref(), &settings.queues).await {
            Ok(d) => d,
            Err(e) => {
                // The last good reading stays in the status; the conditions say it is stale.
                status.desired_replicas = Some(current);
                report_failure(
                    ctx,
                    scaler,
                    status,
                    reasons::REDIS_UNAVAILABLE,
                    format!("reading the queue depth: {e}"),
                    None,
                )
                .await?;
                return Err(e.into());
            }
        };
    let total: u64 = depths.values().sum();
    span.record("depth", total);
    for (queue, d) in &depths {
        ctx.metrics
            .depth
            .get_or_create(&QueueLabels {
                namespace: ns.clone(),
                scaler: name.clone(),
                queue: queue.clone(),
            })
            .set(i64::try_from(*d).unwrap_or(i64::MAX));
    }
    status.queue_depth = depths
        .iter()
        .map(|(q, d)| (q.clone(), i64::try_from(*d).unwrap_or(i64::MAX)))
        .collect();
    status.depth = Some(i64::try_from(total).unwrap_or(i64::MAX));
    let active = activity(total, &settings);

    // 4. A paused Deployment is reported on, never scaled.
    if is_paused(&deployment) {
        ctx.with_state(scaler, |s| s.history.clear());
        status.desired_replicas = Some(current);
        span.record("desired", current);
        span.record("decision", reasons::PAUSED);
        ctx.metrics
            .desired
            .get_or_create(&labels)
            .set(i64::from(current));
        set_conditions(
            &mut status,
            generation,
            Health::Ok {
                reason: reasons::PAUSED,
                message: format!(
                    "deployment {} is annotated {PAUSED_ANNOTATION}=true; its replicas are left alone",
                    settings.deployment
                ),
            },
            Some(active),
        );
        ctx.write_status(scaler, status).await?;
        return Ok(Action::requeue(settings.polling_interval));
    }

    // 5. Decide, and scale.
    let decision: Decision = ctx.with_state(scaler, |s| {
        scaling::decide(
            &mut s.history,
            Instant::now(),
            total,
            current,
            &settings.policy,
        )
    });
    span.record("desired", decision.desired);
    span.record("decision", decision.reason.as_str());
    status.desired_replicas = Some(decision.desired);
    ctx.metrics
        .desired
        .get_or_create(&labels)
        .set(i64::from(decision.desired));
    let explanation = format!(
        "{}: {total} pending tasks, {} per replica, recommended {}, desired {} (min {}, max {})",
        decision.reason.as_str(),
        settings.policy.target,
        decision.recommended,
        decision.desired,
        settings.policy.min,
        settings.policy.max,
    );
    if decision.desired != current {
        // The last check before acting: a controller that may have lost its Lease stops.
        if !ctx.leadership.is_leader() {
            return Err(Error::NotLeader);
        }
        if let Err(e) = ctx.scale(&ns, &settings.deployment, decision.desired).await {
            report_failure(
                ctx,
                scaler,
                status,
                reasons::SCALE_FAILED,
                format!(
                    "scaling deployment {} to {}: {e}",
                    settings.deployment, decision.desired
                ),
                Some(active),
            )
            .await?;
            return Err(e.into());
        }
        let direction = if decision.desired > current {
            "up"
        } else {
            "down"
        };
        tracing::info!(
            deployment = %settings.deployment,
            from = current,
            to = decision.desired,
            depth = total,
            reason = decision.reason.as_str(),
            "scaled"
        );
        ctx.metrics
            .scale_operations
            .get_or_create(&ScaleLabels {
                namespace: ns.clone(),
                scaler: name.clone(),
                direction: direction.to_owned(),
            })
            .inc();
        ctx.metrics
            .current
            .get_or_create(&labels)
            .set(i64::from(decision.desired));
        status.current_replicas = Some(decision.desired);
        status.last_scale_time = Some(now_time());
        ctx.publish(
            scaler,
            Event {
                type_: EventType::Normal,
                reason: if direction == "up" {
                    "ScaledUp".to_owned()
                } else {
                    "ScaledDown".to_owned()
                },
                note: Some(format!(
                    "deployment {} from {current} to {} replicas ({explanation})",
                    settings.deployment, decision.desired
                )),
                action: "Scale".to_owned(),
                secondary: Some(deployment.object_ref(&())),
            },
        )
        .await;
    }
    set_conditions(
        &mut status,
        generation,
        Health::Ok {
            reason: reasons::SCALER_READY,
            message: explanation,
        },
        Some(active),
    );
    ctx.write_status(scaler, status).await?;
    Ok(Action::requeue(settings.polling_interval))
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
    use super::*;

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
