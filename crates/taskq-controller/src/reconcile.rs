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

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// The other autoscalers of the namespace (none watched unless set).
    others: OtherAutoscalers,
    state: Mutex<HashMap<(String, String), ScalerState>>,
}

/// Watch caches of the autoscalers that would fight the controller over a Deployment's
/// replicas: HorizontalPodAutoscalers, and KEDA ScaledObjects where KEDA is installed.
#[derive(Clone, Debug, Default)]
pub struct OtherAutoscalers {
    pub hpas: Option<Store<HorizontalPodAutoscaler>>,
    pub scaled_objects: Option<Store<DynamicObject>>,
}

/// The Deployment an HPA scales, if it scales one.
pub fn hpa_target(hpa: &HorizontalPodAutoscaler) -> Option<&str> {
    let target = &hpa.spec.as_ref()?.scale_target_ref;
    (target.kind == "Deployment").then_some(target.name.as_str())
}

/// The Deployment a KEDA ScaledObject scales, if it scales one (KEDA's default kind is
/// Deployment).
pub fn scaled_object_target(so: &DynamicObject) -> Option<&str> {
    let target = &so.data["spec"]["scaleTargetRef"];
    let kind = target["kind"].as_str().unwrap_or("Deployment");
    (kind == "Deployment")
        .then(|| target["name"].as_str())
        .flatten()
}

/// Longest wait for a watch cache's first listing.
const CACHE_READY_TIMEOUT: Duration = Duration::from_secs(10);

async fn ready<K>(store: &Store<K>) -> Result<(), Error>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match tokio::time::timeout(CACHE_READY_TIMEOUT, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Error::CacheNotReady),
    }
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
            others: OtherAutoscalers::default(),
            state: Mutex::default(),
        }
    }

    /// Refuses to scale Deployments that these autoscalers also target.
    pub fn with_other_autoscalers(mut self, others: OtherAutoscalers) -> Self {
        self.others = others;
        self
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

    /// The HorizontalPodAutoscalers and KEDA ScaledObjects of `ns` whose target is the
    /// Deployment `name`, as `kind/name`, from the watch caches (waiting for their first
    /// listing, so a fresh controller never scales before it knows).
    async fn other_autoscalers(&self, ns: &str, name: &str) -> Result<Vec<String>, Error> {
        let mut found = Vec::new();
        if let Some(hpas) = &self.others.hpas {
            ready(hpas).await?;
            for hpa in hpas.state() {
                if hpa.namespace().as_deref() == Some(ns) && hpa_target(&hpa) == Some(name) {
                    found.push(format!("HorizontalPodAutoscaler/{}", hpa.name_any()));
                }
            }
        }
        if let Some(scaled) = &self.others.scaled_objects {
            ready(scaled).await?;
            for so in scaled.state() {
                if so.namespace().as_deref() == Some(ns) && scaled_object_target(&so) == Some(name)
                {
                    found.push(format!("ScaledObject/{}", so.name_any()));
                }
            }
        }
        found.sort();
        Ok(found)
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

/// Which way a scale moved the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    /// The direction from `from` to `to` replicas (`to` differs from `from`).
    pub fn of(from: i32, to: i32) -> Self {
        if to > from { Self::Up } else { Self::Down }
    }

    /// The `direction` label of `taskq_controller_scale_operations_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    /// The reason of the Normal Event a scale publishes.
    pub fn event_reason(self) -> &'static str {
        match self {
            Self::Up => "ScaledUp",
            Self::Down => "ScaledDown",
        }
    }
}

/// One reconcile of one scaler: the steps of [`reconcile_inner`], in order. Each step
/// either hands its result to the next (`Continue`) or has reported and ends the
/// reconcile (`Break` with the requeue action, or an error that is retried with backoff).
struct Run<'a> {
    scaler: &'a TaskQueueScaler,
    ctx: &'a Context,
    ns: String,
    labels: ScalerLabels,
    /// The status being built; written once at the end of every path.
    status: TaskQueueScalerStatus,
    span: tracing::Span,
}

impl<'a> Run<'a> {
    /// The status starts from what was last written (newer than or as new as the cache).
    fn start(scaler: &'a TaskQueueScaler, ctx: &'a Context) -> Self {
        let ns = scaler.namespace().unwrap_or_default();
        let generation = scaler.metadata.generation;
        let base = ctx
            .with_state(scaler, |s| s.written.clone())
            .or_else(|| scaler.status.clone())
            .unwrap_or_default();
        Self {
            scaler,
            ctx,
            labels: ScalerLabels {
                namespace: ns.clone(),
                scaler: scaler.name_any(),
            },
            ns,
            status: TaskQueueScalerStatus {
                observed_generation: generation,
                ..base
            },
            span: tracing::Span::current(),
        }
    }

