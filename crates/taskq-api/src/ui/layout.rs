//! The page shell, the static assets compiled into the binary, error pages and the
//! small formatting helpers every page shares.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use taskq_core::TaskStatus;

use super::session::Viewer;
use crate::error::ApiError;

const HTMX: &[u8] = include_bytes!("assets/htmx.min.js");
const UI_JS: &[u8] = include_bytes!("assets/ui.js");
const UI_CSS: &[u8] = include_bytes!("assets/ui.css");

/// htmx settings: no inline styles (the CSP forbids them), no eval, requests only to
/// this origin.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true,"historyCacheSize":0}"#;

/// `GET /ui/assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "ui.js" => (UI_JS, "text/javascript; charset=utf-8"),
        "ui.css" => (UI_CSS, "text/css; charset=utf-8"),
        _ => return UiError::new(StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            meta name="htmx-config" content=(HTMX_CONFIG);
            title { (title) " · taskq" }
            link rel="stylesheet" href="/ui/assets/ui.css";
            script src="/ui/assets/htmx.min.js" defer {}
            script src="/ui/assets/ui.js" defer {}
        }
    }
}

/// A page without navigation (sign-in, errors before sign-in).
pub fn bare(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body { (body) }
            }
        }
        .into_string(),
    )
}

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Tasks,
    Periodic,
    Workers,
}

/// A signed-in page: navigation (with access keys), the role, sign-out, `body`.
pub fn page(viewer: &Viewer, nav: Nav, title: &str, body: Markup) -> Html<String> {
    let link = |n: Nav, href: &str, key: &str, label: &str| {
        html! {
            a href=(href) accesskey=(key) aria-current=[(n == nav).then_some("page")]
                title=(format!("{label} (access key {key})")) { (label) }
        }
    };
    let role = match viewer.role {
        crate::auth::Role::Read => "read",
        crate::auth::Role::Submit => "submit",
        crate::auth::Role::Admin => "admin",
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header class="top" {
                        a class="brand" href="/ui" { "taskq" }
                        nav {
                            @if viewer.sees_queues() { (link(Nav::Overview, "/ui", "o", "Overview")) }
                            (link(Nav::Tasks, "/ui/tasks", "t", "Tasks"))
                            @if viewer.sees_queues() {
                                (link(Nav::Periodic, "/ui/periodic", "p", "Periodic"))
                                (link(Nav::Workers, "/ui/workers", "w", "Workers"))
                            }
                        }
                        span class="who" {
                            "role: " strong { (role) }
                            @if viewer.mode == super::UiMode::ReadOnly { " · read-only dashboard" }
                        }
                        form method="post" action="/ui/logout" class="inline" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" class="link" { "Sign out" }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// An error answer as an HTML page.
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub message: String,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        Self::new(e.status, e.message)
    }
}

impl From<taskq_store::Error> for UiError {
    fn from(e: taskq_store::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<taskq_redis::BrokerError> for UiError {
    fn from(e: taskq_redis::BrokerError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let body = html! {
            main class="login" {
                h1 { (self.status.as_u16()) " " (title) }
                p class="error" role="alert" { (self.message) }
                p { a href="/ui" { "Back to the dashboard" } }
            }
        };
        (self.status, bare(&title, body)).into_response()
    }
}

/// A time as `2026-12-01 06:30:12` (UTC).
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// How long ago `t` was, briefly (`12s ago`, `3m ago`, `in 5m`).
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let text = match n {
        0..60 => format!("{n}s"),
        60..3600 => format!("{}m", n / 60),
        3600..86_400 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A `<time>` element showing the UTC time with the relative one as its title.
pub fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) title=(ago(t, now)) { (time(t)) } }
}

/// A page that lists things: its `heading`, then `empty` when there is nothing to list,
/// else the table `id` with one column per entry of `columns` and `rows` as its body.
pub fn listing(heading: &str, empty: &str, id: &str, columns: &[&str], rows: &[Markup]) -> Markup {
    html! {
        h1 { (heading) }
        @if rows.is_empty() {
            p class="muted" { (empty) }
        } @else {
            table id=(id) {
                thead { tr {
                    @for c in columns { th { (c) } }
                } }
                tbody {
                    @for r in rows { (r) }
                }
            }
        }
    }
}

/// A status badge.
pub fn status(s: TaskStatus) -> Markup {
    html! { span class=(format!("badge st-{}", s.as_str())) { (s.as_str()) } }
}
