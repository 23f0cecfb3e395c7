//! The overview (every queue with its counts, paused flag, limits and throughput; the
//! last hour as charts, refreshed by htmx every few seconds), the page of one queue, and
//! the queue actions: pause, resume, limits, purge dead.
//!
//! Live counts come from Redis (list and sorted-set sizes), waiting (flow tasks), dead,
//! succeeded and cancelled from MongoDB counts on the (queue, status, `_id`) index, throughput from
//! Redis counters ([`taskq_redis::history`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use taskq_core::{QueueName, TaskStatus};
use taskq_redis::history::MinuteStats;
use taskq_redis::{QueueCounts, QueueLimits};

use super::layout::{self, Nav, UiError};
use super::session::{SignedForm, Viewer, url_encode};
use crate::AppState;
use crate::extract::{JsonBody, PathParam};

/// Minutes the charts show.
const CHART_MINUTES: u32 = 60;
/// Counts of finished tasks (succeeded, cancelled, dead) stop at this and show as
/// `100000+`: counting costs one index entry per task.
const COUNT_CAP: u64 = 100_000;

/// A count capped at [`COUNT_CAP`]; `…` (class `counting`) while the first count is
/// under way.
fn capped(n: Option<u64>) -> Markup {
    match n {
        None => html! { span.counting title="counting" { "…" } },
        Some(n) if n >= COUNT_CAP => html! { (COUNT_CAP) "+" },
        Some(n) => html! { (n) },
    }
}

/// Seconds between two refreshes of the live part of the overview.
const REFRESH_SECONDS: u32 = 3;

/// How long a count of finished tasks is served before it is taken again: every open
/// overview polls every few seconds, and this keeps their MongoDB counts to one per
/// queue and status per period whatever the number of viewers.
const COUNT_TTL: Duration = Duration::from_secs(5);

/// One count of finished tasks: the last value taken (none before the first count
/// returned), when it was taken (none once an action made it stale), and whether a count
/// is under way.
#[derive(Debug, Default)]
struct Count {
    value: Option<u64>,
    taken: Option<Instant>,
    counting: bool,
}

/// The counts and the number of times they were made stale: a count that started before
/// an action and returns after it is kept as a value but not as fresh.
#[derive(Debug, Default)]
struct Counts {
    by_key: HashMap<(QueueName, TaskStatus), Count>,
    generation: u64,
}

/// Counts of finished tasks per queue and status, shared by every viewer.
///
/// A request never waits for MongoDB to count: it shows the last value taken and, when
/// that is older than [`COUNT_TTL`] (or there is none yet), starts one count in the
/// background, at most one per queue and status at a time. The overview answers in the
/// time its Redis reads take whatever the number of records, and a count that takes
/// longer than the cache lives (a scan on a server without indexes) still completes and
/// is shown by the next refresh instead of being started again by every request.
#[derive(Clone, Debug, Default)]
pub(crate) struct CountCache(Arc<Mutex<Counts>>);

impl CountCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last count of `key`, starting a new one when it is stale or missing.
    fn read(&self, state: &AppState, key: (QueueName, TaskStatus)) -> Option<u64> {
        let mut counts = self.lock();
        let generation = counts.generation;
        let entry = counts.by_key.entry(key.clone()).or_default();
        let stale = entry.taken.is_none_or(|at| at.elapsed() >= COUNT_TTL);
        if stale && !entry.counting {
            entry.counting = true;
            let (cache, store) = (self.clone(), state.store.clone());
            tokio::spawn(async move {
                let n = store.count_status(&key.0, key.1, COUNT_CAP).await;
                let mut counts = cache.lock();
                let current = counts.generation == generation;
                let entry = counts.by_key.entry(key).or_default();
                entry.counting = false;
                match n {
                    Ok(n) => {
                        entry.value = Some(n);
                        entry.taken = current.then(Instant::now);
                    }
                    Err(e) => tracing::debug!(error = %e, "counting finished tasks failed"),
                }
            });
        }
        entry.value
    }

    /// Marks every count stale (after an action changed some): the next view recounts.
    pub(crate) fn clear(&self) {
        let mut counts = self.lock();
        counts.generation += 1;
        for c in counts.by_key.values_mut() {
            c.taken = None;
        }
    }
}

