//! The controller against a real kube-apiserver + etcd (no kubelet, no
//! controller-manager: Deployments are stored and their `scale` subresource works, pods
//! never run) and a real `redis-server`.
//!
//! The API server comes from `TASKQ_TEST_KUBECONFIG`, which `scripts/test.sh` exports
//! after starting one with `scripts/chart/kube-env.sh`. Without it these tests fail with
//! instructions; only `TASKQ_TEST_SKIP_KUBE=1` skips them, loudly.
//!
//! Every test has its own namespace, holding the chart's ServiceAccount and Role (the
//! rules are read from `charts/taskq/templates/controller/rbac.yaml`); the controller
//! runs with that ServiceAccount's token, so a missing permission fails the test.
//! The CRD applied is the chart's template; a minimal KEDA ScaledObject CRD is applied
//! for the conflict test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;
use taskq_controller::crd::{PAUSED_ANNOTATION, TaskQueueScaler, TaskQueueScalerStatus};
use taskq_controller::leader::{Leadership, LeaseConfig};
use taskq_controller::metrics::Metrics;
use taskq_controller::runner::{RunOptions, run};
use taskq_core::{Limits, NewTask, QueueName, TaskId};
use taskq_redis::{Broker, CallId, EnqueueItem, RedisConfig};
use taskq_testkit::{ChaosProxy, ChildGuard, RedisServer, free_port, wait_for, wait_until};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const KUBECONFIG_ENV: &str = "TASKQ_TEST_KUBECONFIG";
const SKIP_ENV: &str = "TASKQ_TEST_SKIP_KUBE";
const SA: &str = "taskq-controller";
const LEASE: &str = "taskq-controller";
const POLL: Duration = Duration::from_millis(50);
/// How long a scaler's condition may take to show (a bound for a failing test, not a
/// measured reaction time: those are the `REACTION TIME` lines).
const CONDITION_WAIT: Duration = Duration::from_secs(30);

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// The admin kubeconfig, or `None` (after a loud message) when told to skip.
fn kubeconfig_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(KUBECONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!(
            "\n!!!!!!!! SKIPPED: {SKIP_ENV}=1 — the taskq-controller tests against a real \
             kube-apiserver did not run !!!!!!!!\n"
        );
        return None;
    }
    panic!(
        "{KUBECONFIG_ENV} is not set: these tests need a real kube-apiserver + etcd.\n\
         Run them through `scripts/test.sh` (or `scripts/controller-test.sh`), which start one, or:\n\
         \x20 bash scripts/chart/kube-env.sh build   # once, cached in ~/.cache/taskq/kube\n\
         \x20 TASKQ_KUBE_STATE=/tmp/taskq-kube-ctl bash scripts/chart/kube-env.sh start\n\
         \x20 export {KUBECONFIG_ENV}=/tmp/taskq-kube-ctl/kubeconfig\n\
         ({SKIP_ENV}=1 skips them, loudly.)"
    );
}

async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    Client::try_from(config).expect("kube client")
}