    /// Reports a failure with the status built so far.
    async fn fail(
        &self,
        reason: &str,
        message: String,
        active: Option<(bool, String)>,
    ) -> Result<(), kube::Error> {
        report_failure(
            self.ctx,
            self.scaler,
            self.status.clone(),
            reason,
            message,
            active,
        )
        .await
    }

    fn forget_history(&self) {
        self.ctx.with_state(self.scaler, |s| s.history.clear());
    }

    /// Step 1: the spec. An invalid one waits for a change of the scaler.
    async fn validate_spec(&mut self) -> Result<ControlFlow<Action, Settings>, Error> {
        match self.scaler.spec.validate() {
            Ok(settings) => {
                self.ctx.with_state(self.scaler, |s| {
                    s.queues = settings.queues.iter().map(|q| q.to_string()).collect();
                });
                Ok(ControlFlow::Continue(settings))
            }
            Err(problems) => {
                self.forget_history();
                self.status.desired_replicas = None;
                self.fail(reasons::INVALID_SPEC, problems.join("; "), None)
                    .await?;
                Ok(ControlFlow::Break(Action::await_change()))
            }
        }
    }

    /// Step 2: the Deployment. A missing one is polled for (its creation also triggers a
    /// reconcile through the Deployment watch).
    async fn find_deployment(
        &mut self,
        settings: &Settings,
    ) -> Result<ControlFlow<Action, Deployment>, Error> {
        let ns = &self.ns;
        match self.ctx.deployment(ns, &settings.deployment).await {
            Ok(Some(d)) => Ok(ControlFlow::Continue(d)),
            Ok(None) => {
                self.forget_history();
                self.status.current_replicas = None;
                self.status.desired_replicas = None;
                let message = format!("deployment {ns}/{} does not exist", settings.deployment);
                self.fail(reasons::DEPLOYMENT_NOT_FOUND, message, None)
                    .await?;
                Ok(ControlFlow::Break(Action::requeue(
                    settings.polling_interval,
                )))
            }
            Err(e) => {
                let message = format!("reading deployment {ns}/{}: {e}", settings.deployment);
                self.fail(reasons::API_ERROR, message, None).await?;
                Err(e.into())
            }
        }
    }

    /// Step 3: no other autoscaler may own the same Deployment. Two autoscalers writing
    /// one replica count undo each other's work, so the scaler reports `Conflict` and
    /// leaves the replicas alone until the other one is gone.
    async fn refuse_other_autoscalers(
        &mut self,
        settings: &Settings,
    ) -> Result<ControlFlow<Action>, Error> {
        let others = match self
            .ctx
            .other_autoscalers(&self.ns, &settings.deployment)
            .await
        {
            Ok(others) => others,
            Err(e) => {
                self.fail(reasons::API_ERROR, e.to_string(), None).await?;
                return Err(e);
            }
        };
        if others.is_empty() {
            return Ok(ControlFlow::Continue(()));
        }
        self.forget_history();
        self.status.desired_replicas = None;
        let message = format!(
            "deployment {} is also scaled by {}; remove one of the autoscalers (its replicas are left alone)",
            settings.deployment,
            others.join(", ")
        );
        self.fail(reasons::CONFLICT, message, None).await?;
        Ok(ControlFlow::Break(Action::requeue(
            settings.polling_interval,
        )))
    }

    /// The Deployment's replicas, into the status, the span and the metrics.
    fn record_current(&mut self, deployment: &Deployment) -> i32 {
        let current = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        self.status.current_replicas = Some(current);
        self.span.record("current", current);
        set_replicas(&self.ctx.metrics.current, &self.labels, current);
        current
    }

    /// Step 4: the depth of every queue, into the status and the metrics. On failure the
    /// last good reading stays in the status; the conditions say it is stale.
    async fn read_depth(&mut self, settings: &Settings) -> Result<(u64, (bool, String)), Error> {
        let depths: BTreeMap<String, u64> =
            match depth::read_all(self.ctx.depth.as_ref(), &settings.queues).await {
                Ok(d) => d,
                Err(e) => {
                    self.status.desired_replicas = self.status.current_replicas;
                    let message = format!("reading the queue depth: {e}");
                    self.fail(reasons::REDIS_UNAVAILABLE, message, None).await?;
                    return Err(e.into());
                }
            };
        let total: u64 = depths.values().sum();
        self.span.record("depth", total);
        for (queue, d) in &depths {
            self.ctx
                .metrics
                .depth
                .get_or_create(&QueueLabels {
                    namespace: self.ns.clone(),
                    scaler: self.labels.scaler.clone(),
                    queue: queue.clone(),
                })
                .set(i64::try_from(*d).unwrap_or(i64::MAX));
        }
        self.status.queue_depth = depths
            .iter()
            .map(|(q, d)| (q.clone(), i64::try_from(*d).unwrap_or(i64::MAX)))
            .collect();
        self.status.depth = Some(i64::try_from(total).unwrap_or(i64::MAX));
        Ok((total, activity(total, settings)))
    }

