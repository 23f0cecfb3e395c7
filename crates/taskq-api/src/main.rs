//! `taskq-api`: the HTTP api binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = taskq_api::ApiArgs::parse();
    let _telemetry = taskq_telemetry::init("taskq-api", args.log_format);
    taskq_api::run(args).await
}
