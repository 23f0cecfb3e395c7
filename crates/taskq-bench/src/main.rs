//! `taskq-bench`: benchmarks taskq end to end against real Redis and MongoDB servers.
//!
//! It starts the real `taskq-api` and `taskq-worker` binaries as child processes, drives
//! them over HTTP and watches Redis and MongoDB to time each phase (see [`bench`]), and
//! measures the raw Redis and MongoDB ceilings with the same clients, so every figure is
//! also shown as a fraction of what the backing service allows on the same machine.

mod args;
mod bench;
mod cpu;
mod procs;
mod report;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = args::Args::parse().config()?;
    let json = cfg.json;
    let names = bench::RunNames::new()?;
    let uri = cfg.mongodb_uri.clone();
    let report = tokio::select! {
        r = bench::run(cfg, &names) => r?,
        _ = tokio::signal::ctrl_c() => {
            // Dropping the run killed the child processes (SIGKILL); drop its databases.
            let dropped = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                names.drop_databases(&uri),
            )
            .await;
            match dropped {
                Ok(Ok(())) => anyhow::bail!("interrupted; child processes killed, databases dropped"),
                _ => anyhow::bail!(
                    "interrupted; child processes killed; drop database {} by hand",
                    names.database
                ),
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
