//! What reconciles share: the API client, the watch caches (Deployments, scalers, the
//! other autoscalers), the Event recorder, the metrics, and each scaler's memory
//! between runs (its recommendation history, failures in a row, the status last
//! written).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use super::{Error, FIELD_MANAGER};
use crate::crd::{TaskQueueScaler, TaskQueueScalerStatus};
use crate::depth::DepthSource;
use crate::leader::Leadership;
use crate::metrics::{ErrorLabels, Metrics};
use crate::scaling::Recommendations;

/// What one scaler's reconciles remember between runs (in memory, per leadership term).
#[derive(Debug, Default)]
pub(super) struct ScalerState {
    /// The scaler object's uid: a scaler deleted and recreated starts afresh.
    pub(super) uid: Option<String>,
    pub(super) history: Recommendations,
    /// Failed reconciles in a row (for the backoff).
    pub(super) failures: u32,
    /// The status last written, to skip identical writes.
    pub(super) written: Option<TaskQueueScalerStatus>,
    /// Queues whose metric series exist (to remove them when the scaler goes).
    pub(super) queues: Vec<String>,
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

    pub(super) fn with_state<T>(
        &self,
        scaler: &TaskQueueScaler,
        f: impl FnOnce(&mut ScalerState) -> T,
    ) -> T {
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
    pub(super) fn prune(&self) {
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
    pub(super) async fn deployment(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<Deployment>, kube::Error> {
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
    pub(super) async fn other_autoscalers(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Vec<String>, Error> {
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

    pub(super) async fn scale(
        &self,
        ns: &str,
        name: &str,
        replicas: i32,
    ) -> Result<(), kube::Error> {
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

    pub(super) async fn publish(&self, scaler: &TaskQueueScaler, event: Event) {
        if let Err(e) = self.recorder.publish(&event, &scaler.object_ref(&())).await {
            tracing::warn!(error = %e, reason = %event.reason, "publishing an event failed");
        }
    }

    /// Writes `status` unless it is what was last written and what the cache shows.
    pub(super) async fn write_status(
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

    pub(super) fn count_error(&self, scaler: &TaskQueueScaler, reason: &str) {
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
