//! The exact Kubernetes API calls of one reconcile, checked against a tower-test mock
//! standing in for the API server: each expected request is asserted (method, path,
//! query, body) and answered, and after the reconcile nothing else may arrive.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use taskq_controller::crd::{PAUSED_ANNOTATION, TaskQueueScaler, TaskQueueScalerSpec};
use taskq_controller::depth::FixedDepth;
use taskq_controller::leader::Leadership;
use taskq_controller::metrics::Metrics;
use taskq_controller::reconcile::{self, Context, Error, OtherAutoscalers};
use tower_test::mock::{self, Handle};

const NS: &str = "team";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

struct Fixture {
    ctx: Arc<Context>,
    api: ApiHandle,
    depth: Arc<FixedDepth>,
    deployments: Writer<Deployment>,
    metrics: Arc<Metrics>,
}

impl Fixture {
    /// Puts the Deployment with `replicas` (paused or not) in the watched cache.
    fn has_deployment(&mut self, replicas: i32, paused: bool) {
        self.deployments
            .apply_watcher_event(&watcher::Event::Apply(deployment(replicas, paused)));
    }
}

fn fixture(leadership: Leadership) -> Fixture {
    fixture_with(leadership, OtherAutoscalers::default())
}

fn fixture_with(leadership: Leadership, others: OtherAutoscalers) -> Fixture {
    let (service, api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let (deployment_store, deployments) = reflector::store();
    let (scaler_store, mut scalers) = reflector::store::<TaskQueueScaler>();
    scalers.apply_watcher_event(&watcher::Event::Apply(scaler(spec())));
    let depth = Arc::new(FixedDepth::new());
    let metrics = Arc::new(Metrics::new());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "taskq.dev/taskq-controller".into(),
            instance: Some("test".into()),
        },
    );
    let ctx = Arc::new(
        Context::new(
            client,
            depth.clone(),
            deployment_store,
            scaler_store,
            recorder,
            metrics.clone(),
            leadership,
        )
        .with_other_autoscalers(others),
    );
    Fixture {
        ctx,
        api,
        depth,
        deployments,
        metrics,
    }
}

fn spec() -> TaskQueueScalerSpec {
    serde_json::from_value(json!({
        "deployment": "worker",
        "queues": ["default", "emails"],
        "minReplicas": 1,
        "maxReplicas": 10,
        "targetTasksPerReplica": 10,
        "maxScaleUpStep": 2,
        "pollingInterval": 7,
        "scaleDownStabilization": 60,
    }))
    .expect("spec")
}

fn scaler(spec: TaskQueueScalerSpec) -> TaskQueueScaler {
    let mut s = TaskQueueScaler::new("worker-scaler", spec);
    s.metadata.namespace = Some(NS.into());
    s.metadata.uid = Some("uid-1".into());
    s.metadata.generation = Some(3);
    s
}

fn deployment(replicas: i32, paused: bool) -> Deployment {
    let annotations = paused.then(|| [(PAUSED_ANNOTATION.to_owned(), "true".to_owned())].into());
    Deployment {
        metadata: ObjectMeta {
            name: Some("worker".into()),
            namespace: Some(NS.into()),
            uid: Some("deploy-uid".into()),
            annotations,
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// Takes the next request, checks its method and path-and-query, returns its JSON body
/// and the responder.
async fn expect(
    api: &mut ApiHandle,
    method: Method,
    path_and_query: &str,
) -> (Value, mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request arrived; expected {method} {path_and_query}"))
        .expect("the client is gone");
    assert_eq!(
        (request.method().clone(), request.uri().to_string()),
        (method, path_and_query.to_owned()),
        "unexpected request"
    );
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON request body")
    };
    (body, send)
}

fn respond(
    send: mock::SendResponse<Response<Body>>,
    status: StatusCode,
    body: &impl serde::Serialize,
) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response"),
    );
}

/// Nothing else reaches the API server.
/// Expects the Warning Event `reason` (its note containing `note`) and accepts it, then
/// the status patch that follows it, answered with `scaler`; returns the patched status.
async fn expect_warning(
    api: &mut ApiHandle,
    reason: &str,
    note: &str,
    scaler: &impl serde::Serialize,
) -> Value {
    let (event, send) = expect(api, Method::POST, EVENTS_PATH).await;
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reason"], reason, "{event}");
    assert!(
        event["note"].as_str().unwrap_or_default().contains(note),
        "{event}"
    );
    respond(send, StatusCode::CREATED, &event);
    let (apply, send) = expect(api, Method::PATCH, STATUS_PATH).await;
    respond(send, StatusCode::OK, scaler);
    apply["status"].clone()
}

