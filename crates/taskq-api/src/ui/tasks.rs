//! The task pages: the search list (filters in the URL, so a filtered view is a link
//! to share), the detail of one task, and the actions on tasks: retry, cancel and
//! delete, on one task, on a selection, or on everything a filter matches. Bulk actions
//! first answer with a confirmation stating how many tasks they touch, and never touch
//! more than that number.
//!
//! Retry goes through `transitions::retry::retry` (the function behind `POST /v1/tasks/{id}/retry`
//! and `retry-dead`), cancel through the `POST /v1/tasks/{id}/cancel` handler, delete
//! through [`taskq_store::Store::delete_finished`] (finished tasks only: Redis holds
//! nothing of them).

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{Markup, html};
use taskq_core::{TaskId, TaskRecord, TaskStatus};
use taskq_store::Search;
use taskq_telemetry::TraceParent;

use super::layout::{self, Nav, UiError, status, when};
use super::session::{SignedForm, Viewer, url_encode};
use crate::AppState;

/// Tasks per page.
const PAGE: u32 = 50;
/// Most tasks one bulk action on a selection takes.
const MAX_SELECTED: usize = 1000;
/// Tasks handled per round of a bulk action on everything a filter matches.
const BULK_ROUND: u32 = 500;

/// The list's filters, as they appear in its URL.
#[derive(Clone, Debug, Default)]
struct Filter {
    queue: String,
    status: String,
    kind: String,
    from: String,
    to: String,
    text: String,
    oldest: bool,
}

const FILTER_KEYS: [&str; 7] = ["queue", "status", "type", "from", "to", "q", "sort"];

fn pairs_of(query: &str) -> Vec<(String, String)> {
    super::session::form_urlencoded_parse(query.as_bytes())
}

