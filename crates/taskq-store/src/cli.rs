//! The MongoDB settings of taskq's binaries, as a clap argument group (feature `cli`).

use crate::{Result, Store};

/// `--mongodb-uri` / `TASKQ_MONGODB_URI` (never shown in `--help`) and
/// `--mongodb-database` / `TASKQ_MONGODB_DATABASE`, for `#[command(flatten)]` in a
/// binary's parser.
#[derive(Clone, Debug, clap::Args)]
pub struct MongoArgs {
    /// MongoDB connection string.
    #[arg(
        long,
        env = "TASKQ_MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017",
        hide_env_values = true
    )]
    pub mongodb_uri: String,
    /// MongoDB database holding the task records.
    #[arg(long, env = "TASKQ_MONGODB_DATABASE", default_value = "taskq")]
    pub mongodb_database: String,
}

impl MongoArgs {
    /// A store on the database these arguments name (see [`Store::connect`]).
    pub async fn connect(&self) -> Result<Store> {
        Store::connect(&self.mongodb_uri, &self.mongodb_database).await
    }
}
