//! `GET /ui/tasks`: the search list of tasks, a page at a time, with its filters and
//! the selection form of the bulk actions.

use axum::extract::{Extension, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;
use taskq_core::{TaskId, TaskStatus};

use super::{FILTER_KEYS, Filter, pairs_of};
use crate::AppState;
use crate::ui::layout::{self, Nav, UiError, status, when};
use crate::ui::session::{Viewer, url_encode};

/// Tasks per page.
const PAGE: u32 = 50;

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