/// The rules of the controller's Role, as the chart writes them.
fn chart_role_rules() -> Vec<PolicyRule> {
    let path = repo_file("charts/taskq/templates/controller/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("read rbac.yaml");
    let role = text
        .split("\n---")
        .find(|doc| doc.contains("\nkind: Role\n"))
        .expect("a Role in rbac.yaml");
    let rules = &role[role.find("\nrules:").expect("rules: in the Role")..];
    assert!(
        !rules.contains("{{"),
        "the Role's rules must be plain YAML:\n{rules}"
    );
    #[derive(serde::Deserialize)]
    struct Rules {
        rules: Vec<PolicyRule>,
    }
    serde_saphyr::from_str::<Rules>(rules)
        .expect("the Role's rules parse")
        .rules
}

/// One test's namespace on the API server, with the controller's ServiceAccount and Role.
struct Kube {
    admin: Client,
    server: String,
    ns: String,
    dir: TempDir,
}

impl Kube {
    async fn new(tag: &str) -> Option<Self> {
        let path = kubeconfig_path()?;
        let kc = Kubeconfig::read_from(&path).expect("kubeconfig");
        let server = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .expect("a server in the kubeconfig");
        let admin = client_from(&path).await;
        install_crd(&admin).await;
        let ns = format!("tq-{tag}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        Api::<Namespace>::all(admin.clone())
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(ns.clone()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            )
            .await
            .expect("create namespace");
        let meta = |name: &str| ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        };
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .create(
                &PostParams::default(),
                &ServiceAccount {
                    metadata: meta(SA),
                    ..ServiceAccount::default()
                },
            )
            .await
            .expect("create service account");
        Api::<Role>::namespaced(admin.clone(), &ns)
            .create(
                &PostParams::default(),
                &Role {
                    metadata: meta(SA),
                    rules: Some(chart_role_rules()),
                },
            )
            .await
            .expect("create the chart's Role");
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: meta(SA),
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "Role".into(),
                        name: SA.into(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".into(),
                        name: SA.into(),
                        namespace: Some(ns.clone()),
                        ..Subject::default()
                    }]),
                },
            )
            .await
            .expect("create role binding");
        let dir = tempfile::Builder::new()
            .prefix("taskq-ctl-kube-")
            .tempdir()
            .expect("tempdir");
        eprintln!("[{tag}] namespace {ns} on {server}");
        Some(Self {
            admin,
            server,
            ns,
            dir,
        })
    }

    /// A kubeconfig authenticating as the controller's ServiceAccount (a fresh token).
    async fn controller_kubeconfig(&self) -> PathBuf {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued: TokenRequest = Api::<ServiceAccount>::namespaced(self.admin.clone(), &self.ns)
            .create_subresource("token", SA, &PostParams::default(), &request)
            .await
            .expect("token request");
        let token = issued.status.expect("issued token").token;
        let path = self
            .dir
            .path()
            .join(format!("sa-{:08x}.kubeconfig", rand::random::<u32>()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: sa, namespace: {}}}\ncurrent-context: test\n",
            self.server, self.ns
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    async fn controller_client(&self) -> Client {
        client_from(&self.controller_kubeconfig().await).await
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn scalers(&self) -> Api<TaskQueueScaler> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn create_deployment(&self, name: &str, replicas: i32) {
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "worker", "image": "registry.invalid/taskq-worker:test"}]}
                }
            }
        }))
        .expect("deployment");
        self.deployments()
            .create(&PostParams::default(), &d)
            .await
            .expect("create deployment");
    }

    /// Creates Deployment `worker` with one replica and a scaler `worker` with `spec`.
    async fn create_worker_and_scaler(&self, spec: serde_json::Value) {
        self.create_deployment("worker", 1).await;
        self.create_scaler("worker", spec).await;
    }

    async fn create_scaler(&self, name: &str, spec: serde_json::Value) {
        self.try_create_scaler(name, spec)
            .await
            .expect("create scaler");
    }

    /// Creates a scaler from raw JSON (what the API server validates, not the Rust type).
    async fn try_create_scaler(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<TaskQueueScaler, kube::Error> {
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            self.admin.clone(),
            &self.ns,
            &kube::api::ApiResource::erase::<TaskQueueScaler>(&()),
        );
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "taskq.dev/v1alpha1",
            "kind": "TaskQueueScaler",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        }))
        .expect("scaler");
        api.create(&PostParams::default(), &obj).await?;
        self.scalers().get(name).await
    }

    /// Creates an object of any kind from JSON (HPAs, KEDA ScaledObjects).
    async fn create_dynamic(&self, resource: &kube::api::ApiResource, obj: serde_json::Value) {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.admin.clone(), &self.ns, resource);
        let obj: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
        api.create(&PostParams::default(), &obj)
            .await
            .expect("create object");
    }

    async fn delete_dynamic(&self, resource: &kube::api::ApiResource, name: &str) {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.admin.clone(), &self.ns, resource);
        api.delete(name, &Default::default())
            .await
            .expect("delete object");
    }

    async fn patch_scaler(&self, name: &str, spec: serde_json::Value) {
        self.scalers()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .expect("patch scaler");
    }

    async fn annotate_paused(&self, name: &str, paused: bool) {
        let value = if paused { json!("true") } else { json!(null) };
        self.deployments()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {PAUSED_ANNOTATION: value}}})),
            )
            .await
            .expect("annotate deployment");
    }

    async fn replicas(&self, name: &str) -> i32 {
        self.deployments()
            .get(name)
            .await
            .expect("get deployment")
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(1)
    }

    /// Polls the Deployment until `want(replicas)`, at most until `since + timeout`;
    /// returns the replicas and the time since `since`, or panics with `what`.
    async fn wait_replicas(
        &self,
        name: &str,
        since: Instant,
        timeout: Duration,
        what: &str,
        want: impl Fn(i32) -> bool,
    ) -> (i32, Duration) {
        let left = timeout.saturating_sub(since.elapsed());
        let found = wait_for(left, POLL, || async {
            let r = self.replicas(name).await;
            want(r).then(|| (r, since.elapsed()))
        })
        .await;
        match found {
            Some(found) => found,
            None => panic!(
                "{what}: deployment {name} still has {} replicas {timeout:?} after the change; scaler status: {:#?}",
                self.replicas(name).await,
                self.status(name).await
            ),
        }
    }

    /// Polls the Deployment until it has `replicas`, at most `timeout` from now, or panics
    /// with `what`.
    async fn wait_replicas_eq(&self, name: &str, replicas: i32, timeout: Duration, what: &str) {
        self.wait_replicas(name, Instant::now(), timeout, what, |r| r == replicas)
            .await;
    }

    /// Asserts the replicas stay `expected` for `period`.
    async fn assert_replicas_hold(&self, name: &str, expected: i32, period: Duration, why: &str) {
        let end = Instant::now() + period;
        while Instant::now() < end {
            let r = self.replicas(name).await;
            assert_eq!(r, expected, "{why}: replicas changed to {r}");
            tokio::time::sleep(POLL).await;
        }
    }

    async fn status(&self, scaler: &str) -> Option<TaskQueueScalerStatus> {
        self.scalers().get(scaler).await.ok().and_then(|s| s.status)
    }

    /// The scaler's status once `ok` holds for it (the controller writes the status after
    /// it patched the scale, so the two are observed one after the other).
    async fn wait_status(
        &self,
        scaler: &str,
        timeout: Duration,
        ok: impl Fn(&TaskQueueScalerStatus) -> bool,
    ) -> TaskQueueScalerStatus {
        let found = wait_for(timeout, POLL, || async {
            self.status(scaler).await.filter(|s| ok(s))
        })
        .await;
        found
            .unwrap_or_else(|| panic!("scaler {scaler}: status not as expected within {timeout:?}"))
    }

    async fn wait_condition(
        &self,
        scaler: &str,
        type_: &str,
        status: &str,
        reason: &str,
        timeout: Duration,
    ) {
        let ok = wait_until(timeout, POLL, || async {
            self.status(scaler).await.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
            })
        })
        .await;
        assert!(
            ok,
            "scaler {scaler}: no condition {type_}={status} ({reason}) within {timeout:?}; status: {:#?}",
            self.status(scaler).await
        );
    }

    async fn events(&self) -> Vec<K8sEvent> {
        Api::<K8sEvent>::namespaced(self.admin.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
    }

    async fn wait_event(&self, scaler: &str, reason: &str, timeout: Duration) -> K8sEvent {
        let found = wait_for(timeout, POLL, || async {
            self.events().await.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(scaler)
            })
        })
        .await;
        found.unwrap_or_else(|| panic!("no {reason} event for {scaler} within {timeout:?}"))
    }

    async fn lease_holder(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.admin.clone(), &self.ns)
            .get_opt(LEASE)
            .await
            .expect("get lease")
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }
}

