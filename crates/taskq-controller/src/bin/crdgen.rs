//! `crdgen`: prints the TaskQueueScaler CRD as YAML, for
//! `charts/taskq/crds/taskqueuescalers.taskq.dev.yaml`:
//!
//! ```text
//! cargo run -p taskq-controller --bin crdgen > charts/taskq/crds/taskqueuescalers.taskq.dev.yaml
//! ```

fn main() -> anyhow::Result<()> {
    print!("{}", taskq_controller::crd::crd_yaml()?);
    Ok(())
}
