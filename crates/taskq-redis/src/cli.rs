//! The Redis settings of taskq's binaries, as a clap argument group (feature `cli`).

use crate::{Broker, RedisConfig, Result};

/// `--redis-url` / `TASKQ_REDIS_URL` and `--redis-cluster` / `TASKQ_REDIS_CLUSTER`, for
/// `#[command(flatten)]` in a binary's parser.
#[derive(Clone, Debug, clap::Args)]
pub struct RedisArgs {
    /// Redis URL; a comma-separated list of seed nodes for a cluster.
    #[arg(
        long,
        env = "TASKQ_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Talk to a Redis Cluster (implied by several URLs).
    #[arg(long, env = "TASKQ_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
}

impl RedisArgs {
    /// The connection settings these arguments name.
    pub fn config(&self) -> RedisConfig {
        RedisConfig::from_urls(&self.redis_url, self.redis_cluster)
    }

    /// A broker connected as these arguments say (see [`Broker::connect`]).
    pub async fn connect(&self) -> Result<Broker> {
        Broker::connect(&self.config()).await
    }
}