async fn expect_nothing_more(api: &mut ApiHandle) {
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), api.next_request()).await
    {
        panic!(
            "unexpected extra request: {} {}",
            request.method(),
            request.uri()
        );
    }
}

/// Awaits a reconcile that must make no API call (one would wait forever for an answer).
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("the reconcile waited for an API call it should not have made")
}

const SCALE_PATH: &str =
    "/apis/apps/v1/namespaces/team/deployments/worker/scale?&fieldManager=taskq-controller";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/team/events?";
const STATUS_PATH: &str = "/apis/taskq.dev/v1alpha1/namespaces/team/taskqueuescalers/worker-scaler/status?&force=true&fieldManager=taskq-controller";

fn condition<'a>(status: &'a Value, type_: &str) -> (&'a str, &'a str) {
    let c = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"));
    (
        c["status"].as_str().unwrap_or_default(),
        c["reason"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn scale_up_patches_the_scale_subresource_then_records_an_event_then_applies_status() {
    let mut f = fixture(Leadership::always());
    f.has_deployment(1, false);
    f.depth.set("default", 30);
    f.depth.set("emails", 15);
    let s = Arc::new(scaler(spec()));
    let task = tokio::spawn(reconcile::reconcile(s.clone(), f.ctx.clone()));

    // 45 tasks, 10 per replica: 5 recommended, 1 + maxScaleUpStep 2 = 3 now.
    let (body, send) = expect(&mut f.api, Method::PATCH, SCALE_PATH).await;
    assert_eq!(body, json!({"spec": {"replicas": 3}}));
    respond(
        send,
        StatusCode::OK,
        &json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": "worker", "namespace": NS},
                "spec": {"replicas": 3}, "status": {"replicas": 1}}),
    );

    let (event, send) = expect(&mut f.api, Method::POST, EVENTS_PATH).await;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "ScaledUp");
    assert_eq!(event["action"], "Scale");
    assert_eq!(event["regarding"]["kind"], "TaskQueueScaler");
    assert_eq!(event["regarding"]["name"], "worker-scaler");
    assert_eq!(event["related"]["kind"], "Deployment");
    assert_eq!(event["reportingController"], "taskq.dev/taskq-controller");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("from 1 to 3") && note.contains("45 pending"),
        "{note}"
    );
    respond(send, StatusCode::CREATED, &event);

    let (apply, send) = expect(&mut f.api, Method::PATCH, STATUS_PATH).await;
    assert_eq!(apply["apiVersion"], "taskq.dev/v1alpha1");
    assert_eq!(apply["kind"], "TaskQueueScaler");
    let status = &apply["status"];
    assert_eq!(status["queueDepth"], json!({"default": 30, "emails": 15}));
    assert_eq!(status["depth"], 45);
    assert_eq!(status["desiredReplicas"], 3);
    assert_eq!(status["currentReplicas"], 3);
    assert_eq!(status["observedGeneration"], 3);
    assert!(status["lastScaleTime"].is_string(), "{status}");
    assert_eq!(condition(status, "Ready"), ("True", "ScalerReady"));
    assert_eq!(condition(status, "Active"), ("True", "QueuesHaveTasks"));
    assert_eq!(condition(status, "Error"), ("False", "NoError"));
    let mut answered = (*s).clone();
    answered.status = serde_json::from_value(status.clone()).expect("status");
    respond(
        send,
        StatusCode::OK,
        &serde_json::to_value(&answered).expect("json"),
    );

    let action = task.await.expect("join").expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(7)));
    expect_nothing_more(&mut f.api).await;
    let metrics = f.metrics.encode();
    for line in [
        "taskq_controller_desired_replicas{namespace=\"team\",scaler=\"worker-scaler\"} 3",
        "taskq_controller_current_replicas{namespace=\"team\",scaler=\"worker-scaler\"} 3",
        "taskq_controller_queue_depth{namespace=\"team\",scaler=\"worker-scaler\",queue=\"emails\"} 15",
        "taskq_controller_scale_operations_total{namespace=\"team\",scaler=\"worker-scaler\",direction=\"up\"} 1",
        "taskq_controller_reconciles_total 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn steady_state_writes_status_once_and_then_nothing() {
    let mut f = fixture(Leadership::always());
    f.has_deployment(2, false);
    f.depth.set("default", 15);
    let s = Arc::new(scaler(spec()));
    let task = tokio::spawn(reconcile::reconcile(s.clone(), f.ctx.clone()));
    let (apply, send) = expect(&mut f.api, Method::PATCH, STATUS_PATH).await;
    let status = apply["status"].clone();
    assert_eq!(status["desiredReplicas"], 2);
    assert_eq!(status["currentReplicas"], 2);
    assert!(status.get("lastScaleTime").is_none(), "{status}");
    respond(send, StatusCode::OK, &*s);
    task.await.expect("join").expect("reconcile");
    expect_nothing_more(&mut f.api).await;

    // The same reading again, with the written status in the cache: no call at all.
    let mut cached = (*s).clone();
    cached.status = serde_json::from_value(status).expect("status");
    let action = within(reconcile::reconcile(Arc::new(cached), f.ctx.clone()))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(7)));
    expect_nothing_more(&mut f.api).await;
}