impl Filter {
    fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let val = |k: &str| get(k).map(str::trim).unwrap_or_default().to_owned();
        Self {
            queue: val("queue"),
            status: val("status"),
            kind: val("type"),
            from: val("from"),
            to: val("to"),
            text: get("q").unwrap_or_default().to_owned(),
            oldest: get("sort") == Some("oldest"),
        }
    }

    /// The text fields of this filter with their URL query names.
    fn fields(&self) -> [(&'static str, &str); 6] {
        [
            ("queue", &self.queue),
            ("status", &self.status),
            ("type", &self.kind),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.text),
        ]
    }

    /// The URL query of this filter (without cursor).
    fn query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in self.fields() {
            if !v.is_empty() {
                parts.push(format!("{k}={}", url_encode(v)));
            }
        }
        if self.oldest {
            parts.push("sort=oldest".into());
        }
        parts.join("&")
    }

    /// The store's search for this filter; a bad value is a 400 naming it.
    fn search(&self) -> Result<Search, UiError> {
        let bad = |m: String| UiError::bad_request(m);
        let queue = (!self.queue.is_empty())
            .then(|| {
                self.queue
                    .parse()
                    .map_err(|e: taskq_core::queue::InvalidQueueName| bad(e.to_string()))
            })
            .transpose()?;
        let status = (!self.status.is_empty())
            .then(|| {
                self.status
                    .parse::<TaskStatus>()
                    .map_err(|e| bad(e.to_string()))
            })
            .transpose()?;
        if self.kind.len() > taskq_core::validate::MAX_TYPE_LEN {
            return Err(bad("`type` is longer than 128 characters".into()));
        }
        if self.text.len() > 256 {
            return Err(bad("the search text is longer than 256 characters".into()));
        }
        Ok(Search {
            queue,
            status,
            kind: (!self.kind.is_empty()).then(|| self.kind.clone()),
            from: parse_time(&self.from, "from")?,
            to: parse_time(&self.to, "to")?,
            text: (!self.text.is_empty()).then(|| self.text.clone()),
            oldest_first: self.oldest,
        })
    }

    fn hidden(&self) -> Markup {
        html! {
            @for (k, v) in [("queue", &self.queue), ("status", &self.status), ("type", &self.kind),
                            ("from", &self.from), ("to", &self.to), ("q", &self.text)] {
                @if !v.is_empty() { input type="hidden" name=(k) value=(v); }
            }
            @if self.oldest { input type="hidden" name="sort" value="oldest"; }
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in self.fields() {
            if !v.is_empty() {
                let k = if k == "q" { "text" } else { k };
                parts.push(format!("{k} = {v}"));
            }
        }
        if parts.is_empty() {
            "every task".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A time of a filter: `YYYY-MM-DDTHH:MM[:SS]` (the browser's `datetime-local`, taken
/// as UTC) or RFC 3339.
fn parse_time(s: &str, field: &str) -> Result<Option<DateTime<Utc>>, UiError> {
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(UiError::bad_request(format!(
        "`{field}` must be a time like 2026-12-01T06:30 (UTC)"
    )))
}

/// `GET /ui/tasks`.
pub async fn list(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(query): RawQuery,
) -> Result<Response, UiError> {
    let pairs = pairs_of(query.as_deref().unwrap_or_default());
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    for (k, _) in &pairs {
        if !FILTER_KEYS.contains(&k.as_str()) && !["cursor", "notice", "n"].contains(&k.as_str()) {
            return Err(UiError::bad_request(format!("unknown parameter `{k}`")));
        }
    }
    let filter = Filter::from_lookup(get);
    let search = filter.search()?;
    // A submitted filter form sends every field; answer with the short URL of what is
    // set, so the address bar holds a link worth sharing.
    if pairs
        .iter()
        .any(|(k, v)| v.is_empty() || (k == "sort" && v == "newest"))
    {
        let mut canonical = filter.query();
        for k in ["cursor", "notice", "n"] {
            if let Some(v) = get(k).filter(|v| !v.is_empty()) {
                if !canonical.is_empty() {
                    canonical.push('&');
                }
                canonical.push_str(&format!("{k}={}", url_encode(v)));
            }
        }
        let to = if canonical.is_empty() {
            "/ui/tasks".to_owned()
        } else {
            format!("/ui/tasks?{canonical}")
        };
        return Ok(Redirect::to(&to).into_response());
    }
    let cursor = get("cursor")
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<TaskId>()
                .map_err(|_| UiError::bad_request("`cursor` is not a cursor from a previous page"))
        })
        .transpose()?;
    let (page, queues) = tokio::try_join!(
        async {
            state
                .store
                .search(&search, PAGE, cursor)
                .await
                .map_err(UiError::from)
        },
        async { state.broker.queues().await.map_err(UiError::from) },
    )?;
    let notice = get("notice").and_then(|n| {
        let count: u64 = get("n").and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(match n {
            "retried" => format!("Queued {count} dead tasks again."),
            "cancelled" => format!("Cancelled {count} tasks (running ones stop shortly)."),
            "deleted" => format!("Deleted {count} tasks."),
            _ => return None,
        })
    });
    let now = Utc::now();
    let fq = filter.query();
    let here = if fq.is_empty() {
        "/ui/tasks".to_owned()
    } else {
        format!("/ui/tasks?{fq}")
    };
    let with = |extra: &str| {
        if fq.is_empty() {
            format!("/ui/tasks?{extra}")
        } else {
            format!("/ui/tasks?{fq}&{extra}")
        }
    };
    let body = html! {
        h1 { "Tasks" }
        @if let Some(n) = notice { p class="notice" role="status" { (n) } }
        form method="get" action="/ui/tasks" class="filters" id="filters" {
            label { "Search"
                input id="search" type="search" name="q" value=(filter.text)
                    placeholder="type, id, payload or error  ( / )" accesskey="s"; }
            label { "Queue"
                select name="queue" {
                    option value="" { "any" }
                    @for q in &queues {
                        option value=(q.as_str()) selected[filter.queue == q.as_str()] { (q.as_str()) }
                    }
                }
            }
            label { "State"
                select name="status" {
                    option value="" { "any" }
                    @for s in TaskStatus::ALL {
                        option value=(s.as_str()) selected[filter.status == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "Type" input type="text" name="type" value=(filter.kind) size="14"; }
            label { "Created from (UTC)" input type="datetime-local" name="from" value=(filter.from); }
            label { "to" input type="datetime-local" name="to" value=(filter.to); }
            label { "Order"
                select name="sort" {
                    option value="newest" selected[!filter.oldest] { "newest first" }
                    option value="oldest" selected[filter.oldest] { "oldest first" }
                }
            }
            button type="submit" class="primary" { "Filter" }
            a href="/ui/tasks" { "Clear" }
        }
        @if viewer.acts() {
            form method="post" action="/ui/tasks/bulk" id="bulk" class="actions" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="return" value=(here);
                (filter.hidden())
                span class="muted" { "Selected:" }
                button type="submit" name="op" value="retry:selected" { "Retry" }
                button type="submit" name="op" value="cancel:selected" { "Cancel" }
                button type="submit" name="op" value="delete:selected" class="danger" { "Delete" }
                span class="muted" { "Everything matching the filter:" }
                button type="submit" name="op" value="retry:matching" { "Retry all…" }
                button type="submit" name="op" value="cancel:matching" { "Cancel all…" }
                button type="submit" name="op" value="delete:matching" class="danger" { "Delete all…" }
            }
        }
        table id="tasks" {
            thead { tr {
                @if viewer.acts() { th { input type="checkbox" id="select-all" aria-label="select all"; } }
                th { "ID" } th { "Type" } th { "Queue" } th { "State" }
                th class="num" { "Attempts" } th { "Created (UTC)" } th { "Last error" }
            } }
            tbody {
                @for t in &page.tasks {
                    tr tabindex="0" data-href=(format!("/ui/tasks/{}", t.id)) data-id=(t.id.to_string())
                        data-status=(t.status.as_str()) {
                        @if viewer.acts() {
                            td { input type="checkbox" name="ids" value=(t.id.to_string()) form="bulk"
                                aria-label=(format!("select {}", t.id)); }
                        }
                        td class="mono" { a href=(format!("/ui/tasks/{}", t.id)) { (t.id.to_string()) } }
                        td { (t.kind) }
                        td { (t.queue.as_str()) }
                        td { (status(t.status)) }
                        td class="num" { (t.attempts) "/" (t.max_attempts) }
                        td { (when(t.created_at, now)) }
                        td class=(if t.status == TaskStatus::Succeeded { "muted" } else { "error" }) {
                            (t.last_error.as_deref().map(|e| truncate(e, 100)).unwrap_or_default())
                        }
                    }
                }
            }
        }
        @if page.tasks.is_empty() { p class="muted" { "No task matches." } }
        div class="pager" {
            @if cursor.is_some() { a href=(here) accesskey="f" { "« First page" } }
            @if let Some(c) = page.next_cursor {
                a href=(with(&format!("cursor={c}"))) accesskey="n" rel="next" { "Next page »" }
            }
        }
    };
    Ok(layout::page(&viewer, Nav::Tasks, "Tasks", body).into_response())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

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

/// The operations on tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Retry,
    Cancel,
    Delete,
}

impl Op {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "retry" => Some(Op::Retry),
            "cancel" => Some(Op::Cancel),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Retry => "retry",
            Op::Cancel => "cancel",
            Op::Delete => "delete",
        }
    }

    /// The statuses this operation applies to.
    fn applies_to(self) -> Vec<TaskStatus> {
        TaskStatus::ALL
            .into_iter()
            .filter(|s| match self {
                Op::Retry => *s == TaskStatus::Dead,
                Op::Cancel => !s.is_final(),
                Op::Delete => s.is_final(),
            })
            .collect()
    }

    fn notice(self) -> &'static str {
        match self {
            Op::Retry => "retried",
            Op::Cancel => "cancelled",
            Op::Delete => "deleted",
        }
    }
}

/// Runs `op` on `ids`; returns how many tasks it changed.
async fn run(state: &AppState, op: Op, ids: Vec<TaskId>) -> Result<u64, UiError> {
    state.ui.counts.clear();
    match op {
        Op::Retry => match crate::transitions::retry::retry(state, ids).await {
            Ok(outcomes) => Ok(outcomes
                .iter()
                .filter(|o| matches!(o, crate::transitions::retry::Outcome::Queued(_)))
                .count() as u64),
            Err(failed) => Err(UiError::from(failed.error.with_outcome(&format!(
                "{} tasks were queued again and the others stay dead; retry again for the rest",
                failed.queued
            )))),
        },
        Op::Cancel => {
            let mut n = 0;
            for id in ids {
                match crate::transitions::cancel::cancel(state, id).await {
                    Ok(_) => n += 1,
                    // Finished or gone meanwhile: nothing to cancel.
                    Err(e)
                        if e.status == StatusCode::CONFLICT
                            || e.status == StatusCode::NOT_FOUND => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(n)
        }
        Op::Delete => Ok(state.store.delete_finished(&ids).await?),
    }
}

/// `POST /ui/tasks/{id}/action`: `op` = `retry`, `cancel` or `delete` on one task.
pub async fn action(
    State(state): State<AppState>,
    Path(id): Path<String>,
    form: SignedForm,
) -> Result<Response, UiError> {
    form.viewer.require_act()?;
    let id: TaskId = id
        .parse()
        .map_err(|_| UiError::bad_request(format!("`{id}` is not a task id")))?;
    let op = form
        .get("op")
        .and_then(Op::parse)
        .ok_or_else(|| UiError::bad_request("`op` must be retry, cancel or delete"))?;
    let Some(stored) = state.store.get(id).await? else {
        return Err(UiError::new(StatusCode::NOT_FOUND, format!("no task {id}")));
    };
    if !op.applies_to().contains(&stored.record.status) {
        return Err(UiError::new(
            StatusCode::CONFLICT,
            format!(
                "task {id} is {}; {} applies to {} tasks only",
                stored.record.status,
                op.as_str(),
                op.applies_to()
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let n = run(&state, op, vec![id]).await?;
    if op == Op::Delete {
        return Ok(Redirect::to(&format!("/ui/tasks?notice=deleted&n={n}")).into_response());
    }
    Ok(Redirect::to(&format!("/ui/tasks/{id}")).into_response())
}

/// How many of the tasks `filter` matches `op` applies to.
async fn count_matching(state: &AppState, search: &Search, op: Op) -> Result<u64, UiError> {
    let mut n = 0;
    for s in op.applies_to() {
        if search.status.is_some_and(|f| f != s) {
            continue;
        }
        n += state
            .store
            .count_matching(&Search {
                status: Some(s),
                ..search.clone()
            })
            .await?;
    }
    Ok(n)
}

/// Runs `op` on at most `cap` of the tasks `search` matches.
async fn run_matching(state: &AppState, search: &Search, op: Op, cap: u64) -> Result<u64, UiError> {
    let mut done = 0u64;
    let mut touched = 0u64;
    for s in op.applies_to() {
        if search.status.is_some_and(|f| f != s) {
            continue;
        }
        let one = Search {
            status: Some(s),
            ..search.clone()
        };
        let mut cursor = None;
        while touched < cap {
            let want =
                u32::try_from((cap - touched).min(u64::from(BULK_ROUND))).unwrap_or(BULK_ROUND);
            // Retried and deleted tasks leave the filter, so the first page is always the
            // next; cancelled ones may linger as running for a moment, hence the cursor.
            let after = if op == Op::Cancel { cursor } else { None };
            let ids = state.store.search_ids(&one, want, after).await?;
            let Some(last) = ids.last().copied() else {
                break;
            };
            cursor = Some(last);
            touched += ids.len() as u64;
            let n = run(state, op, ids).await?;
            done += n;
            if n == 0 && op != Op::Cancel {
                break;
            }
        }
    }
    Ok(done)
}

/// `POST /ui/tasks/bulk`: `op` = `<retry|cancel|delete>:<selected|matching>`. Without
/// `confirm=yes` it answers with the confirmation; with it, it acts on at most the
/// number of tasks the confirmation stated (`n`).
pub async fn bulk(State(state): State<AppState>, form: SignedForm) -> Result<Response, UiError> {
    form.viewer.require_act()?;
    let (op, scope) = form
        .get("op")
        .and_then(|v| v.split_once(':'))
        .and_then(|(o, s)| Some((Op::parse(o)?, s)))
        .filter(|(_, s)| *s == "selected" || *s == "matching")
        .ok_or_else(|| {
            UiError::bad_request("`op` must be <retry|cancel|delete>:<selected|matching>")
        })?;
    let filter = Filter::from_lookup(|k| form.get(k));
    let search = filter.search()?;
    let back = form
        .get("return")
        .filter(|r| r.starts_with("/ui/tasks") && !r.starts_with("//"))
        .unwrap_or("/ui/tasks")
        .to_owned();
    let ids: Vec<TaskId> = if scope == "selected" {
        let raw = form.all("ids");
        if raw.len() > MAX_SELECTED {
            return Err(UiError::bad_request(format!(
                "at most {MAX_SELECTED} tasks can be selected"
            )));
        }
        raw.iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| UiError::bad_request(format!("`{s}` is not a task id")))
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    if scope == "selected" && ids.is_empty() {
        return Err(UiError::bad_request("select at least one task first"));
    }
    let confirmed = form.get("confirm") == Some("yes");
    if !confirmed {
        let (n, selected) = if scope == "selected" {
            let applies = op.applies_to();
            let mut n = 0u64;
            for id in &ids {
                if let Some(t) = state.store.get(*id).await?
                    && applies.contains(&t.record.status)
                {
                    n += 1;
                }
            }
            (n, Some(ids.len()))
        } else {
            (count_matching(&state, &search, op).await?, None)
        };
        return Ok(
            confirm(&form.viewer, op, scope, &filter, &ids, selected, n, &back).into_response(),
        );
    }
    let cap: u64 = form
        .get("n")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| UiError::bad_request("`n` (the confirmed count) is missing"))?;
    let done = if scope == "selected" {
        run(&state, op, ids).await?
    } else {
        run_matching(&state, &search, op, cap).await?
    };
    let sep = if back.contains('?') { '&' } else { '?' };
    Ok(Redirect::to(&format!("{back}{sep}notice={}&n={done}", op.notice())).into_response())
}

#[allow(clippy::too_many_arguments)]
fn confirm(
    viewer: &Viewer,
    op: Op,
    scope: &str,
    filter: &Filter,
    ids: &[TaskId],
    selected: Option<usize>,
    n: u64,
    back: &str,
) -> Html<String> {
    let verb = match op {
        Op::Retry => "Retry",
        Op::Cancel => "Cancel",
        Op::Delete => "Delete",
    };
    let applies = op
        .applies_to()
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let body = html! {
        h1 { (verb) " " (n) " tasks?" }
        p class="warning" role="alert" id="confirm-count" data-touches=(n) {
            "This touches " strong { (n) } " tasks: "
            @match selected {
                Some(s) => { "the " (applies) " ones among the " (s) " selected." }
                None => { "the " (applies) " ones matching " em { (filter.describe()) } "." }
            }
            @if op == Op::Delete { " Deleted records cannot be brought back." }
        }
        @if n == 0 {
            p { a href=(back) { "Back" } }
        } @else {
            div class="actions" {
                form method="post" action="/ui/tasks/bulk" class="inline" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    input type="hidden" name="op" value=(format!("{}:{scope}", op.as_str()));
                    input type="hidden" name="confirm" value="yes";
                    input type="hidden" name="n" value=(n);
                    input type="hidden" name="return" value=(back);
                    (filter.hidden())
                    @for id in ids { input type="hidden" name="ids" value=(id.to_string()); }
                    button type="submit" id="confirm" class=(if op == Op::Delete { "danger" } else { "primary" }) {
                        (verb) " " (n) " tasks"
                    }
                }
                a href=(back) { "Cancel" }
            }
        }
    };
    layout::page(viewer, Nav::Tasks, "Confirm", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_round_trip_through_the_url() {
        let f = Filter {
            queue: "emails".into(),
            status: "dead".into(),
            kind: "send mail".into(),
            text: "a&b=c".into(),
            oldest: true,
            ..Filter::default()
        };
        let q = f.query();
        let pairs = pairs_of(&q);
        let back =
            Filter::from_lookup(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()));
        assert_eq!(back.query(), q);
        assert_eq!(back.text, "a&b=c");
        assert!(back.oldest);
    }

    #[test]
    fn bad_filter_values_are_refused() {
        for f in [
            Filter {
                status: "finished".into(),
                ..Filter::default()
            },
            Filter {
                queue: "bad queue".into(),
                ..Filter::default()
            },
            Filter {
                from: "yesterday".into(),
                ..Filter::default()
            },
        ] {
            let e = f.search().err().map(|e| e.status);
            assert_eq!(e, Some(StatusCode::BAD_REQUEST), "{f:?}");
        }
        let ok = Filter {
            from: "2026-12-01T06:30".into(),
            ..Filter::default()
        };
        assert!(ok.search().is_ok());
    }
}
