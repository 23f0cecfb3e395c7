//! The periodic page: every schedule the api runs, with its next tick, its last tick
//! and the task that tick created (found by the tick's idempotency key, as the
//! scheduler submits it).

use std::str::FromStr;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use taskq_core::{QueueName, TaskRecord};

use super::layout::{self, Nav, UiError, status, when};
use super::session::Viewer;
use crate::AppState;

/// One schedule as the page shows it.
struct Row<'a> {
    name: &'a str,
    cron: &'a str,
    kind: &'a str,
    queue: QueueName,
    next: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    /// The task the last tick created.
    created: Option<TaskRecord>,
}

/// The last tick of `cron` at or before `now`.
fn last_tick(cron: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let s = cron::Schedule::from_str(cron).ok()?;
    s.after(&now).next_back()
}

/// `GET /ui/periodic`.
pub async fn page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, UiError> {
    viewer.require_queues()?;
    let now = Utc::now();
    let mut rows = Vec::new();
    for s in &state.ui.schedules {
        let task = s.task();
        let queue: QueueName = task
            .queue
            .as_deref()
            .unwrap_or("default")
            .parse()
            .unwrap_or_default();
        let last = last_tick(s.cron(), now);
        let created = match last {
            Some(tick) => state
                .store
                .find_by_idempotency_key(&queue, &s.tick_key(tick))
                .await?
                .map(|t| t.record),
            None => None,
        };
        rows.push(Row {
            name: s.name(),
            cron: s.cron(),
            kind: &task.kind,
            queue,
            next: s.next_after(now),
            last,
            created,
        });
    }
    let rows: Vec<Markup> = rows
        .iter()
        .map(|r| {
            html! {
                tr {
                    td { (r.name) }
                    td class="mono" { (r.cron) }
                    td { (r.kind) }
                    td { (r.queue.as_str()) }
                    td { @if let Some(n) = r.next { (when(n, now)) } @else { "never" } }
                    td { @if let Some(l) = r.last { (when(l, now)) } @else { "—" } }
                    td {
                        @match &r.created {
                            Some(t) => { a class="mono" href=(format!("/ui/tasks/{}", t.id)) { (t.id.to_string()) } " " (status(t.status)) }
                            None => { span class="muted" { "none (no api ran at that tick, or it was purged)" } }
                        }
                    }
                }
            }
        })
        .collect();
    let body = layout::listing(
        "Periodic schedules",
        "No schedule is configured (TASKQ_PERIODIC, TASKQ_PERIODIC_FILE).",
        "schedules",
        &[
            "Name",
            "Cron (UTC, seconds first)",
            "Type",
            "Queue",
            "Next run",
            "Last run",
            "Task it created",
        ],
        &rows,
    );
    Ok(layout::page(&viewer, Nav::Periodic, "Periodic", body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_tick_is_at_or_before_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T06:30:17Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        let Some(now) = now else { panic!("time") };
        let t = last_tick("0 */15 * * * *", now).map(|t| t.to_rfc3339());
        assert_eq!(t.as_deref(), Some("2026-12-01T06:30:00+00:00"));
    }
}