#[tokio::test]
async fn invalid_spec_is_reported_by_condition_and_one_warning_event_and_never_scales() {
    let mut f = fixture(Leadership::always());
    f.has_deployment(1, false);
    f.depth.set("default", 500);
    let bad = Arc::new(scaler(TaskQueueScalerSpec {
        min_replicas: 5,
        max_replicas: 2,
        ..spec()
    }));
    let task = tokio::spawn(reconcile::reconcile(bad.clone(), f.ctx.clone()));
    let status = expect_warning(
        &mut f.api,
        "InvalidSpec",
        "spec.minReplicas (5) must not exceed spec.maxReplicas (2)",
        &*bad,
    )
    .await;
    assert_eq!(condition(&status, "Ready"), ("False", "InvalidSpec"));
    assert_eq!(condition(&status, "Error"), ("True", "InvalidSpec"));
    assert_eq!(condition(&status, "Active"), ("Unknown", "DepthUnknown"));
    let action = task
        .await
        .expect("join")
        .expect("an invalid spec is no error to retry");
    assert_eq!(action, Action::await_change());
    expect_nothing_more(&mut f.api).await;

    // Again: the condition is already there, so neither an Event nor a write.
    let mut cached = (*bad).clone();
    cached.status = serde_json::from_value(status).expect("status");
    within(reconcile::reconcile(Arc::new(cached), f.ctx.clone()))
        .await
        .expect("reconcile");
    expect_nothing_more(&mut f.api).await;
    assert!(
        f.metrics
            .encode()
            .contains("taskq_controller_reconcile_errors_total{namespace=\"team\",scaler=\"worker-scaler\",reason=\"InvalidSpec\"} 2")
    );
}

#[tokio::test]
async fn missing_deployment_is_confirmed_with_a_get_then_reported() {
    let mut f = fixture(Leadership::always());
    f.depth.set("default", 50);
    let s = Arc::new(scaler(spec()));
    let task = tokio::spawn(reconcile::reconcile(s.clone(), f.ctx.clone()));
    let (_, send) = expect(
        &mut f.api,
        Method::GET,
        "/apis/apps/v1/namespaces/team/deployments/worker",
    )
    .await;
    respond(
        send,
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "deployments.apps \"worker\" not found", "reason": "NotFound", "code": 404}),
    );
    let status = expect_warning(&mut f.api, "DeploymentNotFound", "", &*s).await;
    assert_eq!(condition(&status, "Ready"), ("False", "DeploymentNotFound"));
    let action = task.await.expect("join").expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(7)));
    expect_nothing_more(&mut f.api).await;
}

#[tokio::test]
async fn paused_deployment_gets_a_status_and_no_scale() {
    let mut f = fixture(Leadership::always());
    f.has_deployment(1, true);
    f.depth.set("default", 500);
    let s = Arc::new(scaler(spec()));
    let task = tokio::spawn(reconcile::reconcile(s.clone(), f.ctx.clone()));
    let (apply, send) = expect(&mut f.api, Method::PATCH, STATUS_PATH).await;
    let status = &apply["status"];
    assert_eq!(condition(status, "Ready"), ("True", "AutoscalingPaused"));
    assert_eq!(condition(status, "Active"), ("True", "QueuesHaveTasks"));
    assert_eq!(status["desiredReplicas"], 1);
    assert_eq!(status["depth"], 500);
    respond(send, StatusCode::OK, &*s);
    task.await.expect("join").expect("reconcile");
    expect_nothing_more(&mut f.api).await;
}

