//! `taskq`, the command line of taskq's HTTP api.
//!
//! [`Cli`] is the whole command line (clap); [`run`] executes one command through a
//! [`Client`] and returns a [`Report`]: what to print on stdout and, when the command
//! failed after producing output (a batch with rejected items), the error to print on
//! stderr. Nothing here exits, and nothing prints except, on a terminal only, the
//! progress bar of `submit --file` and the confirmation prompt of `purge-dead` (both on
//! stderr), so tests can check the output as a string; the binary prints the report, or
//! `error: <Error>` on one line, and picks the exit code (2 is left to clap's usage
//! errors).

mod client;
mod commands;
mod error;
mod flow;
pub mod jsonl;
pub mod render;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Url;
use serde_json::Value;

pub use client::{Answer, Client};
pub use error::Error;
pub use flow::FlowCommand;

/// Environment variable holding the api's bearer token. Deliberately not a flag: a
/// token on the command line would show in process lists and shell history.
pub const TOKEN_ENV: &str = "TASKQ_TOKEN";

/// Command line of `taskq`.
#[derive(Debug, Parser)]
#[command(
    name = "taskq",
    version,
    about = "Submit, inspect and manage taskq tasks and queues through the HTTP api",
    after_help = "Environment:\n  TASKQ_TOKEN  bearer token sent as `Authorization: Bearer …` (never printed)"
)]
pub struct Cli {
    /// Base URL of the taskq api.
    #[arg(
        long,
        env = "TASKQ_API",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_api_url,
        global = true,
        help_heading = "Global options"
    )]
    pub api: Url,
    /// `table` for people, `json` (the api's JSON, pretty-printed) for scripts.
    #[arg(
        long,
        short = 'o',
        env = "TASKQ_OUTPUT",
        value_enum,
        default_value_t = Output::Table,
        global = true,
        help_heading = "Global options"
    )]
    pub output: Output,
    /// Give up on one request after this many milliseconds.
    #[arg(
        long,
        env = "TASKQ_CLI_REQUEST_TIMEOUT_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true,
        help_heading = "Global options"
    )]
    pub request_timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns and fields, for people.
    Table,
    /// The api's JSON, pretty-printed, for scripts.
    Json,
}

/// One `taskq` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit one task, or every task of a JSON-lines file with --file.
    Submit(SubmitArgs),
    /// Show one task with its history.
    Get {
        /// Task id.
        #[arg(value_parser = path_segment)]
        id: String,
        /// Wait up to this long (e.g. 30s, 1500ms; at most 60s) for the task to finish;
        /// then exit 1 unless it succeeded.
        #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
        wait: Option<Duration>,
    },
    /// List tasks, newest first.
    List(ListArgs),
    /// Run a dead task again from its first attempt.
    Retry {
        /// Task id.
        #[arg(value_parser = path_segment)]
        id: String,
    },
    /// Cancel a task; a running one is signalled through its worker.
    Cancel {
        /// Task id.
        #[arg(value_parser = path_segment)]
        id: String,
    },
    /// Delete a finished task's record (succeeded, dead or cancelled).
    Delete {
        /// Task id.
        #[arg(value_parser = path_segment)]
        id: String,
    },
    /// Show every queue with its counts, or one queue.
    Queues {
        /// Show only this queue.
        #[arg(value_parser = path_segment)]
        name: Option<String>,
    },
    /// Set a queue's dispatch limits; a limit not given is cleared.
    Limits(LimitsArgs),
    /// Stop workers from starting tasks of a queue.
    Pause {
        #[arg(value_parser = path_segment)]
        queue: String,
    },
    /// Let workers start tasks of a paused queue again.
    Resume {
        #[arg(value_parser = path_segment)]
        queue: String,
    },
    /// Run every dead task of a queue again.
    RetryDead {
        #[arg(value_parser = path_segment)]
        queue: String,
    },
    /// Delete every dead task of a queue for good.
    PurgeDead {
        #[arg(value_parser = path_segment)]
        queue: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Put tasks that MongoDB holds as pending but Redis lost back into Redis.
    Recover,
    /// Flows: tasks that depend on each other, submitted and handled as one.
    #[command(subcommand)]
    Flow(FlowCommand),
}

