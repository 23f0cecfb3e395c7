//! `crdgen`: prints the chart's TaskQueueScaler CRD template (the CRD as YAML behind
//! `crds.install` and `controller.enabled`):
//!
//! ```text
//! cargo run -p taskq-controller --bin crdgen > charts/taskq/templates/crds/taskqueuescalers.taskq.dev.yaml
//! ```

fn main() -> anyhow::Result<()> {
    print!("{}", taskq_controller::crd::crd_template()?);
    Ok(())
}
