//! The steps of one reconcile ([`Run`]), from the spec to the scale and the status it
//! writes.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::status::{Health, now_time, report_failure, set_conditions};
use super::{Context, Error, reasons};
use crate::crd::{PAUSED_ANNOTATION, Settings, TaskQueueScaler, TaskQueueScalerStatus};
use crate::depth;
use crate::metrics::{QueueLabels, ScaleLabels, ScalerLabels};
use crate::scaling::{self, Decision};

pub(super) fn is_paused(d: &Deployment) -> bool {
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

/// One reconcile of one scaler: the steps of `reconcile_inner`, in order. Each step
/// either hands its result to the next (`Continue`) or has reported and ends the
/// reconcile (`Break` with the requeue action, or an error that is retried with backoff).
pub(super) struct Run<'a> {
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
    pub(super) fn start(scaler: &'a TaskQueueScaler, ctx: &'a Context) -> Self {
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
    pub(super) async fn validate_spec(&mut self) -> Result<ControlFlow<Action, Settings>, Error> {
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
    pub(super) async fn find_deployment(
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
    pub(super) async fn refuse_other_autoscalers(
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
    pub(super) fn record_current(&mut self, deployment: &Deployment) -> i32 {
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
    pub(super) async fn read_depth(
        &mut self,
        settings: &Settings,
    ) -> Result<(u64, (bool, String)), Error> {
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
    pub(super) async fn report_paused(
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
    pub(super) async fn decide_and_scale(
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