    /// The desired count, into the status, the span and the metrics.
    fn record_desired(&mut self, desired: i32, decision: &str) {
        self.status.desired_replicas = Some(desired);
        self.span.record("desired", desired);
        self.span.record("decision", decision);
        set_replicas(&self.ctx.metrics.desired, &self.labels, desired);
    }

    /// Writes the status as working, with `reason` and `message`.
    async fn finish_ok(
        mut self,
        settings: &Settings,
        reason: &str,
        message: String,
        active: (bool, String),
    ) -> Result<Action, Error> {
        set_conditions(
            &mut self.status,
            self.scaler.metadata.generation,
            Health::Ok { reason, message },
            Some(active),
        );
        self.ctx.write_status(self.scaler, self.status).await?;
        Ok(Action::requeue(settings.polling_interval))
    }

    /// Step 5a: a paused Deployment is reported on, never scaled.
    async fn report_paused(
        mut self,
        settings: &Settings,
        current: i32,
        active: (bool, String),
    ) -> Result<Action, Error> {
        self.forget_history();
        self.record_desired(current, reasons::PAUSED);
        let message = format!(
            "deployment {} is annotated {PAUSED_ANNOTATION}=true; its replicas are left alone",
            settings.deployment
        );
        self.finish_ok(settings, reasons::PAUSED, message, active)
            .await
    }

    /// Step 5b: decide, scale when the count changes, report.
    async fn decide_and_scale(
        mut self,
        settings: &Settings,
        deployment: &Deployment,
        current: i32,
        total: u64,
        active: (bool, String),
    ) -> Result<Action, Error> {
        let decision: Decision = self.ctx.with_state(self.scaler, |s| {
            scaling::decide(
                &mut s.history,
                Instant::now(),
                total,
                current,
                &settings.policy,
            )
        });
        self.record_desired(decision.desired, decision.reason.as_str());
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
            self.scale(
                settings,
                deployment,
                current,
                &decision,
                total,
                &explanation,
                &active,
            )
            .await?;
        }
        self.finish_ok(settings, reasons::SCALER_READY, explanation, active)
            .await
    }

    /// Patches the Deployment's scale to `decision.desired` and records it (log, metric,
    /// status, Event); a failure is reported and returned.
    #[allow(clippy::too_many_arguments)]
    async fn scale(
        &mut self,
        settings: &Settings,
        deployment: &Deployment,
        current: i32,
        decision: &Decision,
        total: u64,
        explanation: &str,
        active: &(bool, String),
    ) -> Result<(), Error> {
        // The last check before acting: a controller that may have lost its Lease stops.
        if !self.ctx.leadership.is_leader() {
            return Err(Error::NotLeader);
        }
        let desired = decision.desired;
        if let Err(e) = self
            .ctx
            .scale(&self.ns, &settings.deployment, desired)
            .await
        {
            let message = format!(
                "scaling deployment {} to {desired}: {e}",
                settings.deployment
            );
            self.fail(reasons::SCALE_FAILED, message, Some(active.clone()))
                .await?;
            return Err(e.into());
        }
        let direction = Direction::of(current, desired);
        tracing::info!(
            deployment = %settings.deployment,
            from = current,
            to = desired,
            depth = total,
            reason = decision.reason.as_str(),
            "scaled"
        );
        self.ctx
            .metrics
            .scale_operations
            .get_or_create(&ScaleLabels {
                namespace: self.ns.clone(),
                scaler: self.labels.scaler.clone(),
                direction: direction.as_str().to_owned(),
            })
            .inc();
        self.ctx
            .metrics
            .current
            .get_or_create(&self.labels)
            .set(i64::from(desired));
        self.status.current_replicas = Some(desired);
        self.status.last_scale_time = Some(now_time());
        self.ctx
            .publish(
                self.scaler,
                Event {
                    type_: EventType::Normal,
                    reason: direction.event_reason().to_owned(),
                    note: Some(format!(
                        "deployment {} from {current} to {desired} replicas ({explanation})",
                        settings.deployment
                    )),
                    action: "Scale".to_owned(),
                    secondary: Some(deployment.object_ref(&())),
                },
            )
            .await;
        Ok(())
    }
}

/// Sets a scaler's series of a replica-count gauge.
fn set_replicas(gauge: &Family<ScalerLabels, Gauge>, labels: &ScalerLabels, replicas: i32) {
    gauge.get_or_create(labels).set(i64::from(replicas));
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
