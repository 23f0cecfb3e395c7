//! The `TaskQueueScaler` custom resource (`taskq.dev/v1alpha1`, namespaced, short name
//! `tqs`): which Deployment to scale, from which queues, within which bounds, and the
//! status the controller reports back.
//!
//! The chart's CRD template (`charts/taskq/templates/crds/`) is generated from these types
//! by the `crdgen` binary ([`crd_template`]); a test fails when the two differ. The
//! schema rejects at admission what [`TaskQueueScalerSpec::validate`] rejects by bounds
//! (OpenAPI minimums and maximums, and a CEL rule for `minReplicas <= maxReplicas`); the
//! controller still validates every spec (duplicate queues, objects stored before the
//! schema had these rules) and reports a bad one in the conditions and Events. The serde
//! defaults are the schema's defaults and equal the chart's `controller.scaler` values
//! (checked by scripts/chart/test.sh).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use taskq_core::QueueName;

use crate::scaling::Policy;

/// A Deployment carrying this annotation with the value `"true"` is left alone: the
/// controller still reads the depth and reports it, but never changes the replicas.
pub const PAUSED_ANNOTATION: &str = "taskq.dev/autoscaling-paused";

/// Longest polling interval and stabilization window accepted, in seconds (one day).
const MAX_SECONDS: i64 = 86_400;

/// Which Deployment to scale, from which queues, within which bounds and at which pace.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "taskq.dev",
    version = "v1alpha1",
    kind = "TaskQueueScaler",
    plural = "taskqueuescalers",
    singular = "taskqueuescaler",
    shortname = "tqs",
    category = "taskq",
    namespaced,
    status = "TaskQueueScalerStatus",
    derive = "PartialEq",
    doc = "Scales a Deployment from the depth of taskq queues.",
    label("app.kubernetes.io/part-of", "taskq"),
    annotation("helm.sh/resource-policy", "keep"),
    printcolumn = r#"{"name": "Deployment", "type": "string", "jsonPath": ".spec.deployment"}"#,
    printcolumn = r#"{"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas"}"#,
    printcolumn = r#"{"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas"}"#,
    printcolumn = r#"{"name": "Depth", "type": "integer", "jsonPath": ".status.depth"}"#,
    printcolumn = r#"{"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"}"#,
    printcolumn = r#"{"name": "Current", "type": "integer", "jsonPath": ".status.currentReplicas"}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minReplicas <= self.maxReplicas",
    "message": "spec.minReplicas must not exceed spec.maxReplicas",
    "fieldPath": ".minReplicas"
}]))]
pub struct TaskQueueScalerSpec {
    /// Name of the Deployment to scale, in the scaler's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub deployment: String,
    /// Queues whose pending tasks (queued, due scheduled, retrying, running) count.
    #[schemars(
        length(min = 1, max = 100),
        inner(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$"))
    )]
    pub queues: Vec<String>,
    /// Fewest replicas; 0 allows scaling to zero.
    #[serde(default = "defaults::min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Pending tasks one replica should carry: desired = ceil(depth / this).
    #[serde(default = "defaults::target_tasks_per_replica")]
    #[schemars(range(min = 1))]
    pub target_tasks_per_replica: i64,
    /// Pending tasks needed to scale up from zero (with minReplicas 0); below it the
    /// scaler is inactive and goes to zero once the stabilization window has passed.
    #[serde(default = "defaults::activation_tasks")]
    #[schemars(range(min = 0))]
    pub activation_tasks: i64,
    /// Seconds between depth readings.
    #[serde(default = "defaults::polling_interval")]
    #[schemars(range(min = 1, max = MAX_SECONDS))]
    pub polling_interval: i64,
    /// Seconds the desired count must stay lower before replicas are removed.
    #[serde(default = "defaults::scale_down_stabilization")]
    #[schemars(range(min = 0, max = MAX_SECONDS))]
    pub scale_down_stabilization: i64,
    /// Most replicas added in one step; one step per polling interval.
    #[serde(default = "defaults::max_scale_up_step")]
    #[schemars(range(min = 1))]
    pub max_scale_up_step: i32,
}

mod defaults {
    pub fn min_replicas() -> i32 {
        1
    }
    pub fn target_tasks_per_replica() -> i64 {
        50
    }
    pub fn activation_tasks() -> i64 {
        1
    }
    pub fn polling_interval() -> i64 {
        5
    }
    pub fn scale_down_stabilization() -> i64 {
        300
    }
    pub fn max_scale_up_step() -> i32 {
        4
    }
}

/// What the controller observed and did.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskQueueScalerStatus {
    /// Pending tasks per queue at the last successful reading.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queue_depth: BTreeMap<String, i64>,
    /// Pending tasks of all queues at the last successful reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    /// Replicas the scaler wants now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Replicas the Deployment asks for (its spec.replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// When the controller last changed the Deployment's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the scaler works), Active (the queues hold enough tasks to need replicas)
    /// and Error (the last reconcile failed; the reason says why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A spec that passed [`TaskQueueScalerSpec::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub deployment: String,
    pub queues: Vec<QueueName>,
    pub policy: Policy,
    pub polling_interval: Duration,
}

