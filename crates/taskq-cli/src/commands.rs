//! The commands: each sends its requests through the [`Client`] and renders the answer,
//! as a table ([`crate::render`]) or as the api's JSON.
//!
//! Only two things here touch the terminal, both on stderr and only when it is one: the
//! progress bar of `submit --file` and the confirmation prompt of `purge-dead`.

use std::collections::HashSet;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use crate::jsonl::{self, Line};
use crate::render::{self, Rejected, text};
use crate::{Client, Error, LimitsArgs, ListArgs, Output, Report, SubmitArgs};

/// Header carrying `--idempotency-key`.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What every command needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub client: Client,
    pub output: Output,
}

/// Pretty JSON with a final newline.
fn json_text(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// The bytes of `path`, or of stdin for `-`.
pub(crate) fn read_input(path: &Path) -> Result<Vec<u8>, Error> {
    let read = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())))
}

/// Why a task waited for did not succeed: it ended `dead` or `cancelled`, or had not
/// finished when the wait ended. `None` when it succeeded.
fn unsuccessful(task: &Value, waited: Duration) -> Option<Error> {
    let id = text(&task["id"]);
    let status = text(&task["status"]);
    match status.as_str() {
        "succeeded" => None,
        "dead" | "cancelled" => Some(Error::input(match task["last_error"].as_str() {
            Some(e) => format!("task {id} ended {status}: {e}"),
            None => format!("task {id} ended {status}"),
        })),
        _ => Some(Error::input(format!(
            "task {id} is still {status} after waiting {} ms",
            waited.as_millis()
        ))),
    }
}

impl Ctx {
    /// The body as JSON, or rendered by `table`.
    pub(crate) fn show(&self, body: &Value, table: impl FnOnce(&Value) -> String) -> String {
        match self.output {
            Output::Json => json_text(body),
            Output::Table => render::terminal_safe(&table(body)),
        }
    }

    /// POSTs an action (`POST /v1/...` without a body) and shows its answer.
    pub(crate) async fn act(
        &self,
        segments: &[&str],
        table: impl FnOnce(&Value) -> String,
    ) -> Result<String, Error> {
        let ans = self.client.post_action(segments).await?;
        Ok(self.show(&ans.body, table))
    }

    fn bad_response(&self, status: u16, what: &str) -> Error {
        Error::BadResponse {
            url: self.client.display_base(),
            status,
            what: what.to_owned(),
        }
    }

    /// `submit TYPE …`: `POST /v1/tasks`; with `--wait`, then `get ID --wait`.
    pub async fn submit(&self, a: &SubmitArgs) -> Result<Report, Error> {
        let kind = a
            .kind
            .as_deref()
            .ok_or_else(|| Error::input("a task type is needed (or --file)"))?;
        let mut body = Map::new();
        body.insert("type".into(), kind.into());
        let payload = match (&a.payload, &a.payload_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                serde_json::from_slice(&read_input(f)?)
                    .map_err(|e| Error::input(format!("{} is not valid JSON: {e}", f.display())))?,
            ),
            (None, None) => None,
        };
        if let Some(p) = payload {
            body.insert("payload".into(), p);
        }
        if let Some(q) = &a.queue {
            body.insert("queue".into(), q.as_str().into());
        }
        if let Some(p) = a.priority {
            body.insert("priority".into(), p.as_str().into());
        }
        if let Some(d) = a.delay_ms {
            body.insert("delay_ms".into(), d.into());
        }
        if let Some(t) = &a.run_at {
            body.insert("run_at".into(), t.as_str().into());
        }
        if let Some(n) = a.max_attempts {
            body.insert("max_attempts".into(), n.into());
        }
        if let Some(t) = a.timeout_ms {
            body.insert("timeout_ms".into(), t.into());
        }
        if let Some(k) = &a.key {
            body.insert("key".into(), k.as_str().into());
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = &a.idempotency_key {
            let v = HeaderValue::from_str(key)
                .map_err(|_| Error::input("--idempotency-key must be visible ASCII"))?;
            headers.insert(IDEMPOTENCY_KEY, v);
        }
        let ans = self
            .client
            .call(
                Method::POST,
                &["v1", "tasks"],
                &Value::Object(body),
                headers,
            )
            .await?;
        if let Some(wait) = a.wait {
            let id = ans.body["id"]
                .as_str()
                .ok_or_else(|| self.bad_response(ans.status, "the task has no `id`"))?;
            return self.get(id, Some(wait)).await;
        }
        Ok(Report::ok(self.show(&ans.body, |t| {
            let id = text(&t["id"]);
            let headline = match (ans.status, &a.idempotency_key) {
                (200, Some(key)) => format!(
                    "task {id} already existed for idempotency key {key:?}: no new task was created"
                ),
                (200, None) => format!("task {id} already existed: no new task was created"),
                _ => format!("task {id} submitted"),
            };
            render::task_summary(&headline, t)
        })))
    }

