//! The controller's main loop: connect, serve health and metrics, and — while holding the
//! leader Lease — run the kube-runtime controller over the TaskQueueScalers of one
//! namespace.
//!
//! Each leadership term gets fresh watches, caches and scaling windows: what a follower
//! did not observe, it does not trust. The scaler watch is filtered on `generation`, so
//! the controller's own status writes do not trigger reconciles (polling does, through
//! `Action::requeue`); the Deployment watch triggers the scalers that target a Deployment
//! when it appears or its paused annotation changes.
//!
//! Shutdown order (SIGTERM or SIGINT): readiness fails, the controller stops taking work
//! and waits for in-flight reconciles, the Lease is released, the HTTP server stops.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, ResourceExt};
use taskq_redis::{Broker, RedisConfig};
use tokio_util::sync::CancellationToken;

use crate::config::Args;
use crate::crd::{PAUSED_ANNOTATION, TaskQueueScaler};
use crate::depth::DepthSource;
use crate::http::{self, Health};
use crate::leader::{Elector, Leadership, LeaseConfig, TermEnd};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, OtherAutoscalers, hpa_target, scaled_object_target};

/// The `reportingController` of the controller's Events.
pub const REPORTING_CONTROLLER: &str = "taskq.dev/taskq-controller";

/// What [`run`] needs besides its connections.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The namespace watched (and where the Lease lives).
    pub namespace: String,
    /// `None`: no leader election, this process always acts.
    pub lease: Option<LeaseConfig>,
    /// This process's identity in Events.
    pub identity: String,
}

/// Runs the controller until `shutdown` is cancelled: elects, reconciles while leader,
/// releases the Lease at the end. `leadership` must be [`Leadership::always`] when
/// `options.lease` is `None`.
pub async fn run(
    client: kube::Client,
    depth: Arc<dyn DepthSource>,
    options: RunOptions,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(options.identity.clone()),
        },
    );
    let term = Term {
        client: client.clone(),
        namespace: options.namespace.clone(),
        depth,
        recorder,
        metrics: metrics.clone(),
        leadership: leadership.clone(),
    };
    let Some(lease) = options.lease else {
        metrics.leader.set(1);
        term.run(shutdown.clone()).await;
        metrics.leader.set(0);
        return;
    };
    let mut elector = Elector::new(client, lease, leadership);
    loop {
        if !elector.acquire(&shutdown).await {
            break;
        }
        metrics.leader.set(1);
        metrics.leader_transitions.inc();
        let stop = shutdown.child_token();
        let controller = term.run(stop.clone());
        tokio::pin!(controller);
        let (end, finished) = tokio::select! {
            end = elector.hold(&shutdown) => (end, false),
            () = &mut controller => {
                tracing::error!("the controller stopped on its own; stepping down");
                (TermEnd::Lost, true)
            }
        };
        stop.cancel();
        if !finished {
            controller.await;
        }
        metrics.leader.set(0);
        match end {
            TermEnd::Stopped => {
                elector.release().await;
                break;
            }
            TermEnd::Lost if finished => {
                elector.release().await;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            TermEnd::Lost => {}
        }
    }
}

/// The parts of one leadership term.
struct Term {
    client: kube::Client,
    namespace: String,
    depth: Arc<dyn DepthSource>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    leadership: Leadership,
}

impl Term {
    /// Watches and reconciles until `stop` is cancelled (then waits for in-flight
    /// reconciles).
    async fn run(&self, stop: CancellationToken) {
        let scalers: Api<TaskQueueScaler> = Api::namespaced(self.client.clone(), &self.namespace);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let (scaler_store, scaler_writer) = reflector::store();
        let (deployment_store, deployment_writer) = reflector::store();
        let scaler_stream = watcher(scalers, watcher::Config::default())
            .default_backoff()
            .reflect(scaler_writer)
            .applied_objects()
            .predicate_filter(predicates::generation, Default::default());
        let deployment_stream = watcher(deployments, watcher::Config::default())
            .default_backoff()
            .reflect(deployment_writer)
            .applied_objects()
            .predicate_filter(deployment_trigger, Default::default());
        // Other autoscalers: an HPA or ScaledObject that appears triggers its Deployment's
        // scalers at once (to report Conflict); one that goes is noticed at the next poll.
        let hpas: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let (hpa_store, hpa_writer) = reflector::store();
        let hpa_stream = watcher(hpas, watcher::Config::default())
            .default_backoff()
            .reflect(hpa_writer)
            .applied_objects();
        let keda = keda_scaled_objects(&self.client).await;
        let mut others = OtherAutoscalers {
            hpas: Some(hpa_store),
            scaled_objects: None,
        };
        let ctx = Context::new(
            self.client.clone(),
            self.depth.clone(),
            deployment_store,
            scaler_store.clone(),
            self.recorder.clone(),
            self.metrics.clone(),
            self.leadership.clone(),
        );
        let targets = scaler_store.clone();
        let scalers_of = move |ns: Option<String>, deployment: Option<&str>| {
            targets
                .state()
                .into_iter()
                .filter(|s| Some(s.spec.deployment.as_str()) == deployment && s.namespace() == ns)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        };
        let for_deployment = scalers_of.clone();
        let for_hpa = scalers_of.clone();
        let mut controller = Controller::for_stream(scaler_stream, scaler_store)
            .watches_stream(deployment_stream, move |d: Deployment| {
                for_deployment(d.namespace(), Some(d.name_any().as_str()))
            })
            .watches_stream(hpa_stream, move |h: HorizontalPodAutoscaler| {
                for_hpa(h.namespace(), hpa_target(&h))
            });
        if let Some(resource) = keda {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
            let writer = reflector::store::Writer::new(resource.clone());
            others.scaled_objects = Some(writer.as_reader());
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .applied_objects();
            controller = controller.watches_stream_with(
                stream,
                move |so: DynamicObject| scalers_of(so.namespace(), scaled_object_target(&so)),
                resource,
            );
        }
        let ctx = Arc::new(ctx.with_other_autoscalers(others));
        tracing::info!(namespace = %self.namespace, "watching TaskQueueScalers, Deployments and other autoscalers");
        controller
            .graceful_shutdown_on(stop.cancelled_owned())
            .run(reconcile::reconcile, reconcile::error_policy, ctx)
            .for_each(|result| async move {
                match result {
                    Ok(_) => {}
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        tracing::warn!(error = %e, "watch failed; retrying with backoff");
                    }
                    // Reconcile failures are logged by the error policy.
                    Err(e) => tracing::debug!(error = %e, "controller"),
                }
            })
            .await;
        tracing::info!("controller stopped");
    }
}

