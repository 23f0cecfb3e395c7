//! The actions on tasks (retry, cancel, delete): on one task from its page, on a
//! selection, or on everything a filter matches, the bulk ones after a confirmation
//! that states how many tasks they touch.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use taskq_core::{TaskId, TaskStatus};
use taskq_store::Search;

use super::Filter;
use crate::AppState;
use crate::ui::layout::{self, Nav, UiError};
use crate::ui::session::{SignedForm, Viewer};

/// Most tasks one bulk action on a selection takes.
const MAX_SELECTED: usize = 1000;
/// Tasks handled per round of a bulk action on everything a filter matches.
const BULK_ROUND: u32 = 500;

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
