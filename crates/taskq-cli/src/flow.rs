//! `taskq flow …`: submit a flow from a JSON file, show it, cancel it, retry it.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::commands::{Ctx, read_input};
use crate::render::{clip, columns, fields, text, texts};
use crate::{Error, path_segment};

/// `taskq flow` subcommands.
#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Submit a flow: a JSON file (`-` for stdin) holding `{"tasks": [...]}` or just the
    /// array; each task as `submit` takes it plus an optional `name` and `depends_on`
    /// (names of tasks of the file, or ids of existing tasks).
    Submit {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show a flow: its state and every task's.
    Get {
        /// Flow id.
        #[arg(value_parser = path_segment)]
        id: String,
    },
    /// Cancel every unfinished task of a flow.
    Cancel {
        #[arg(value_parser = path_segment)]
        id: String,
    },
    /// Retry a flow's dead tasks and wait again on the tasks they cancelled.
    Retry {
        #[arg(value_parser = path_segment)]
        id: String,
    },
}

impl Ctx {
    /// Runs one `flow` subcommand.
    pub(crate) async fn flow(&self, cmd: &FlowCommand) -> Result<String, Error> {
        match cmd {
            FlowCommand::Submit { file } => self.flow_submit(file).await,
            FlowCommand::Get { id } => {
                let ans = self.client.get(&["v1", "flows", id], &[]).await?;
                Ok(self.show(&ans.body, flow_detail))
            }
            FlowCommand::Cancel { id } => {
                self.flow_act(
                    id,
                    "cancel",
                    [
                        ("cancelled", "tasks cancelled"),
                        ("signalled", "running tasks signalled"),
                    ],
                )
                .await
            }
            FlowCommand::Retry { id } => {
                self.flow_act(
                    id,
                    "retry",
                    [
                        ("requeued", "dead tasks queued again"),
                        ("waiting", "tasks waiting again"),
                    ],
                )
                .await
            }
        }
    }

    /// `POST /v1/flows/{id}/{action}`, told as `flow <id>: <n> <words>, …` from the
    /// answer's count fields.
    async fn flow_act(
        &self,
        id: &str,
        action: &str,
        counts: [(&str, &str); 2],
    ) -> Result<String, Error> {
        self.act(&["v1", "flows", id, action], |v| {
            let told: Vec<String> = counts
                .iter()
                .map(|(field, words)| format!("{} {words}", text(&v[*field])))
                .collect();
            format!("flow {id}: {}\n", told.join(", "))
        })
        .await
    }

    async fn flow_submit(&self, file: &Path) -> Result<String, Error> {
        let bytes = read_input(file)?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::input(format!("{}: not JSON: {e}", file.display())))?;
        let body = match v {
            Value::Array(_) => json!({ "tasks": v }),
            Value::Object(_) => v,
            _ => {
                return Err(Error::input(format!(
                    "{}: expected {{\"tasks\": [...]}} or an array of tasks",
                    file.display()
                )));
            }
        };
        let ans = self
            .client
            .call(Method::POST, &["v1", "flows"], &body, HeaderMap::new())
            .await?;
        Ok(self.show(&ans.body, flow_detail))
    }
}

/// A flow: its id and state, then one row per task.
fn flow_detail(f: &Value) -> String {
    let tasks = f["tasks"].as_array().map(Vec::as_slice).unwrap_or_default();
    let names: std::collections::HashMap<&str, &str> = tasks
        .iter()
        .filter_map(|t| Some((t["id"].as_str()?, t["name"].as_str()?)))
        .collect();
    let mut out = fields(vec![
        ("ID", text(&f["id"])),
        ("STATUS", text(&f["status"])),
        ("TASKS", tasks.len().to_string()),
    ]);
    out.push_str(&columns(
        &[
            "ID",
            "NAME",
            "TYPE",
            "QUEUE",
            "STATUS",
            "DEPENDS ON",
            "LAST ERROR",
        ],
        tasks
            .iter()
            .map(|t| {
                let deps: Vec<&str> = t["depends_on"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|d| d.as_str())
                    .map(|d| names.get(d).copied().unwrap_or(d))
                    .collect();
                let mut row = texts(t, &["id", "name", "type", "queue", "status"]);
                row.extend([clip(&deps.join(","), 60), clip(&text(&t["last_error"]), 60)]);
                row
            })
            .collect(),
    ));
    out
}