/// Applies the chart's CRD (server-side, idempotent) and waits until it is established.
async fn install_crd(admin: &Client) {
    let text = std::fs::read_to_string(repo_file(taskq_controller::crd::CRD_TEMPLATE_PATH))
        .expect("read the chart's CRD template");
    let body = taskq_controller::crd::crd_of_template(&text).expect("the CRD inside the template");
    let crd: CustomResourceDefinition = serde_saphyr::from_str(body).expect("CRD YAML");
    apply_crd(admin, &crd).await;
}

/// Applies `crd` (server-side, idempotent) and waits until it is established.
async fn apply_crd(admin: &Client, crd: &CustomResourceDefinition) {
    let name = crd.metadata.name.clone().expect("a CRD name");
    let api = Api::<CustomResourceDefinition>::all(admin.clone());
    api.patch(
        &name,
        &PatchParams::apply("taskq-controller-tests").force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("apply the CRD {name}: {e}"));
    let established = wait_until(Duration::from_secs(30), POLL, || async {
        api.get(&name)
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
    assert!(
        established,
        "the CRD {name} was not established within 30 s"
    );
}

/// Tasks enqueued straight into Redis, as the api would.
async fn push(broker: &Broker, queue: &str, n: usize, delay_ms: Option<i64>) {
    let items: Vec<EnqueueItem> = (0..n)
        .map(|_| {
            let req: NewTask = serde_json::from_value(json!({
                "type": "noop", "queue": queue, "delay_ms": delay_ms,
            }))
            .expect("task");
            let rec = Limits::default()
                .admit(req, taskq_core::now(), None)
                .expect("admitted");
            EnqueueItem::from_record(&rec, 1)
        })
        .collect();
    let added = broker.enqueue(&items).await.expect("enqueue");
    assert!(added.iter().all(|a| *a));
}

/// Does what workers would: promotes due scheduled tasks, takes every runnable task and
/// acknowledges it, until the queues hold nothing runnable.
async fn drain(broker: &Broker, queues: &[&str]) {
    for q in queues {
        let queue: QueueName = q.parse().expect("queue");
        broker
            .promote(&queue, taskq_core::now_ms(), 10_000)
            .await
            .expect("promote");
        loop {
            let taken = broker
                .dequeue(
                    &mut CallId::new(),
                    &queue,
                    100,
                    Duration::from_secs(60),
                    "test-drain",
                    0,
                )
                .await
                .expect("dequeue")
                .tasks;
            if taken.is_empty() {
                break;
            }
            let acks: Vec<(TaskId, &str, Option<&serde_json::Value>)> = taken
                .iter()
                .map(|t| (t.msg.id, t.token.as_str(), None))
                .collect();
            broker.ack(&queue, "test-drain", &acks).await.expect("ack");
        }
    }
}

async fn broker(url: &str) -> Broker {
    Broker::connect(&RedisConfig::from_urls(url, false))
        .await
        .expect("connect to redis")
}

/// A controller running in this process, as `identity`, with short Lease timings.
struct InProcess {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl InProcess {
    async fn start(kube: &Kube, redis_url: &str, identity: &str) -> Self {
        let client = kube.controller_client().await;
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let options = RunOptions {
            namespace: kube.ns.clone(),
            lease: Some(LeaseConfig {
                name: LEASE.into(),
                namespace: kube.ns.clone(),
                identity: identity.into(),
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(500),
            }),
            identity: identity.into(),
        };
        let task = tokio::spawn(run(
            client,
            Arc::new(broker(redis_url).await),
            options,
            metrics.clone(),
            Leadership::new(),
            stop.clone(),
        ));
        Self {
            stop,
            task,
            metrics,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the controller stops within 15 s")
            .expect("the controller task");
    }
}

fn report(what: &str, took: Duration) {
    eprintln!(
        "REACTION TIME {what}: {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
}

/// Up with the depth (within two polling intervals), no scale-down inside the
/// stabilization window, back to the minimum after it, to zero and back from zero at the
/// activation threshold, and a paused Deployment left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_with_queue_depth_through_the_scale_subresource() {
    let Some(kube) = Kube::new("scale").await else {
        return;
    };
    let redis = RedisServer::start();
    let b = broker(&redis.url()).await;
    let polling = Duration::from_secs(1);
    let window = Duration::from_secs(4);
    kube.create_worker_and_scaler(json!({
        "deployment": "worker",
        "queues": ["default", "emails"],
        "minReplicas": 1,
        "maxReplicas": 6,
        "targetTasksPerReplica": 10,
        "activationTasks": 1,
        "pollingInterval": 1,
        "scaleDownStabilization": 4,
        "maxScaleUpStep": 2,
    }))
    .await;
    let controller = InProcess::start(&kube, &redis.url(), "ctl-scale").await;
    kube.wait_condition("worker", "Ready", "True", "ScalerReady", CONDITION_WAIT)
        .await;
    kube.wait_condition("worker", "Active", "False", "QueuesIdle", CONDITION_WAIT)
        .await;
    assert_eq!(kube.replicas("worker").await, 1);

    // Up: 40 queued + 5 scheduled that fall due in 300 ms; 100 scheduled an hour out
    // never count. 45 pending → 5 replicas, in steps of at most 2.
    let t0 = Instant::now();
    push(&b, "default", 40, None).await;
    push(&b, "emails", 5, Some(300)).await;
    push(&b, "emails", 100, Some(3_600_000)).await;
    let (r, took) = kube
        .wait_replicas(
            "worker",
            t0,
            polling * 2,
            "scale-up within two polling intervals",
            |r| r > 1,
        )
        .await;
    report(
        "scale-up 1 → more (45 tasks pushed → replicas patched)",
        took,
    );
    assert!(r <= 3, "one step adds at most 2: got {r}");
    let (_, took) = kube
        .wait_replicas("worker", t0, polling * 5, "scale-up to 5", |r| r == 5)
        .await;
    eprintln!(
        "replicas reached 5 {:.0} ms after the push",
        took.as_secs_f64() * 1000.0
    );
    let status = kube
        .wait_status("worker", polling * 2, |s| s.desired_replicas == Some(5))
        .await;
    assert_eq!(
        status.queue_depth,
        BTreeMap::from([("default".to_owned(), 40), ("emails".to_owned(), 5)]),
        "due scheduled tasks count, future ones do not"
    );
    assert_eq!(status.desired_replicas, Some(5));
    assert_eq!(status.current_replicas, Some(5));
    assert!(status.last_scale_time.is_some());
    kube.wait_condition(
        "worker",
        "Active",
        "True",
        "QueuesHaveTasks",
        CONDITION_WAIT,
    )
    .await;
    let up = kube
        .wait_event("worker", "ScaledUp", Duration::from_secs(5))
        .await;
    assert_eq!(
        up.reporting_controller.as_deref(),
        Some("taskq.dev/taskq-controller")
    );

    // Drain: nothing moves inside the window, then down to the minimum.
    drain(&b, &["default", "emails"]).await;
    let drained = Instant::now();
    kube.assert_replicas_hold(
        "worker",
        5,
        window - Duration::from_millis(700),
        "no scale-down inside the stabilization window",
    )
    .await;
    let (_, down) = kube
        .wait_replicas(
            "worker",
            drained,
            window + polling * 3,
            "back to the minimum",
            |r| r == 1,
        )
        .await;
    eprintln!(
        "scale-down 5 → 1 came {:.0} ms after the drain (stabilization window {} s)",
        down.as_secs_f64() * 1000.0,
        window.as_secs()
    );
    assert!(
        down >= window - Duration::from_millis(200),
        "scaled down before the window: {down:?}"
    );
    kube.wait_event("worker", "ScaledDown", Duration::from_secs(5))
        .await;

    // To zero: minReplicas 0, activation at 5; after the window the idle scaler goes to 0.
    let t = Instant::now();
    kube.patch_scaler("worker", json!({"minReplicas": 0, "activationTasks": 5}))
        .await;
    kube.wait_replicas("worker", t, window + polling * 4, "scale to zero", |r| {
        r == 0
    })
    .await;
    // Below the activation threshold nothing starts.
    push(&b, "default", 3, None).await;
    kube.assert_replicas_hold(
        "worker",
        0,
        polling * 3,
        "3 tasks are below activationTasks 5",
    )
    .await;
    let status = kube.status("worker").await.expect("status");
    assert_eq!(status.depth, Some(3));
    kube.wait_condition("worker", "Active", "False", "QueuesIdle", CONDITION_WAIT)
        .await;
    // At the threshold it starts: from zero within two polling intervals.
    let t = Instant::now();
    push(&b, "default", 2, None).await;
    let (_, took) = kube
        .wait_replicas(
            "worker",
            t,
            polling * 2,
            "scale from zero at activationTasks",
            |r| r >= 1,
        )
        .await;
    report("scale-up 0 → 1 (5th task pushed → replicas patched)", took);

    // A paused Deployment is left alone, whatever the depth.
    kube.annotate_paused("worker", true).await;
    kube.wait_condition(
        "worker",
        "Ready",
        "True",
        "AutoscalingPaused",
        CONDITION_WAIT,
    )
    .await;
    let paused_at = kube.replicas("worker").await;
    push(&b, "default", 60, None).await;
    kube.assert_replicas_hold("worker", paused_at, polling * 3, "paused")
        .await;
    let t = Instant::now();
    kube.annotate_paused("worker", false).await;
    let (r, took) = kube
        .wait_replicas("worker", t, polling * 2, "resumed after the pause", |r| {
            r > paused_at
        })
        .await;
    report(
        "scale-up after unpausing (annotation removed → replicas patched)",
        took,
    );
    assert!(r <= paused_at + 2);

    controller.stop().await;
    // The controller released its Lease on the way out.
    assert_eq!(kube.lease_holder().await, None, "lease released");
}

/// Invalid specs and missing Deployments show up as conditions and Warning Events; the
/// controller keeps serving the valid scalers and picks up a Deployment once it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_and_missing_deployments_are_reported_not_fatal() {
    let Some(kube) = Kube::new("invalid").await else {
        return;
    };
    let redis = RedisServer::start();
    let b = broker(&redis.url()).await;
    kube.create_deployment("worker", 1).await;
    let base = json!({
        "deployment": "worker", "queues": ["default"], "maxReplicas": 4,
        "targetTasksPerReplica": 5, "pollingInterval": 1, "scaleDownStabilization": 30,
    });
    let with = |extra: serde_json::Value| {
        let mut v = base.clone();
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    // The schema rejects out-of-range values at admission (OpenAPI bounds, CEL).
    let rejected = |r: Result<TaskQueueScaler, kube::Error>| match r {
        Err(kube::Error::Api(status)) if status.code == 422 => status.message,
        other => panic!("the API server accepted an invalid scaler: {other:?}"),
    };
    let msg = rejected(
        kube.try_create_scaler(
            "min-above-max",
            with(json!({"minReplicas": 5, "maxReplicas": 2})),
        )
        .await,
    );
    assert!(
        msg.contains("spec.minReplicas must not exceed spec.maxReplicas"),
        "{msg}"
    );
    let msg = rejected(
        kube.try_create_scaler(
            "negative",
            with(json!({"minReplicas": -1, "maxScaleUpStep": -2})),
        )
        .await,
    );
    assert!(
        msg.contains("spec.minReplicas") && msg.contains("spec.maxScaleUpStep"),
        "{msg}"
    );
    let msg = rejected(
        kube.try_create_scaler("bad-queue", with(json!({"queues": ["not a queue"]})))
            .await,
    );
    assert!(msg.contains("spec.queues[0]"), "{msg}");
    // Omitted fields get the schema's defaults, the chart's values.
    let defaulted = kube
        .try_create_scaler(
            "defaults",
            json!({"deployment": "worker", "queues": ["default"], "maxReplicas": 4}),
        )
        .await
        .expect("a minimal scaler");
    assert_eq!(defaulted.spec.target_tasks_per_replica, 50);
    assert_eq!(defaulted.spec.polling_interval, 5);
    kube.scalers()
        .delete("defaults", &Default::default())
        .await
        .expect("delete");

    // What only the controller checks (a queue listed twice) is reported, not fatal.
    kube.create_scaler("twice", with(json!({"queues": ["default", "default"]})))
        .await;
    kube.create_scaler("no-deployment", with(json!({"deployment": "later"})))
        .await;
    kube.create_scaler("good", base.clone()).await;
    let controller = InProcess::start(&kube, &redis.url(), "ctl-invalid").await;

    let t = Duration::from_secs(20);
    kube.wait_condition("twice", "Ready", "False", "InvalidSpec", t)
        .await;
    kube.wait_condition("twice", "Error", "True", "InvalidSpec", t)
        .await;
    kube.wait_condition("no-deployment", "Error", "True", "DeploymentNotFound", t)
        .await;
    kube.wait_condition("good", "Ready", "True", "ScalerReady", t)
        .await;
    let e = kube.wait_event("twice", "InvalidSpec", t).await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert!(
        e.note
            .as_deref()
            .unwrap_or_default()
            .contains("spec.queues lists `default` twice"),
        "{e:?}"
    );
    kube.wait_event("no-deployment", "DeploymentNotFound", t)
        .await;

    // The good scaler still works.
    push(&b, "default", 12, None).await;
    kube.wait_replicas_eq(
        "worker",
        3,
        Duration::from_secs(3),
        "the valid scaler scales",
    )
    .await;

    // The missing Deployment appears: the scaler takes it up (to its minimum, 1 → the
    // depth calls for 3).
    kube.create_deployment("later", 1).await;
    kube.wait_condition("no-deployment", "Ready", "True", "ScalerReady", t)
        .await;
    kube.wait_replicas_eq(
        "later",
        3,
        Duration::from_secs(5),
        "the late Deployment scales",
    )
    .await;

    // Fixing the spec clears the error.
    kube.patch_scaler("twice", json!({"queues": ["default"]}))
        .await;
    kube.wait_condition("twice", "Error", "False", "NoError", t)
        .await;
    controller.stop().await;
}

/// Redis going away is reported (RedisUnavailable) without changing the replicas, and
/// the scaler recovers when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_reported_and_recovered() {
    let Some(kube) = Kube::new("redis").await else {
        return;
    };
    let redis = RedisServer::start();
    let proxy = ChaosProxy::start(redis.addr());
    let b = broker(&redis.url()).await;
    kube.create_worker_and_scaler(
        json!({"deployment": "worker", "queues": ["default"], "maxReplicas": 4,
               "targetTasksPerReplica": 5, "pollingInterval": 1, "scaleDownStabilization": 60}),
    )
    .await;
    let via_proxy = format!("redis://{}", proxy.addr());
    let controller = InProcess::start(&kube, &via_proxy, "ctl-redis").await;
    kube.wait_condition("worker", "Ready", "True", "ScalerReady", CONDITION_WAIT)
        .await;
    push(&b, "default", 10, None).await;
    kube.wait_replicas_eq("worker", 2, Duration::from_secs(3), "scale-up")
        .await;

    proxy.cut();
    kube.wait_condition(
        "worker",
        "Error",
        "True",
        "RedisUnavailable",
        CONDITION_WAIT,
    )
    .await;
    kube.wait_condition(
        "worker",
        "Active",
        "Unknown",
        "DepthUnknown",
        CONDITION_WAIT,
    )
    .await;
    kube.wait_event("worker", "RedisUnavailable", Duration::from_secs(5))
        .await;
    push(&b, "default", 40, None).await;
    kube.assert_replicas_hold(
        "worker",
        2,
        Duration::from_secs(2),
        "no decision without a depth",
    )
    .await;
    assert!(
        controller
            .metrics
            .encode()
            .contains("reason=\"RedisUnavailable\""),
        "the error is counted"
    );

    proxy.restore();
    // Backoff is at most a few seconds after this short outage.
    kube.wait_condition("worker", "Error", "False", "NoError", CONDITION_WAIT)
        .await;
    kube.wait_replicas_eq(
        "worker",
        4,
        Duration::from_secs(5),
        "scale-up after recovery",
    )
    .await;
    controller.stop().await;
}

/// Leader election with two real `taskq-controller` processes: only the Lease holder
/// scales; SIGTERM makes it release the Lease and exit 0, and the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_only_the_leader_acts_and_the_standby_takes_over() {
    let Some(kube) = Kube::new("leader").await else {
        return;
    };
    let redis = RedisServer::start();
    let b = broker(&redis.url()).await;
    kube.create_worker_and_scaler(
        json!({"deployment": "worker", "queues": ["default"], "maxReplicas": 8,
               "targetTasksPerReplica": 10, "pollingInterval": 1, "scaleDownStabilization": 60,
               "maxScaleUpStep": 8}),
    )
    .await;
    let kubeconfig = kube.controller_kubeconfig().await;
    let (traces, otlp) = taskq_testkit::otlp::Receiver::start().await;
    let spawn = |id: &str, port: u16| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskq-controller"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig)
            .env("TASKQ_NAMESPACE", &kube.ns)
            .env("TASKQ_REDIS_URL", redis.url())
            .env("TASKQ_LISTEN", format!("127.0.0.1:{port}"))
            .env("TASKQ_IDENTITY", id)
            .env("TASKQ_LEASE_NAME", LEASE)
            .env("TASKQ_LEASE_DURATION_SECONDS", "3")
            .env("TASKQ_LEASE_RENEW_DEADLINE_MS", "2000")
            .env("TASKQ_LEASE_RETRY_PERIOD_MS", "300")
            .env("RUST_LOG", "info,kube=warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", format!("taskq-controller-{id}"));
        ChildGuard::spawn_logged(format!("taskq-controller {id}"), &mut cmd)
    };
    let ports = [free_port(), free_port()];
    let ids = ["ctl-a", "ctl-b"];
    let mut children = vec![spawn(ids[0], ports[0]), spawn(ids[1], ports[1])];
    let http = reqwest::Client::new();
    let get = |port: u16, path: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            let code = r.status().as_u16();
            Some((code, r.text().await.ok()?))
        }
    };
    for port in ports {
        let ready = wait_until(Duration::from_secs(30), POLL, || async {
            get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
        })
        .await;
        assert!(ready, "controller on {port} not ready; logs: {children:?}");
        let (code, _) = get(port, "/livez").await.expect("livez");
        assert_eq!(code, 200);
    }
    let leader = wait_for(Duration::from_secs(10), POLL, || kube.lease_holder())
        .await
        .expect("a leader");
    let li = ids
        .iter()
        .position(|id| *id == leader)
        .expect("the leader is one of ours");
    let fi = 1 - li;
    eprintln!("leader: {leader}, standby: {}", ids[fi]);

    // Pushes `n` tasks and waits until the workers are scaled to `replicas` within
    // `timeout`; reports how long that took.
    let scale_up = async |n: usize, replicas: i32, timeout: Duration, what: &str, how: &str| {
        let t = Instant::now();
        push(&b, "default", n, None).await;
        let (_, took) = kube
            .wait_replicas("worker", t, timeout, what, |r| r == replicas)
            .await;
        report(how, took);
    };
    scale_up(
        30,
        3,
        Duration::from_secs(3),
        "the leader scales",
        "scale-up by the leader process (30 tasks → replicas patched)",
    )
    .await;
    let leader_metrics = get(ports[li], "/metrics").await.expect("metrics").1;
    let standby_metrics = get(ports[fi], "/metrics").await.expect("metrics").1;
    assert!(
        leader_metrics.contains("taskq_controller_leader 1"),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics.contains("taskq_controller_scale_operations_total{namespace=")
            && leader_metrics.contains("taskq_controller_queue_depth{"),
        "{leader_metrics}"
    );
    assert!(
        standby_metrics.contains("taskq_controller_leader 0"),
        "{standby_metrics}"
    );
    assert!(
        standby_metrics.contains("taskq_controller_reconciles_total 0")
            && !standby_metrics.contains("scale_operations_total{"),
        "the standby did nothing: {standby_metrics}"
    );
    for e in kube.events().await {
        assert_eq!(
            e.reporting_instance.as_deref(),
            Some(leader.as_str()),
            "an event from the standby: {e:?}"
        );
    }

    // SIGTERM: graceful exit, Lease released, the standby takes over at once.
    let terminated = Instant::now();
    children[li].terminate();
    let exit = children[li]
        .wait_timeout(Duration::from_secs(15))
        .expect("the leader exits after SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    let new_leader = wait_for(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { kube.lease_holder().await.filter(|h| h == ids[fi]) },
    )
    .await;
    assert!(new_leader.is_some(), "the standby did not take the Lease");
    let failover = terminated.elapsed();
    eprintln!(
        "failover: SIGTERM to the leader → standby holds the Lease in {:.0} ms (lease duration 3 s)",
        failover.as_secs_f64() * 1000.0
    );
    assert!(
        failover < Duration::from_secs(3),
        "the Lease was released, not left to expire"
    );

    scale_up(
        40,
        7,
        Duration::from_secs(5),
        "the new leader scales",
        "scale-up by the new leader (40 more tasks → replicas patched)",
    )
    .await;
    let metrics = get(ports[fi], "/metrics").await.expect("metrics").1;
    assert!(metrics.contains("taskq_controller_leader 1"), "{metrics}");
    children[fi].terminate();
    let exit = children[fi]
        .wait_timeout(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(exit.success());
    assert_eq!(kube.lease_holder().await, None);

    // Each reconcile is a trace of its own, exported over OTLP by whichever process led
    // (flushed on exit).
    let spans = traces.spans();
    for id in ids {
        let reconciles: Vec<_> = spans
            .iter()
            .filter(|s| {
                s.service == format!("taskq-controller-{id}")
                    && s.name == "reconcile TaskQueueScaler"
            })
            .collect();
        assert!(
            !reconciles.is_empty(),
            "no reconcile span from {id}: {spans:?}"
        );
        for s in reconciles {
            assert!(s.parent.is_empty(), "a reconcile is a root span: {s:?}");
            assert_eq!(s.attrs.get("namespace"), Some(&kube.ns), "{s:?}");
            assert_eq!(s.attrs.get("scaler").map(String::as_str), Some("worker"));
            assert!(
                s.attrs.contains_key("desired") && s.attrs.contains_key("depth"),
                "{s:?}"
            );
        }
    }
}

