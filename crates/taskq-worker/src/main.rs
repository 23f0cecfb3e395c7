//! `taskq-worker`: the worker binary with the built-in handlers.

use std::time::Duration;

use clap::Parser;
use taskq_worker::{HttpHandler, Registry, UrlAllowList, WorkerArgs, register_builtins};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    let _telemetry = taskq_telemetry::init("taskq-worker", args.process.log_format);
    let allow = UrlAllowList::parse(&args.http_allow).map_err(anyhow::Error::msg)?;
    // Registered even with an empty allow-list, so `http` tasks fail with a clear
    // message instead of "no handler".
    let http = HttpHandler::new(allow, Duration::from_millis(args.http_timeout_ms))?;
    let mut registry = Registry::new();
    register_builtins(&mut registry, http);
    taskq_worker::run(args, registry).await
}