/// One queue as the overview shows it.
struct QueueRow {
    name: QueueName,
    paused: bool,
    live: QueueCounts,
    /// Flow tasks waiting for their dependencies (a MongoDB count, like the finished).
    waiting: Option<u64>,
    dead: Option<u64>,
    succeeded: Option<u64>,
    cancelled: Option<u64>,
    processed_1m: u64,
    failed_1m: u64,
    limits: QueueLimits,
    history: Vec<MinuteStats>,
}

async fn queue_row(state: &AppState, name: QueueName, now_ms: i64) -> Result<QueueRow, UiError> {
    let b = &state.broker;
    let (live, paused, (processed_1m, failed_1m), limits, history) = tokio::try_join!(
        b.counts(&name),
        b.is_paused(&name),
        b.finished_last_minute(&name),
        b.limits(&name),
        b.throughput_history(&name, now_ms, CHART_MINUTES),
    )?;
    let count = |status| state.ui.counts.read(state, (name.clone(), status));
    let (waiting, dead, succeeded, cancelled) = (
        count(TaskStatus::Waiting),
        count(TaskStatus::Dead),
        count(TaskStatus::Succeeded),
        count(TaskStatus::Cancelled),
    );
    Ok(QueueRow {
        name,
        paused,
        live,
        waiting,
        dead,
        succeeded,
        cancelled,
        processed_1m,
        failed_1m,
        limits,
        history,
    })
}

async fn rows(state: &AppState) -> Result<Vec<QueueRow>, UiError> {
    let now_ms = taskq_core::now_ms();
    let names = state.broker.queues().await?;
    futures::future::try_join_all(names.into_iter().map(|n| queue_row(state, n, now_ms))).await
}