#[tokio::test]
async fn redis_failure_is_reported_and_retried_with_backoff() {
    let mut f = fixture(Leadership::always());
    f.has_deployment(2, false);
    f.depth.fail("emails", "connection refused");
    let s = Arc::new(scaler(spec()));
    let task = tokio::spawn(reconcile::reconcile(s.clone(), f.ctx.clone()));
    let (event, send) = expect(&mut f.api, Method::POST, EVENTS_PATH).await;
    assert_eq!(event["reason"], "RedisUnavailable");
    respond(send, StatusCode::CREATED, &event);
    let (apply, send) = expect(&mut f.api, Method::PATCH, STATUS_PATH).await;
    assert_eq!(
        condition(&apply["status"], "Error"),
        ("True", "RedisUnavailable")
    );
    assert_eq!(apply["status"]["desiredReplicas"], 2, "replicas are held");
    respond(send, StatusCode::OK, &*s);
    let err = task
        .await
        .expect("join")
        .expect_err("a Redis failure is retried");
    assert!(matches!(err, Error::Depth(_)), "{err}");
    expect_nothing_more(&mut f.api).await;
    let first = reconcile::retry_delay(&s, &err, &f.ctx).expect("retried");
    let second = reconcile::retry_delay(&s, &err, &f.ctx).expect("retried");
    assert!(
        first < Duration::from_millis(1200) && second > Duration::from_millis(1700),
        "backoff doubles: {first:?} then {second:?}"
    );

    // Redis is back: one good reconcile resets the backoff.
    f.depth.set("emails", 0);
    let task = tokio::spawn(reconcile::reconcile(s.clone(), f.ctx.clone()));
    let (apply, send) = expect(&mut f.api, Method::PATCH, STATUS_PATH).await;
    assert_eq!(condition(&apply["status"], "Error"), ("False", "NoError"));
    assert_eq!(
        condition(&apply["status"], "Ready"),
        ("True", "ScalerReady")
    );
    respond(send, StatusCode::OK, &*s);
    task.await.expect("join").expect("reconcile");
    expect_nothing_more(&mut f.api).await;
    let again = reconcile::retry_delay(&s, &err, &f.ctx).expect("retried");
    assert!(again < Duration::from_millis(1200), "reset: {again:?}");
}

#[tokio::test]
async fn a_controller_that_is_not_leader_makes_no_call() {
    let mut f = fixture(Leadership::new());
    f.has_deployment(1, false);
    f.depth.set("default", 500);
    let err = within(reconcile::reconcile(
        Arc::new(scaler(spec())),
        f.ctx.clone(),
    ))
    .await
    .expect_err("not leader");
    assert!(matches!(err, Error::NotLeader));
    expect_nothing_more(&mut f.api).await;
}

/// A Deployment that an HPA also scales: a Warning Event and the Conflict condition, and
/// no scale however deep the queues.
#[tokio::test]
async fn a_deployment_an_hpa_also_scales_is_reported_as_conflict_and_never_scaled() {
    let (hpas, mut writer) = reflector::store::<HorizontalPodAutoscaler>();
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "cpu", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}, "maxReplicas": 5}
    }))
    .expect("hpa");
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(hpa));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let others = OtherAutoscalers {
        hpas: Some(hpas),
        scaled_objects: None,
    };
    let mut f = fixture_with(Leadership::always(), others);
    f.has_deployment(1, false);
    f.depth.set("default", 500);
    let s = Arc::new(scaler(spec()));
    let task = tokio::spawn(reconcile::reconcile(s.clone(), f.ctx.clone()));
    let status = expect_warning(&mut f.api, "Conflict", "HorizontalPodAutoscaler/cpu", &*s).await;
    assert_eq!(condition(&status, "Ready"), ("False", "Conflict"));
    assert_eq!(condition(&status, "Error"), ("True", "Conflict"));
    let action = task
        .await
        .expect("join")
        .expect("a conflict is polled, not retried");
    assert_eq!(action, Action::requeue(Duration::from_secs(7)));
    expect_nothing_more(&mut f.api).await;
}