    /// `submit --file F`: `POST /v1/tasks/batch` per chunk of `batch_size` lines.
    ///
    /// A chunk that fails as a whole (api down, batch too large) stops the run, so what
    /// was not sent is always the end of the file, from the line the summary names.
    pub async fn submit_file(&self, path: &Path, batch_size: usize) -> Result<Report, Error> {
        let lines = jsonl::parse(&read_input(path)?)
            .map_err(|e| Error::input(format!("{}: {e}; nothing was sent", path.display())))?;
        if lines.is_empty() {
            return Err(Error::input(format!(
                "{}: no tasks in it; nothing was sent",
                path.display()
            )));
        }
        let total = lines.len();
        let bar = self.progress(total);
        let mut results = Vec::with_capacity(total);
        let mut rejected = Vec::new();
        let mut accepted = 0;
        let mut failure = None;
        let mut not_sent_from = None;
        for (n, chunk) in lines.chunks(batch_size.max(1)).enumerate() {
            let offset = n * batch_size;
            let first_line = chunk.first().map_or(0, |l| l.number);
            let items = match self.send_chunk(chunk).await {
                Ok(items) => items,
                Err(e) => {
                    not_sent_from = Some(first_line);
                    failure = Some(Error::input(format!(
                        "the tasks from line {first_line} on were not sent: {e}"
                    )));
                    break;
                }
            };
            for (i, mut item) in items {
                let line = chunk[i].number;
                item["index"] = json!(offset + i);
                item["line"] = json!(line);
                if item.get("error").is_some() {
                    let e = &item["error"];
                    rejected.push(Rejected {
                        line,
                        code: text(&e["code"]),
                        message: text(&e["message"]),
                    });
                } else {
                    accepted += 1;
                }
                results.push(item);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        if failure.is_none() && !rejected.is_empty() {
            failure = Some(Error::input(format!(
                "{} of {total} tasks were rejected",
                rejected.len()
            )));
        }
        let stdout = match self.output {
            Output::Json => json_text(&json!({
                "accepted": accepted,
                "rejected": rejected.len(),
                "not_sent": total - accepted - rejected.len(),
                "results": results,
            })),
            Output::Table => render::terminal_safe(&render::batch_summary(
                total,
                accepted,
                &rejected,
                not_sent_from,
            )),
        };
        Ok(Report { stdout, failure })
    }

    /// Sends one chunk; returns each item's result with its index in the chunk, checked
    /// to name every item exactly once.
    async fn send_chunk(&self, chunk: &[Line]) -> Result<Vec<(usize, Value)>, Error> {
        let body = json!({"tasks": chunk.iter().map(|l| &l.task).collect::<Vec<_>>()});
        let ans = self
            .client
            .send(
                Method::POST,
                &["v1", "tasks", "batch"],
                &[],
                Some(&body),
                HeaderMap::new(),
            )
            .await?;
        // 400 with `results` means "no item was valid", not a failed request.
        let results = match ans.body["results"].as_array() {
            Some(r) if matches!(ans.status, 200..=299 | 400) => r,
            _ if !(200..300).contains(&ans.status) => return Err(self.client.error_of(&ans)),
            _ => return Err(self.bad_response(ans.status, "the batch answer has no `results`")),
        };
        let mut seen = vec![false; chunk.len()];
        let mut items = Vec::with_capacity(chunk.len());
        for r in results {
            let i = r["index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < chunk.len() && !seen[i])
                .ok_or_else(|| {
                    self.bad_response(ans.status, "a batch result has a wrong or repeated `index`")
                })?;
            seen[i] = true;
            items.push((i, r.clone()));
        }
        if items.len() != chunk.len() {
            return Err(self.bad_response(ans.status, "the batch answer misses some items"));
        }
        items.sort_by_key(|(i, _)| *i);
        Ok(items)
    }

    /// A progress bar on stderr, hidden when that is not a terminal or output is JSON.
    fn progress(&self, total: usize) -> ProgressBar {
        if self.output == Output::Json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let style =
            ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} tasks sent, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
            .with_style(style)
    }

    /// `get ID`: `GET /v1/tasks/{id}`.
    /// `get ID [--wait D]`: `GET /v1/tasks/{id}[?wait=D]`. With a wait, the command fails
    /// (after printing the task) unless the task succeeded.
    pub async fn get(&self, id: &str, wait: Option<Duration>) -> Result<Report, Error> {
        let query: Vec<(&str, String)> = wait
            .map(|w| ("wait", format!("{}ms", w.as_millis())))
            .into_iter()
            .collect();
        let ans = self.client.get(&["v1", "tasks", id], &query).await?;
        Ok(Report {
            stdout: self.show(&ans.body, render::task_detail),
            failure: wait.and_then(|w| unsuccessful(&ans.body, w)),
        })
    }

    /// `list`: `GET /v1/tasks?…`, following `next_cursor` with `--all`.
    pub async fn list(&self, a: &ListArgs) -> Result<String, Error> {
        let mut query: Vec<(&str, String)> = Vec::new();
        let filters = [
            ("status", &a.status),
            ("type", &a.kind),
            ("queue", &a.queue),
            ("key", &a.key),
        ];
        for (name, value) in filters {
            if let Some(v) = value {
                query.push((name, v.clone()));
            }
        }
        if let Some(l) = a.limit {
            query.push(("limit", l.to_string()));
        }
        let mut cursor = a.cursor.clone();
        let mut tasks = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let mut q = query.clone();
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let ans = self.client.get(&["v1", "tasks"], &q).await?;
            let page = ans.body["tasks"]
                .as_array()
                .ok_or_else(|| self.bad_response(ans.status, "the list answer has no `tasks`"))?;
            let next = ans.body["next_cursor"].as_str().map(str::to_owned);
            if !a.all {
                return Ok(self.show(&ans.body, |_| render::task_list(page, next.as_deref())));
            }
            tasks.extend(page.iter().cloned());
            match next {
                // A cursor seen before would loop forever.
                Some(c) if !seen.insert(c.clone()) => {
                    return Err(self.bad_response(ans.status, "the same cursor came back twice"));
                }
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let body = json!({"tasks": tasks, "next_cursor": null});
        Ok(self.show(&body, |_| render::task_list(&tasks, None)))
    }

    /// `retry ID`: `POST /v1/tasks/{id}/retry`.
    pub async fn retry(&self, id: &str) -> Result<String, Error> {
        self.act(&["v1", "tasks", id, "retry"], |t| {
            render::task_summary(
                &format!("task {} will run again from attempt 1", text(&t["id"])),
                t,
            )
        })
        .await
    }

    /// `cancel ID`: `POST /v1/tasks/{id}/cancel`; 202 means a running task was signalled.
    pub async fn cancel(&self, id: &str) -> Result<String, Error> {
        let ans = self
            .client
            .post_action(&["v1", "tasks", id, "cancel"])
            .await?;
        Ok(self.show(&ans.body, |t| {
            let id = text(&t["id"]);
            let headline = if ans.status == 202 {
                format!(
                    "task {id} is running: its worker was asked to stop it (`taskq get {id}` shows when it has)"
                )
            } else {
                format!("task {id} cancelled")
            };
            render::task_summary(&headline, t)
        }))
    }

    /// `delete ID`: `DELETE /v1/tasks/{id}` (no body on success; `-o json` prints the id).
    pub async fn delete(&self, id: &str) -> Result<String, Error> {
        self.client.delete(&["v1", "tasks", id]).await?;
        Ok(self.show(&json!({ "deleted": id }), |_| {
            format!("task {id} deleted\n")
        }))
    }

    /// `queues [NAME]`: `GET /v1/queues` or `GET /v1/queues/{name}`.
    pub async fn queues(&self, name: Option<&str>) -> Result<String, Error> {
        let Some(name) = name else {
            let ans = self.client.get(&["v1", "queues"], &[]).await?;
            let queues = ans.body["queues"]
                .as_array()
                .ok_or_else(|| self.bad_response(ans.status, "the answer has no `queues`"))?;
            return Ok(self.show(&ans.body, |_| render::queue_list(queues)));
        };
        let ans = self.client.get(&["v1", "queues", name], &[]).await?;
        Ok(self.show(&ans.body, render::queue_detail))
    }

    /// `pause Q` / `resume Q`: `POST /v1/queues/{name}/pause|resume`.
    pub async fn pause(&self, queue: &str, pause: bool) -> Result<String, Error> {
        let (action, done) = if pause {
            ("pause", "paused")
        } else {
            ("resume", "resumed")
        };
        self.act(&["v1", "queues", queue, action], |q| {
            format!(
                "queue {} {done}\n{}",
                text(&q["name"]),
                render::queue_list(std::slice::from_ref(q))
            )
        })
        .await
    }

    /// `retry-dead Q`: `POST /v1/queues/{name}/retry-dead`.
    pub async fn retry_dead(&self, queue: &str) -> Result<String, Error> {
        self.act(&["v1", "queues", queue, "retry-dead"], |b| {
            format!(
                "{} dead tasks of queue {} will run again\n",
                text(&b["retried"]),
                crate::error::one_line(queue)
            )
        })
        .await
    }

    /// `limits Q`: `PUT /v1/queues/{name}/limits`, then the queue as `queues Q` shows it.
    pub async fn limits(&self, a: &LimitsArgs) -> Result<String, Error> {
        let body = json!({
            "max_dispatches_per_second": a.max_dispatches_per_second,
            "burst": a.burst,
            "max_concurrent": a.max_concurrent,
            "max_running_per_key": a.max_running_per_key,
            "max_dispatches_per_second_per_key": a.max_dispatches_per_second_per_key,
            "burst_per_key": a.burst_per_key,
        });
        let ans = self
            .client
            .call(
                Method::PUT,
                &["v1", "queues", &a.queue, "limits"],
                &body,
                HeaderMap::new(),
            )
            .await?;
        Ok(self.show(&ans.body, render::queue_detail))
    }

    /// `purge-dead Q`: asks first unless `yes`, then `POST /v1/queues/{name}/purge-dead`.
    pub async fn purge_dead(&self, queue: &str, yes: bool) -> Result<String, Error> {
        if !yes {
            confirm(&format!(
                "Delete every dead task of queue {queue:?} for good?"
            ))?;
        }
        self.act(&["v1", "queues", queue, "purge-dead"], |b| {
            format!(
                "{} dead tasks of queue {} deleted\n",
                text(&b["purged"]),
                crate::error::one_line(queue)
            )
        })
        .await
    }

    /// `recover`: `POST /v1/admin/recover`.
    pub async fn recover(&self) -> Result<String, Error> {
        self.act(&["v1", "admin", "recover"], |b| {
            format!(
                "{} tasks put back into Redis, {} were already there\n",
                text(&b["enqueued"]),
                text(&b["already_present"])
            )
        })
        .await
    }
}

/// Asks `question` on stderr and reads the answer from stdin; anything but y/yes is a
/// no. Without a terminal to ask on, the answer is no: a script must say `--yes`.
fn confirm(question: &str) -> Result<(), Error> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::input(
            "this deletes tasks for good: pass --yes to confirm (stdin is not a terminal to ask on)",
        ));
    }
    let mut stderr = std::io::stderr();
    // A prompt that cannot be shown is still answered below; nothing to do about it.
    let _ = write!(stderr, "{question} [y/N] ");
    let _ = stderr.flush();
    let mut answer = String::new();
    stdin
        .read_line(&mut answer)
        .map_err(|e| Error::input(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Error::input("not confirmed; nothing was deleted"))
    }
}