fn limits_text(l: &QueueLimits) -> String {
    // Each limit that is set, in the order of the form.
    let parts: Vec<String> = [
        l.max_dispatches_per_second.map(|r| format!("{r}/s")),
        l.burst.map(|b| format!("burst {b}")),
        l.max_concurrent.map(|c| format!("≤{c} running")),
        l.max_running_per_key
            .map(|c| format!("≤{c} running per key")),
        l.max_dispatches_per_second_per_key
            .map(|r| format!("{r}/s per key")),
        l.burst_per_key.map(|b| format!("burst {b} per key")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Points of a polyline for `values` in a `w`×`h` box (y grows downwards), scaled to
/// `max`.
fn points(values: &[u64], w: f64, h: f64, x0: f64, y0: f64, max: u64) -> String {
    let n = values.len().max(2) - 1;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = x0 + w * i as f64 / n as f64;
            let y = y0 + h - h * (*v as f64) / (max.max(1) as f64);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The throughput chart: succeeded and failed attempts per minute over the last hour.
fn chart(ok: &[u64], bad: &[u64]) -> Markup {
    let max = ok.iter().chain(bad).copied().max().unwrap_or(0).max(1);
    let (x0, y0, w, h) = (40.0, 10.0, 660.0, 130.0);
    let ok_pts = points(ok, w, h, x0, y0, max);
    let area = format!("{x0},{} {ok_pts} {},{}", y0 + h, x0 + w, y0 + h);
    html! {
        svg class="chart" viewBox="0 0 720 170" role="img"
            aria-label=(format!("attempts per minute over the last hour; peak {max}")) {
            line class="axis" x1=(x0) y1=(y0 + h) x2=(x0 + w) y2=(y0 + h) {}
            line class="axis" x1=(x0) y1=(y0) x2=(x0) y2=(y0 + h) {}
            text x="4" y=(y0 + 4.0) { (max) }
            text x="4" y=(y0 + h) { "0" }
            text x=(x0) y="165" { "-60 min" }
            text x=(x0 + w / 2.0 - 14.0) y="165" { "-30 min" }
            text x=(x0 + w - 20.0) y="165" { "now" }
            polygon class="okfill" points=(area) {}
            polyline class="ok" points=(ok_pts) {}
            polyline class="bad" points=(points(bad, w, h, x0, y0, max)) {}
        }
    }
}

fn sparkline(history: &[MinuteStats]) -> Markup {
    let ok: Vec<u64> = history.iter().map(|m| m.succeeded).collect();
    let bad: Vec<u64> = history.iter().map(|m| m.failed).collect();
    let max = ok.iter().chain(&bad).copied().max().unwrap_or(0).max(1);
    html! {
        svg class="spark" viewBox="0 0 120 24" role="img" aria-label="last hour" {
            polyline class="ok" points=(points(&ok, 118.0, 20.0, 1.0, 2.0, max)) {}
            polyline class="bad" points=(points(&bad, 118.0, 20.0, 1.0, 2.0, max)) {}
        }
    }
}

fn live_part(viewer: &Viewer, rows: &[QueueRow]) -> Markup {
    let minutes = rows.first().map_or(0, |r| r.history.len());
    let mut ok = vec![0u64; minutes];
    let mut bad = vec![0u64; minutes];
    for r in rows {
        for (i, m) in r.history.iter().enumerate().take(minutes) {
            ok[i] += m.succeeded;
            bad[i] += m.failed;
        }
    }
    html! {
        div id="live" hx-get="/ui/live" hx-trigger=(format!("every {REFRESH_SECONDS}s"))
            hx-swap="outerHTML" {
            @if rows.is_empty() {
                p class="muted" { "No queue has received a task yet." }
            } @else {
                table id="queues" {
                    thead { tr {
                        th { "Queue" } th { "State" }
                        th class="num" { "Waiting" }
                        th class="num" { "Queued" } th class="num" { "Scheduled" }
                        th class="num" { "Running" } th class="num" { "Retrying" }
                        th class="num" { "Dead" } th class="num" { "Succeeded" }
                        th class="num" { "Cancelled" }
                        th class="num" { "Processed/min" } th class="num" { "Failed/min" }
                        th { "Last hour" } th { "Limits" }
                        @if viewer.acts() { th { "Actions" } }
                    } }
                    tbody {
                        @for r in rows {
                            @let q = r.name.as_str();
                            @let list = |status: &str| format!("/ui/tasks?queue={}&status={status}", url_encode(q));
                            tr data-queue=(q) tabindex="0" data-href=(format!("/ui/queues/{}", url_encode(q))) {
                                td { a href=(format!("/ui/queues/{}", url_encode(q))) { (q) } }
                                td { @if r.paused { span class="paused" { "paused" } } @else { "active" } }
                                td class="num" { a href=(list("waiting")) { (capped(r.waiting)) } }
                                td class="num" { a href=(list("queued")) { (r.live.queued) } }
                                td class="num" { a href=(list("scheduled")) { (r.live.scheduled) } }
                                td class="num" data-count="running" { a href=(list("running")) { (r.live.running) } }
                                td class="num" { a href=(list("retrying")) { (r.live.retrying) } }
                                td class="num" data-count="dead" { a href=(list("dead")) { (capped(r.dead)) } }
                                td class="num" { a href=(list("succeeded")) { (capped(r.succeeded)) } }
                                td class="num" { a href=(list("cancelled")) { (capped(r.cancelled)) } }
                                td class="num" { (r.processed_1m) }
                                td class="num" { (r.failed_1m) }
                                td { (sparkline(&r.history)) }
                                td { (limits_text(&r.limits)) }
                                @if viewer.acts() {
                                    td { (pause_form(viewer, q, r.paused)) }
                                }
                            }
                        }
                    }
                }
                h2 { "Attempts per minute, last hour (all queues)" }
                div class="legend" { span class="k-ok" { "■ succeeded" } span class="k-bad" { "■ failed" } }
                (chart(&ok, &bad))
            }
        }
    }
}

fn pause_form(viewer: &Viewer, queue: &str, paused: bool) -> Markup {
    html! {
        form method="post" action=(format!("/ui/queues/{}/action", url_encode(queue))) class="inline" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            @if paused {
                button type="submit" name="op" value="resume" { "Resume" }
            } @else {
                button type="submit" name="op" value="pause" { "Pause" }
            }
        }
    }
}

/// `GET /ui`.
pub async fn page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, UiError> {
    if !viewer.sees_queues() {
        return Ok(Redirect::to("/ui/tasks").into_response());
    }
    let rows = rows(&state).await?;
    let body = html! {
        h1 { "Queues" }
        (live_part(&viewer, &rows))
        p class="kbd-help" {
            "Keys: Alt+O overview, Alt+T tasks, Alt+P periodic, Alt+W workers; j/k move between rows, Enter opens, / searches."
        }
    };
    Ok(layout::page(&viewer, Nav::Overview, "Overview", body).into_response())
}

/// `GET /ui/live`: the live part of the overview, for htmx to swap in.
pub async fn live(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, UiError> {
    viewer.require_queues()?;
    let rows = rows(&state).await?;
    Ok(Html(live_part(&viewer, &rows).into_string()))
}

fn parse_queue(name: &str) -> Result<QueueName, UiError> {
    name.parse()
        .map_err(|e: taskq_core::queue::InvalidQueueName| UiError::bad_request(e.to_string()))
}

/// The message of a `notice` query parameter set after an action (fixed texts only).
fn notice(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let n: u64 = get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
    Some(match get("notice")? {
        "paused" => "The queue is paused: workers take none of its tasks.".into(),
        "resumed" => "The queue is resumed.".into(),
        "limits" => "The limits are saved.".into(),
        "purged" => format!("Deleted {n} dead tasks."),
        _ => return None,
    })
}

/// `GET /ui/queues/{name}`.
pub async fn queue_page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, UiError> {
    viewer.require_queues()?;
    let name = parse_queue(&name)?;
    if !state.broker.queues().await?.contains(&name) {
        return Err(UiError::new(
            StatusCode::NOT_FOUND,
            format!("no queue {name}"),
        ));
    }
    let busiest = state
        .broker
        .busiest_keys(&name, crate::queues::BUSIEST_KEYS)
        .await?;
    let r = queue_row(&state, name, taskq_core::now_ms()).await?;
    let q = r.name.as_str().to_owned();
    let action = format!("/ui/queues/{}/action", url_encode(&q));
    let ok: Vec<u64> = r.history.iter().map(|m| m.succeeded).collect();
    let bad: Vec<u64> = r.history.iter().map(|m| m.failed).collect();
    let body = html! {
        h1 { "Queue " (q) @if r.paused { " " span class="paused" { "(paused)" } } }
        @if let Some(n) = notice(query.as_deref()) { p class="notice" role="status" { (n) } }
        div class="grid" {
            div class="card" {
                dl class="kv" {
                    dt { "waiting" } dd { (capped(r.waiting)) }
                    dt { "queued" } dd { (r.live.queued) }
                    dt { "scheduled" } dd { (r.live.scheduled) }
                    dt { "running" } dd data-count="running" { (r.live.running) }
                    dt { "retrying" } dd { (r.live.retrying) }
                    dt { "dead" } dd { a href=(format!("/ui/tasks?queue={}&status=dead", url_encode(&q))) { (capped(r.dead)) } }
                    dt { "succeeded" } dd { (capped(r.succeeded)) }
                    dt { "cancelled" } dd { (capped(r.cancelled)) }
                    dt { "processed / failed last minute" } dd { (r.processed_1m) " / " (r.failed_1m) }
                    dt { "limits" } dd { (limits_text(&r.limits)) }
                    dt { "active keys" } dd { (r.live.active_keys) }
                }
            }
            div class="card" {
                div class="legend" { span class="k-ok" { "■ succeeded" } span class="k-bad" { "■ failed" } }
                (chart(&ok, &bad))
            }
        }
        @if !busiest.is_empty() {
            h2 { "Busiest keys" }
            table {
                thead { tr { th { "key" } th { "tasks in Redis" } th { "running" } } }
                tbody {
                    @for k in &busiest {
                        tr {
                            td class="mono" { (k.key) }
                            td { (k.tasks) }
                            td { (k.running) }
                        }
                    }
                }
            }
        }
        @if viewer.acts() {
            h2 { "Actions" }
            div class="actions" {
                (pause_form(&viewer, &q, r.paused))
                form method="post" action=(action) class="inline" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button type="submit" name="op" value="purge-dead" class="danger" { "Purge dead…" }
                }
                a href=(format!("/ui/tasks?queue={}&status=dead", url_encode(&q))) { "Retry dead…" }
            }
            h2 { "Limits" }
            form method="post" action=(action) class="filters card" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="op" value="limits";
                (rate_input("dispatches per second", "rate", r.limits.max_dispatches_per_second))
                (count_input("burst", "burst", r.limits.burst))
                (count_input("max running", "max_concurrent", r.limits.max_concurrent))
                (count_input("max running per key", "max_running_per_key", r.limits.max_running_per_key))
                (rate_input("dispatches per second per key", "key_rate", r.limits.max_dispatches_per_second_per_key))
                (count_input("burst per key", "key_burst", r.limits.burst_per_key))
                button type="submit" class="primary" { "Save limits" }
                span class="muted" { "Empty fields clear a limit." }
            }
        }
    };
    Ok(layout::page(&viewer, Nav::Overview, &format!("Queue {q}"), body).into_response())
}

/// A limit's field of the queue form: a rate (any number from 0), empty when unset.
fn rate_input(label: &str, name: &str, value: Option<f64>) -> Markup {
    limit_input(label, name, "0", "any", value.map(|v| v.to_string()))
}

/// A limit's field of the queue form: a count (a whole number from 1), empty when unset.
fn count_input(label: &str, name: &str, value: Option<u32>) -> Markup {
    limit_input(label, name, "1", "1", value.map(|v| v.to_string()))
}

fn limit_input(label: &str, name: &str, min: &str, step: &str, value: Option<String>) -> Markup {
    html! {
        label { (label)
            input type="number" name=(name) min=(min) step=(step) value=(value.unwrap_or_default()); }
    }
}

fn parse_opt<T: std::str::FromStr>(form: &SignedForm, key: &str) -> Result<Option<T>, UiError> {
    form.non_empty(key)
        .map(|v| {
            v.parse()
                .map_err(|_| UiError::bad_request(format!("`{key}` is not a valid number")))
        })
        .transpose()
}

/// `POST /ui/queues/{name}/action`: `op` = `pause`, `resume`, `limits` or `purge-dead`
/// (which first answers with a confirmation naming how many tasks it deletes).
pub async fn queue_action(
    State(state): State<AppState>,
    Path(name): Path<String>,
    form: SignedForm,
) -> Result<Response, UiError> {
    form.viewer.require_act()?;
    let queue = parse_queue(&name)?;
    let back = |notice: &str| {
        Redirect::to(&format!(
            "/ui/queues/{}?notice={notice}",
            url_encode(queue.as_str())
        ))
        .into_response()
    };
    let known = || crate::queues::KnownQueue::check(&state, queue.clone());
    match form.get("op").unwrap_or_default() {
        "pause" => {
            let _ = crate::queues::pause(State(state.clone()), known().await?).await?;
            Ok(back("paused"))
        }
        "resume" => {
            let _ = crate::queues::resume(State(state.clone()), known().await?).await?;
            Ok(back("resumed"))
        }
        "limits" => {
            let limits = QueueLimits {
                max_dispatches_per_second: parse_opt(&form, "rate")?,
                burst: parse_opt(&form, "burst")?,
                max_concurrent: parse_opt(&form, "max_concurrent")?,
                max_running_per_key: parse_opt(&form, "max_running_per_key")?,
                max_dispatches_per_second_per_key: parse_opt(&form, "key_rate")?,
                burst_per_key: parse_opt(&form, "key_burst")?,
            };
            let _ = crate::queues::set_limits(
                State(state.clone()),
                PathParam(queue.clone()),
                JsonBody(limits),
            )
            .await?;
            Ok(back("limits"))
        }
        "purge-dead" => {
            if form.get("confirm") != Some("yes") {
                let n = state
                    .store
                    .count_status(&queue, TaskStatus::Dead, u64::MAX)
                    .await?;
                return Ok(confirm_purge(&form.viewer, &queue, n).into_response());
            }
            let purged = crate::queues::purge_dead(State(state.clone()), known().await?).await?;
            state.ui.counts.clear();
            Ok(back(&format!("purged&n={}", purged.0.purged)))
        }
        _ => Err(UiError::bad_request(
            "`op` must be pause, resume, limits or purge-dead",
        )),
    }
}

fn confirm_purge(viewer: &Viewer, queue: &QueueName, n: u64) -> Html<String> {
    let q = queue.as_str();
    let body = html! {
        h1 { "Purge dead tasks of " (q) "?" }
        p class="warning" role="alert" data-touches=(n) {
            "This deletes every dead task record of queue " code { (q) } " for good: "
            strong { (n) } " now (tasks that die meanwhile go too)."
        }
        div class="actions" {
            form method="post" action=(format!("/ui/queues/{}/action", url_encode(q))) class="inline" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="op" value="purge-dead";
                input type="hidden" name="confirm" value="yes";
                button type="submit" class="danger" { "Delete " (n) " tasks" }
            }
            a href=(format!("/ui/queues/{}", url_encode(q))) { "Cancel" }
        }
    };
    layout::page(viewer, Nav::Overview, "Confirm purge", body)
}
