//! The workers page: every worker registered in Redis (see `taskq_redis::workers`), with
//! its host, queues, slots in use, start time, running tasks and last heartbeat.
//! Registrations expire 15 s after a worker's last heartbeat, so dead workers vanish.

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::layout::{self, Nav, UiError, when};
use super::session::Viewer;
use crate::AppState;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `GET /ui/workers`.
pub async fn page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, UiError> {
    viewer.require_queues()?;
    let workers = state.broker.workers().await?;
    let now = Utc::now();
    let rows: Vec<Markup> = workers
        .iter()
        .map(|w| {
            let used = if w.slots == 0 {
                0.0
            } else {
                120.0 * f64::from(w.busy.min(w.slots)) / f64::from(w.slots)
            };
            html! {
                tr data-worker=(w.id) {
                    td class="mono" { (w.id) }
                    td { (w.host) }
                    td { (w.queues.join(", ")) }
                    td {
                        svg class="slots" viewBox="0 0 120 12" role="img" aria-label=(format!("{} of {} slots", w.busy, w.slots)) {
                            rect class="track" x="0" y="0" width="120" height="12" rx="3" {}
                            rect class="used" x="0" y="0" width=(format!("{used:.1}")) height="12" rx="3" {}
                        }
                        " " (w.busy) " / " (w.slots)
                    }
                    td { (when(at(w.started_ms), now)) }
                    td class="mono" {
                        @for t in &w.tasks { a href=(format!("/ui/tasks/{t}")) { (t) } br; }
                    }
                    td { (layout::ago(at(w.seen_ms), now)) }
                }
            }
        })
        .collect();
    let body = layout::listing(
        "Workers",
        "No live worker.",
        "workers",
        &[
            "ID",
            "Host / pod",
            "Queues",
            "Slots in use",
            "Started",
            "Current tasks",
            "Last heartbeat",
        ],
        &rows,
    );
    Ok(layout::page(&viewer, Nav::Workers, "Workers", body).into_response())
}
