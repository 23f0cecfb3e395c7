//! `taskq-controller`: the queue-depth autoscaler.

use clap::Parser;
use taskq_controller::Args;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = taskq_telemetry::init("taskq-controller", args.process.log_format);
    let shutdown = CancellationToken::new();
    taskq_telemetry::cancel_on_signals(shutdown.clone());
    taskq_controller::serve(args, shutdown).await
}