/// The ScaledObject resource when the cluster serves KEDA's `keda.sh/v1alpha1` API
/// (discovery, which every authenticated client may read); `None` without KEDA. Looked up
/// once per leadership term: KEDA installed later is watched from the next term on.
async fn keda_scaled_objects(client: &kube::Client) -> Option<ApiResource> {
    match client.list_api_group_resources("keda.sh/v1alpha1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "scaledobjects") => {
            tracing::info!("KEDA found: ScaledObjects are watched for conflicts");
            let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
            Some(ApiResource::from_gvk_with_plural(&gvk, "scaledobjects"))
        }
        Ok(_) => None,
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(e) => {
            tracing::warn!(error = %e, "KEDA discovery failed; ScaledObjects are not watched this term");
            None
        }
    }
}

/// What of a Deployment triggers its scalers at once: its first sighting (creation, or a
/// new uid) and its paused annotation. Replica changes do not: the controller's own
/// scale would trigger the next step at once instead of one polling interval later
/// (`maxScaleUpStep` is per poll); a replica count someone else set is corrected at the
/// next poll.
fn deployment_trigger(d: &Deployment) -> Option<u64> {
    let mut h = DefaultHasher::new();
    d.annotations().get(PAUSED_ANNOTATION).hash(&mut h);
    Some(h.finish())
}

/// Connects to Redis, retrying with backoff (a cluster is contacted at once; a single
/// Redis lazily). `None` when `shutdown` came first.
async fn connect_redis(
    config: &RedisConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Broker>> {
    let mut failures = 0u32;
    loop {
        match Broker::connect(config).await {
            Ok(b) => return Ok(Some(b)),
            Err(taskq_redis::BrokerError::Config(e)) => {
                anyhow::bail!("invalid Redis settings (TASKQ_REDIS_URL, TASKQ_REDIS_CLUSTER): {e}")
            }
            Err(e) => {
                failures += 1;
                let delay = reconcile::backoff(failures);
                tracing::warn!(error = %e, retry_in = ?delay, "connecting to Redis failed");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The whole program after argument parsing and telemetry: runs until `shutdown` is
/// cancelled. Reads the Kubernetes connection from `KUBECONFIG` or the pod's service
/// account.
pub async fn serve(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG, ~/.kube/config or the pod's service account)")?;
    let namespace = args
        .namespace
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let lease = if args.leader_election {
        Some(args.lease(&namespace).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let identity = match (&lease, &args.identity) {
        (Some(l), _) => l.identity.clone(),
        (None, Some(id)) => id.clone(),
        (None, None) => "taskq-controller".to_owned(),
    };
    let leadership = if lease.is_some() {
        Leadership::new()
    } else {
        Leadership::always()
    };
    let metrics = Arc::new(Metrics::new());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let health = Health {
        metrics: metrics.clone(),
        leadership: leadership.clone(),
        shutting_down: shutting_down.clone(),
        contact_within: lease
            .as_ref()
            .map(|l| (l.lease_duration * 2).max(Duration::from_secs(30))),
    };
    let listener = tokio::net::TcpListener::bind(args.process.listen)
        .await
        .with_context(|| format!("binding {} (TASKQ_LISTEN)", args.process.listen))?;
    tracing::info!(
        listen = %args.process.listen,
        %namespace,
        %identity,
        leader_election = lease.is_some(),
        "taskq-controller starting"
    );
    let server_stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = server_stop.clone();
        async move {
            axum::serve(listener, http::router(health))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });

    let redis = args.redis.config();
    if let Some(broker) = connect_redis(&redis, &shutdown).await? {
        let options = RunOptions {
            namespace,
            lease,
            identity,
        };
        run(
            client,
            Arc::new(broker),
            options,
            metrics,
            leadership,
            shutdown.clone(),
        )
        .await;
    }
    shutting_down.store(true, Ordering::Relaxed);
    server_stop.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "health server failed"),
        Err(e) => tracing::warn!(error = %e, "health server task failed"),
    }
    tracing::info!("taskq-controller stopped");
    Ok(())
}
