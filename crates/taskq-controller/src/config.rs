//! Command line and environment of `taskq-controller`: every flag is also a `TASKQ_…`
//! variable.

use std::time::Duration;

use clap::Parser;

use crate::leader::LeaseConfig;

/// Command line and environment of `taskq-controller`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskq-controller",
    version,
    about = "Scales Deployments from the depth of taskq queues (TaskQueueScaler resources)"
)]
pub struct Args {
    #[command(flatten)]
    pub process: taskq_telemetry::ProcessArgs,
    #[command(flatten)]
    pub redis: taskq_redis::RedisArgs,
    /// Namespace whose TaskQueueScalers and Deployments are watched, and where the Lease
    /// lives; default: the namespace of the kubeconfig context or of the pod.
    #[arg(long, env = "TASKQ_NAMESPACE")]
    pub namespace: Option<String>,
    /// Elect a leader through a Lease (turn off only when a single replica runs).
    #[arg(long, env = "TASKQ_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "TASKQ_LEASE_NAME", default_value = "taskq-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease; default: the host name and a random suffix.
    #[arg(long, env = "TASKQ_IDENTITY")]
    pub identity: Option<String>,
    /// Seconds after the leader's last renewal before another replica may take over.
    #[arg(long, env = "TASKQ_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How long the leader keeps acting without a successful renewal (below the lease
    /// duration).
    #[arg(long, env = "TASKQ_LEASE_RENEW_DEADLINE_MS", default_value_t = 10_000)]
    pub lease_renew_deadline_ms: u64,
    /// Pause between attempts to acquire or renew the Lease.
    #[arg(long, env = "TASKQ_LEASE_RETRY_PERIOD_MS", default_value_t = 2_000)]
    pub lease_retry_period_ms: u64,
}

impl Args {
    /// The Lease settings for `namespace`, validated.
    pub fn lease(&self, namespace: &str) -> Result<LeaseConfig, String> {
        let identity = match &self.identity {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => default_identity(),
        };
        let config = LeaseConfig {
            name: self.lease_name.clone(),
            namespace: namespace.to_owned(),
            identity,
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_deadline: Duration::from_millis(self.lease_renew_deadline_ms),
            retry_period: Duration::from_millis(self.lease_retry_period_ms),
        };
        config
            .validate()
            .map_err(|e| format!("leader election: {e} (see --help for TASKQ_LEASE_*)"))?;
        Ok(config)
    }
}

/// `<hostname>-<8 hex digits>`: unique even for two processes on one host.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "taskq-controller".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_nest() {
        let args = Args::parse_from(["taskq-controller"]);
        assert!(args.leader_election);
        let lease = args.lease("ns").expect("default lease settings are valid");
        assert_eq!(lease.lease_duration, Duration::from_secs(15));
        assert!(!lease.identity.is_empty());
    }

    #[test]
    fn inconsistent_lease_timings_are_rejected() {
        let args = Args::parse_from([
            "taskq-controller",
            "--lease-duration-seconds",
            "5",
            "--lease-renew-deadline-ms",
            "6000",
        ]);
        let err = args
            .lease("ns")
            .expect_err("renew deadline above the duration");
        assert!(err.contains("renew deadline"), "{err}");
        let args = Args::parse_from(["taskq-controller", "--leader-election", "false"]);
        assert!(!args.leader_election);
    }

    /// scripts/chart/env/taskq-controller.txt lists exactly the variables this parser
    /// reads: the chart's template tests allow no other TASKQ_* variable on the controller.
    /// Regenerate with `TASKQ_WRITE_ENV_LISTS=1 cargo test -p taskq-controller env_list`.
    #[test]
    fn chart_env_list_is_what_the_parser_reads() {
        use clap::CommandFactory;
        taskq_testkit::assert_env_list("taskq-controller", &Args::command());
    }
}