/// Task priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// `taskq submit`.
///
/// The per-task options have no environment variables on purpose: clap counts a value
/// from the environment as given, so an exported `TASKQ_…QUEUE` would silently apply to
/// every submit and clash with `--file`. Only the batch size, a setting rather than
/// task data, has one.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Task type: picks the handler.
    #[arg(value_name = "TYPE", required_unless_present = "file")]
    pub kind: Option<String>,
    /// Payload as inline JSON.
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    pub payload: Option<Value>,
    /// Payload read from a JSON file (`-` for stdin).
    #[arg(long, value_name = "FILE", conflicts_with = "payload")]
    pub payload_file: Option<PathBuf>,
    /// Queue name (the api's default: `default`).
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority within the queue (the api's default: normal).
    #[arg(long, value_enum)]
    pub priority: Option<Priority>,
    /// Run no earlier than this many milliseconds from now.
    #[arg(long, value_name = "MS", conflicts_with = "run_at")]
    pub delay_ms: Option<u64>,
    /// Run no earlier than this RFC 3339 time, e.g. 2030-01-01T09:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub run_at: Option<String>,
    /// Attempts before the task is dead.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Time one attempt may take, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Submitting again with the same key returns the first task instead of a new one.
    #[arg(long, value_name = "KEY", value_parser = parse_header_value)]
    pub idempotency_key: Option<String>,
    /// The task's key (a customer, an entity id): tasks of one key run in submit order
    /// within a priority, at most the queue's `max_running_per_key` at once.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Submit every task of a JSON-lines file (`-` for stdin): one POST body object a
    /// line, blank lines skipped.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "kind", "payload", "payload_file", "queue", "priority", "delay_ms",
            "run_at", "max_attempts", "timeout_ms", "idempotency_key", "wait", "key",
        ]
    )]
    pub file: Option<PathBuf>,
    /// Wait up to this long (e.g. 30s, 1500ms; at most 60s) for the task to finish and
    /// show it with its result; exit 1 unless it succeeded.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Duration>,
    /// Tasks per batch request with --file.
    #[arg(
        long,
        value_name = "N",
        env = "TASKQ_BATCH_SIZE",
        default_value_t = 500,
        value_parser = clap::value_parser!(u16).range(1..=1000)
    )]
    pub batch_size: u16,
}

/// `taskq limits`: the body of `PUT /v1/queues/{name}/limits` (every limit not given is
/// cleared, as the endpoint does).
#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[arg(value_parser = path_segment)]
    pub queue: String,
    /// Dispatches (task starts) per second across all workers.
    #[arg(long, value_name = "RATE")]
    pub max_dispatches_per_second: Option<f64>,
    /// Starts allowed at once after a quiet period (needs the rate).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Tasks of the queue running at once.
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<u32>,
    /// Tasks of one key running at once (1: one at a time, in submit order).
    #[arg(long, value_name = "N")]
    pub max_running_per_key: Option<u32>,
    /// Dispatches per second of each key.
    #[arg(long, value_name = "RATE")]
    pub max_dispatches_per_second_per_key: Option<f64>,
    /// Bucket size per key (needs the rate per key).
    #[arg(long, value_name = "N")]
    pub burst_per_key: Option<u32>,
}

/// `taskq list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks in this status: waiting, scheduled, queued, running, retrying,
    /// succeeded, dead or cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// Only tasks of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Only tasks of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only tasks of this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Tasks per page (the api's default: 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: Option<u16>,
    /// Start after this cursor (`next_cursor` of the previous page).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow the cursors to the last page.
    #[arg(long)]
    pub all: bool,
}

/// What a command produced.
#[derive(Debug)]
pub struct Report {
    /// Printed on stdout as is.
    pub stdout: String,
    /// When set the command failed although it had output: printed on stderr, exit 1.
    pub failure: Option<Error>,
}

impl Report {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            failure: None,
        }
    }
}