impl TaskQueueScalerSpec {
    /// Checks every field; on failure returns one message per problem.
    pub fn validate(&self) -> Result<Settings, Vec<String>> {
        let at_least = |problems: &mut Vec<String>, field: &str, value: i64, min: i64| {
            if value < min {
                problems.push(format!("spec.{field} must be {min} or more (got {value})"));
            }
        };
        let mut problems = Vec::new();
        if self.deployment.trim().is_empty() {
            problems.push("spec.deployment must name a Deployment".to_owned());
        }
        if self.queues.is_empty() {
            problems.push("spec.queues must list at least one queue".to_owned());
        }
        let mut queues = Vec::new();
        for q in &self.queues {
            match q.parse::<QueueName>() {
                Ok(name) if !queues.contains(&name) => queues.push(name),
                Ok(_) => problems.push(format!("spec.queues lists `{q}` twice")),
                Err(e) => problems.push(format!("spec.queues: {e}")),
            }
        }
        at_least(
            &mut problems,
            "minReplicas",
            i64::from(self.min_replicas),
            0,
        );
        at_least(
            &mut problems,
            "maxReplicas",
            i64::from(self.max_replicas),
            1,
        );
        if self.min_replicas > self.max_replicas {
            problems.push(format!(
                "spec.minReplicas ({}) must not exceed spec.maxReplicas ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        at_least(
            &mut problems,
            "targetTasksPerReplica",
            self.target_tasks_per_replica,
            1,
        );
        at_least(&mut problems, "activationTasks", self.activation_tasks, 0);
        if !(1..=MAX_SECONDS).contains(&self.polling_interval) {
            problems.push(format!(
                "spec.pollingInterval must be between 1 and {MAX_SECONDS} seconds (got {})",
                self.polling_interval
            ));
        }
        if !(0..=MAX_SECONDS).contains(&self.scale_down_stabilization) {
            problems.push(format!(
                "spec.scaleDownStabilization must be between 0 and {MAX_SECONDS} seconds (got {})",
                self.scale_down_stabilization
            ));
        }
        if self.max_scale_up_step < 1 {
            problems.push(format!(
                "spec.maxScaleUpStep must be 1 or more (got {})",
                self.max_scale_up_step
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // Every value below was checked above to be in range.
        Ok(Settings {
            deployment: self.deployment.clone(),
            queues,
            policy: Policy {
                min: self.min_replicas,
                max: self.max_replicas,
                target: self.target_tasks_per_replica.unsigned_abs(),
                activation: self.activation_tasks.unsigned_abs(),
                max_step: self.max_scale_up_step,
                stabilization: Duration::from_secs(self.scale_down_stabilization.unsigned_abs()),
            },
            polling_interval: Duration::from_secs(self.polling_interval.unsigned_abs()),
        })
    }
}

/// Where `crdgen` writes [`crd_template`], relative to the repository root.
pub const CRD_TEMPLATE_PATH: &str = "charts/taskq/templates/crds/taskqueuescalers.taskq.dev.yaml";

/// The lines of [`crd_template`] around the CRD itself.
const TEMPLATE_HEAD: &str = "{{- /*\n\
    TaskQueueScaler: scales a Deployment from the depth of taskq queues.\n\
    Generated from crates/taskq-controller/src/crd.rs by\n\
    \x20 cargo run -p taskq-controller --bin crdgen > charts/taskq/templates/crds/taskqueuescalers.taskq.dev.yaml\n\
    Do not edit; a test fails when this file and the Rust types differ. A template (not\n\
    crds/), so `helm upgrade` applies schema changes; kept on uninstall\n\
    (helm.sh/resource-policy: keep) so that deleting a release never deletes every\n\
    TaskQueueScaler of the cluster.\n\
    */}}\n\
    {{- if and .Values.crds.install .Values.controller.enabled }}\n";
const TEMPLATE_TAIL: &str = "{{- end }}\n";

/// The CRD as YAML.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&TaskQueueScaler::crd())
}

/// The chart's CRD template: [`crd_yaml`] behind `crds.install` and `controller.enabled`,
/// what `crdgen` writes to [`CRD_TEMPLATE_PATH`].
pub fn crd_template() -> Result<String, serde_saphyr::ser::Error> {
    Ok(format!("{TEMPLATE_HEAD}{}{TEMPLATE_TAIL}", crd_yaml()?))
}

/// The CRD inside a [`crd_template`] text (`None` when the wrapping lines are missing).
pub fn crd_of_template(text: &str) -> Option<&str> {
    text.strip_prefix(TEMPLATE_HEAD)?
        .strip_suffix(TEMPLATE_TAIL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskQueueScalerSpec {
        serde_json::from_value(serde_json::json!({
            "deployment": "worker",
            "queues": ["default", "emails"],
            "maxReplicas": 5
        }))
        .expect("spec")
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let s = spec();
        assert_eq!(s.min_replicas, 1);
        assert_eq!(s.target_tasks_per_replica, 50);
        assert_eq!(s.activation_tasks, 1);
        assert_eq!(s.polling_interval, 5);
        assert_eq!(s.scale_down_stabilization, 300);
        assert_eq!(s.max_scale_up_step, 4);
        let settings = s.validate().expect("valid");
        assert_eq!(settings.queues.len(), 2);
        assert_eq!(settings.policy.stabilization, Duration::from_secs(300));
    }

    #[test]
    fn invalid_specs_name_every_problem() {
        let cases: Vec<(TaskQueueScalerSpec, &[&str])> = vec![
            (
                TaskQueueScalerSpec {
                    min_replicas: 6,
                    ..spec()
                },
                &["spec.minReplicas (6) must not exceed spec.maxReplicas (5)"],
            ),
            (
                TaskQueueScalerSpec {
                    min_replicas: -1,
                    max_replicas: 0,
                    ..spec()
                },
                &[
                    "spec.minReplicas must be 0 or more",
                    "spec.maxReplicas must be 1 or more",
                ],
            ),
            (
                TaskQueueScalerSpec {
                    target_tasks_per_replica: 0,
                    activation_tasks: -3,
                    polling_interval: 0,
                    scale_down_stabilization: -1,
                    max_scale_up_step: 0,
                    ..spec()
                },
                &[
                    "targetTasksPerReplica",
                    "activationTasks",
                    "pollingInterval",
                    "scaleDownStabilization",
                    "maxScaleUpStep",
                ],
            ),
            (
                TaskQueueScalerSpec {
                    deployment: " ".into(),
                    queues: vec![],
                    ..spec()
                },
                &["spec.deployment", "spec.queues must list"],
            ),
            (
                TaskQueueScalerSpec {
                    queues: vec!["ok".into(), "not a queue".into(), "ok".into()],
                    ..spec()
                },
                &["invalid queue name `not a queue`", "lists `ok` twice"],
            ),
        ];
        for (i, (s, wanted)) in cases.into_iter().enumerate() {
            let problems = match s.validate() {
                Ok(_) => panic!("case {i} passed validation"),
                Err(p) => p,
            };
            assert_eq!(problems.len(), wanted.len(), "case {i}: {problems:?}");
            for w in wanted {
                assert!(
                    problems.iter().any(|p| p.contains(w)),
                    "case {i}: no problem mentions {w:?}: {problems:?}"
                );
            }
        }
    }

    /// The chart ships exactly what `crdgen` generates from these types.
    #[test]
    fn chart_crd_matches_the_rust_types() {
        let path = format!("{}/../../{CRD_TEMPLATE_PATH}", env!("CARGO_MANIFEST_DIR"));
        let shipped = std::fs::read_to_string(&path).expect("read the chart's CRD template");
        let generated = crd_template().expect("serialize the CRD");
        assert!(
            shipped == generated,
            "{path} differs from the TaskQueueScaler types; regenerate it with\n  \
             cargo run -p taskq-controller --bin crdgen > {CRD_TEMPLATE_PATH}"
        );
        // And it parses back into the same object.
        let body = crd_of_template(&shipped).expect("the template wraps the CRD");
        let parsed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_saphyr::from_str(body).expect("the chart's CRD parses");
        assert_eq!(parsed, TaskQueueScaler::crd());
    }

    /// The schema carries the bounds `validate` checks, the CEL rule, and the defaults.
    #[test]
    fn crd_schema_validates_bounds_and_defaults() {
        let crd = TaskQueueScaler::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema json");
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        let p = &spec["properties"];
        assert_eq!(p["minReplicas"]["minimum"], 0.0, "{p}");
        assert_eq!(p["maxReplicas"]["minimum"], 1.0);
        assert_eq!(p["targetTasksPerReplica"]["minimum"], 1.0);
        assert_eq!(p["pollingInterval"]["maximum"], 86_400.0);
        assert_eq!(p["maxScaleUpStep"]["minimum"], 1.0);
        assert_eq!(p["queues"]["minItems"], 1);
        assert_eq!(p["targetTasksPerReplica"]["default"], 50);
        assert_eq!(p["pollingInterval"]["default"], 5);
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            "self.minReplicas <= self.maxReplicas"
        );
        assert_eq!(
            crd.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("helm.sh/resource-policy"))
                .map(String::as_str),
            Some("keep")
        );
    }

    #[test]
    fn crd_has_the_names_columns_and_status_subresource() {
        let crd = TaskQueueScaler::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("taskqueuescalers.taskq.dev")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["tqs".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        let columns: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Deployment",
                "Min",
                "Max",
                "Depth",
                "Desired",
                "Current",
                "Ready",
                "Age"
            ]
        );
    }
}
