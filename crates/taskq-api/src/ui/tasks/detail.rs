//! `GET /ui/tasks/{id}`: one task's record, its attempts read from its history, its
//! progress, result and trace, and the actions its status allows.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::html;
use taskq_core::{TaskId, TaskRecord, TaskStatus};
use taskq_telemetry::TraceParent;

use crate::AppState;
use crate::ui::layout::{self, Nav, UiError, status, when};
use crate::ui::session::{Viewer, url_encode};

/// One attempt of a task, read from its events.
struct Attempt {
    number: u32,
    worker: Option<String>,
    started: DateTime<Utc>,
    ended: Option<(DateTime<Utc>, TaskStatus)>,
    error: Option<String>,
}

fn attempts(t: &TaskRecord) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    for e in &t.events {
        if e.status == TaskStatus::Running {
            out.push(Attempt {
                number: e.attempt,
                worker: e.worker.clone(),
                started: e.at,
                ended: None,
                error: None,
            });
        } else if let Some(a) = out.last_mut()
            && a.ended.is_none()
            && a.number == e.attempt
        {
            a.ended = Some((e.at, e.status));
            a.error = e.error.clone();
            if a.worker.is_none() {
                a.worker = e.worker.clone();
            }
        }
    }
    out
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// `GET /ui/tasks/{id}`.
pub async fn detail(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id: TaskId = id
        .parse()
        .map_err(|_| UiError::bad_request(format!("`{id}` is not a task id")))?;
    let Some(stored) = state.store.get(id).await? else {
        return Err(UiError::new(StatusCode::NOT_FOUND, format!("no task {id}")));
    };
    let t = stored.record;
    let now = Utc::now();
    let tries = attempts(&t);
    let trace = t
        .traceparent
        .as_deref()
        .and_then(TraceParent::parse)
        .map(TraceParent::trace_id);
    let trace_link = trace.and_then(|tid| {
        state
            .ui
            .trace_url
            .as_ref()
            .map(|tpl| tpl.replace("{trace_id}", tid))
    });
    let action = format!("/ui/tasks/{id}/action");
    let body = html! {
        h1 { "Task " span class="mono" { (id.to_string()) } " " (status(t.status)) }
        @if viewer.acts() {
            div class="actions" {
                @for (op, label, show) in [
                    ("retry", "Retry", t.status == TaskStatus::Dead),
                    ("cancel", "Cancel", !t.status.is_final()),
                    ("delete", "Delete", t.status.is_final()),
                ] {
                    @if show {
                        form method="post" action=(action) class="inline" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" name="op" value=(op) class=[(op == "delete").then_some("danger")] { (label) }
                        }
                    }
                }
            }
        }
        div class="grid" {
            div class="card" {
                dl class="kv" {
                    dt { "type" } dd { (t.kind) }
                    dt { "queue" } dd { a href=(format!("/ui/tasks?queue={}", url_encode(t.queue.as_str()))) { (t.queue.as_str()) } }
                    dt { "priority" } dd { (t.priority.as_str()) }
                    dt { "attempts" } dd { (t.attempts) " of " (t.max_attempts) }
                    dt { "timeout" } dd { (t.timeout_ms) " ms" }
                    dt { "created" } dd { (when(t.created_at, now)) }
                    dt { "scheduled" } dd { (when(t.scheduled_at, now)) }
                    dt { "started" } dd { @if let Some(s) = t.started_at { (when(s, now)) } @else { "—" } }
                    dt { "finished" } dd { @if let Some(s) = t.finished_at { (when(s, now)) } @else { "—" } }
                    @if let Some(k) = &t.idempotency_key { dt { "idempotency key" } dd class="mono" { (k) } }
                    dt { "trace" } dd class="mono" {
                        @match (trace, &trace_link) {
                            (Some(tid), Some(url)) => { a href=(url) rel="noopener noreferrer" target="_blank" { (tid) } }
                            (Some(tid), None) => { (tid) }
                            _ => { "—" }
                        }
                    }
                }
            }
            div {
                @if let Some(e) = &t.last_error {
                    h2 { @if t.status == TaskStatus::Succeeded { "Error of an earlier attempt" } @else { "Last error" } }
                    pre class="error" { (e) }
                }
                h2 { "Payload" }
                pre id="payload" { (pretty(&t.payload)) }
                @if let Some(r) = &t.result { h2 { "Result" } pre id="result" { (pretty(r)) } }
                @if let Some(prog) = &t.progress {
                    h2 { "Progress" }
                    p class="muted" { "reported by attempt " (prog.attempt) ", " (when(prog.at, now)) }
                    pre id="progress" { (pretty(&prog.value)) }
                }
            }
        }
        h2 { "Attempts" }
        @if tries.is_empty() { p class="muted" { "Not started yet." } } @else {
            table id="attempts" {
                thead { tr { th { "#" } th { "Worker" } th { "Started" } th class="num" { "Duration" } th { "Outcome" } th { "Error" } } }
                tbody {
                    @for a in &tries {
                        tr {
                            td { (a.number) }
                            td class="mono" { (a.worker.as_deref().unwrap_or("—")) }
                            td { (when(a.started, now)) }
                            td class="num" {
                                @match a.ended {
                                    Some((end, _)) => { ((end - a.started).num_milliseconds()) " ms" }
                                    None => { "running" }
                                }
                            }
                            td { @if let Some((_, s)) = a.ended { (status(s)) } @else { (status(TaskStatus::Running)) } }
                            td class="error" { (a.error.as_deref().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        h2 { "Timeline" }
        ol class="timeline" id="timeline" {
            @for e in &t.events {
                li {
                    (status(e.status)) " "
                    (when(e.at, now))
                    " · attempt " (e.attempt)
                    @if let Some(w) = &e.worker { " · " span class="mono" { (w) } }
                    @if let Some(err) = &e.error { div class="error" { (err) } }
                }
            }
        }
    };
    Ok(layout::page(&viewer, Nav::Tasks, &format!("Task {id}"), body).into_response())
}