/// Runs one command against the api, with `token` (from [`TOKEN_ENV`]) if any.
pub async fn run(cli: Cli, token: Option<&str>) -> Result<Report, Error> {
    // A waiting request may take its wait on top of the usual time.
    let wait = match &cli.command {
        Command::Get { wait, .. } => *wait,
        Command::Submit(a) => a.wait,
        _ => None,
    };
    let client = Client::new(
        cli.api.clone(),
        token,
        Duration::from_millis(cli.request_timeout_ms) + wait.unwrap_or_default(),
    )?;
    let ctx = commands::Ctx {
        client,
        output: cli.output,
    };
    match cli.command {
        Command::Submit(args) => match &args.file {
            Some(file) => ctx.submit_file(file, usize::from(args.batch_size)).await,
            None => ctx.submit(&args).await,
        },
        Command::Get { id, wait } => ctx.get(&id, wait).await,
        Command::List(args) => ctx.list(&args).await.map(Report::ok),
        Command::Retry { id } => ctx.retry(&id).await.map(Report::ok),
        Command::Cancel { id } => ctx.cancel(&id).await.map(Report::ok),
        Command::Delete { id } => ctx.delete(&id).await.map(Report::ok),
        Command::Queues { name } => ctx.queues(name.as_deref()).await.map(Report::ok),
        Command::Limits(args) => ctx.limits(&args).await.map(Report::ok),
        Command::Pause { queue } => ctx.pause(&queue, true).await.map(Report::ok),
        Command::Resume { queue } => ctx.pause(&queue, false).await.map(Report::ok),
        Command::RetryDead { queue } => ctx.retry_dead(&queue).await.map(Report::ok),
        Command::PurgeDead { queue, yes } => ctx.purge_dead(&queue, yes).await.map(Report::ok),
        Command::Recover => ctx.recover().await.map(Report::ok),
        Command::Flow(cmd) => ctx.flow(&cmd).await.map(Report::ok),
    }
}

fn parse_api_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL ({e}), e.g. http://127.0.0.1:8080"))?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
        return Err("the api URL must start with http:// or https://".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the api URL must not have a query or fragment".into());
    }
    Ok(url)
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    taskq_core::wait::parse_wait(s).map_err(|e| e.replace("`wait`", "the wait"))
}

fn parse_rfc3339(s: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_rfc3339())
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2030-01-01T09:00:00Z"))
}

fn parse_header_value(s: &str) -> Result<String, String> {
    match reqwest::header::HeaderValue::from_str(s) {
        Ok(_) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err("must be non-empty visible ASCII".into()),
    }
}

/// An id or queue name, which becomes one URL path segment. `.` and `..` are refused
/// because URL normalisation would drop them and address another route.
fn path_segment(s: &str) -> Result<String, String> {
    match s {
        "" => Err("must not be empty".into()),
        "." | ".." => Err(format!("`{s}` is not a valid name")),
        _ => Ok(s.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("taskq").chain(args.iter().copied()))
    }

    #[test]
    fn submit_options_are_checked_before_anything_is_sent() {
        use clap::error::ErrorKind;
        // Arguments separated by single spaces.
        let cases: &[(&str, Result<(), ErrorKind>)] = &[
            ("submit noop", Ok(())),
            ("submit --file x.jsonl", Ok(())),
            ("submit", Err(ErrorKind::MissingRequiredArgument)),
            (
                "submit noop --payload {nope",
                Err(ErrorKind::ValueValidation),
            ),
            (
                "submit noop --delay-ms 1 --run-at 2030-01-01T00:00:00Z",
                Err(ErrorKind::ArgumentConflict),
            ),
            (
                "submit noop --run-at tomorrow",
                Err(ErrorKind::ValueValidation),
            ),
            (
                "submit noop --priority urgent",
                Err(ErrorKind::InvalidValue),
            ),
            ("submit noop --file x", Err(ErrorKind::ArgumentConflict)),
            (
                "submit --file x --batch-size 1001",
                Err(ErrorKind::ValueValidation),
            ),
            (
                "submit noop --idempotency-key a\u{7}b",
                Err(ErrorKind::ValueValidation),
            ),
            ("get ..", Err(ErrorKind::ValueValidation)),
            ("get x --wait 1500ms", Ok(())),
            ("get x --wait 61s", Err(ErrorKind::ValueValidation)),
            (
                "submit --file x --wait 5s",
                Err(ErrorKind::ArgumentConflict),
            ),
            ("--api ftp://x recover", Err(ErrorKind::ValueValidation)),
        ];
        for (args, expected) in cases {
            let args: Vec<&str> = args.split(' ').collect();
            let kind = parse(&args).map(|_| ()).map_err(|e| e.kind());
            assert_eq!(&kind, expected, "{args:?}");
        }
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["get", "x", "-o", "json", "--api", "http://h:1/p"]).expect("parse");
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.api.as_str(), "http://h:1/p");
        let cli = parse(&["submit", "t", "--run-at", "2030-01-01T09:00:00+01:00"]).expect("parse");
        match cli.command {
            Command::Submit(a) => {
                assert_eq!(a.run_at.as_deref(), Some("2030-01-01T09:00:00+01:00"))
            }
            other => panic!("{other:?}"),
        }
    }
}