/// The KEDA ScaledObject kind, from a minimal CRD (group, names, an open schema): what
/// the controller lists to find a second autoscaler.
async fn install_keda_crd(admin: &Client) -> kube::api::ApiResource {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "scaledobjects.keda.sh"},
        "spec": {
            "group": "keda.sh",
            "scope": "Namespaced",
            "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject", "listKind": "ScaledObjectList"},
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .expect("KEDA CRD");
    apply_crd(admin, &crd).await;
    let gvk = kube::api::GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    kube::api::ApiResource::from_gvk_with_plural(&gvk, "scaledobjects")
}

/// A Deployment that an HPA or a KEDA ScaledObject also targets is never scaled: the
/// scaler reports Conflict (condition and Warning Event) until the other one is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_autoscaler_on_the_deployment_is_a_conflict() {
    let Some(kube) = Kube::new("conflict").await else {
        return;
    };
    let keda = install_keda_crd(&kube.admin).await;
    let hpa = kube::api::ApiResource::erase::<
        k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
    >(&());
    let redis = RedisServer::start();
    let b = broker(&redis.url()).await;
    kube.create_deployment("with-hpa", 1).await;
    kube.create_deployment("with-keda", 1).await;
    kube.create_dynamic(
        &hpa,
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "cpu"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "with-hpa"},
                     "minReplicas": 1, "maxReplicas": 3}
        }),
    )
    .await;
    kube.create_dynamic(
        &keda,
        json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "redis-lists"},
            "spec": {"scaleTargetRef": {"name": "with-keda"}, "triggers": []}
        }),
    )
    .await;
    let spec = |deployment: &str| {
        json!({
            "deployment": deployment, "queues": ["default"], "minReplicas": 1, "maxReplicas": 4,
            "targetTasksPerReplica": 5, "pollingInterval": 1, "scaleDownStabilization": 30,
        })
    };
    kube.create_scaler("hpa", spec("with-hpa")).await;
    kube.create_scaler("keda", spec("with-keda")).await;
    push(&b, "default", 20, None).await;
    let controller = InProcess::start(&kube, &redis.url(), "ctl-conflict").await;

    let t = Duration::from_secs(20);
    for (scaler, other) in [
        ("hpa", "HorizontalPodAutoscaler/cpu"),
        ("keda", "ScaledObject/redis-lists"),
    ] {
        kube.wait_condition(scaler, "Ready", "False", "Conflict", t)
            .await;
        let e = kube.wait_event(scaler, "Conflict", t).await;
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        let note = e.note.unwrap_or_default();
        assert!(note.contains(other), "{scaler}: {note}");
    }
    kube.assert_replicas_hold(
        "with-hpa",
        1,
        Duration::from_secs(3),
        "an HPA also targets it",
    )
    .await;
    assert_eq!(
        kube.replicas("with-keda").await,
        1,
        "a ScaledObject also targets it"
    );

    // The HPA goes: the scaler takes the Deployment over (20 tasks / 5 → 4 replicas).
    kube.delete_dynamic(&hpa, "cpu").await;
    kube.wait_condition("hpa", "Ready", "True", "ScalerReady", t)
        .await;
    kube.wait_replicas_eq(
        "with-hpa",
        4,
        Duration::from_secs(5),
        "scales once the HPA is gone",
    )
    .await;
    assert_eq!(
        kube.replicas("with-keda").await,
        1,
        "the ScaledObject still targets it"
    );
    controller.stop().await;
}
