//! The web dashboard at `/ui`: server-rendered HTML (maud) with a vendored htmx for the
//! live parts, served by the api itself.
//!
//! - Access ([`session`]): sign-in with an api token, kept in an HttpOnly, Secure,
//!   SameSite=Strict cookie; a CSRF token derived from it on every form that acts; the
//!   same roles as the api (`read` views everything, `submit` views tasks, `admin` acts);
//!   `TASKQ_UI=off|read-only|on`.
//! - Pages: [`overview`] (queues, counts, throughput charts), [`tasks`] (search, detail,
//!   actions), [`periodic`], [`workers`].
//! - Actions call the functions the api's handlers use (`transitions::retry`, the queue
//!   handlers, `transitions::cancel`), so the Redis/MongoDB write protocol stays in one place.
//! - Every answer carries a strict Content-Security-Policy: scripts and styles only from
//!   `/ui/assets` (compiled into the binary), nothing inline.

mod layout;
mod overview;
mod periodic;
mod session;
mod tasks;
mod workers;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};

use crate::AppState;
use crate::periodic::Schedule;

/// Whether the dashboard is served and whether it may act.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UiMode {
    /// No dashboard: `/ui` is not found.
    Off,
    /// Every page, no action for any token.
    ReadOnly,
    /// Every page; `admin` tokens may act.
    #[default]
    On,
}

/// The dashboard's settings (part of [`crate::ApiArgs`]).
#[derive(Clone, Debug, clap::Args)]
pub struct UiArgs {
    /// The web dashboard at `/ui`: `off`, `read-only` (no token may act through it) or
    /// `on` (admin tokens may act).
    #[arg(long = "ui", env = "TASKQ_UI", value_enum, default_value = "on")]
    pub mode: UiMode,
    /// Link of a trace in the trace UI, `{trace_id}` standing for the task's trace id,
    /// e.g. `https://jaeger.example.com/trace/{trace_id}`.
    #[arg(long = "ui-trace-url", env = "TASKQ_UI_TRACE_URL")]
    pub trace_url: Option<String>,
}

/// What the dashboard needs beyond [`AppState`].
#[derive(Clone, Debug, Default)]
pub struct UiConfig {
    pub mode: UiMode,
    pub trace_url: Option<String>,
    /// The periodic schedules the api runs, for the periodic page.
    pub schedules: Vec<Schedule>,
    /// Recent counts of finished tasks per queue and status, shared by every viewer.
    pub(crate) counts: overview::CountCache,
}

impl UiConfig {
    /// The settings of `args`, checked: says what to fix.
    pub fn new(args: &UiArgs, schedules: Vec<Schedule>) -> Result<Self, String> {
        if let Some(t) = &args.trace_url
            && !(t.starts_with("https://") || t.starts_with("http://"))
        {
            return Err("TASKQ_UI_TRACE_URL must be an http(s) URL".into());
        }
        Ok(Self {
            mode: args.mode,
            trace_url: args.trace_url.clone(),
            schedules,
            counts: overview::CountCache::default(),
        })
    }
}

/// The Content-Security-Policy of every dashboard answer: nothing inline, nothing from
/// elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes (empty when `TASKQ_UI=off`).
pub fn router(state: &AppState) -> Router<AppState> {
    if state.ui.mode == UiMode::Off {
        return Router::new();
    }
    let pages = Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(overview::page))
        .route("/ui/live", get(overview::live))
        .route("/ui/queues/{name}", get(overview::queue_page))
        .route("/ui/queues/{name}/action", post(overview::queue_action))
        .route("/ui/tasks", get(tasks::list))
        .route("/ui/tasks/bulk", post(tasks::bulk))
        .route("/ui/tasks/{id}", get(tasks::detail))
        .route("/ui/tasks/{id}/action", post(tasks::action))
        .route("/ui/periodic", get(periodic::page))
        .route("/ui/workers", get(workers::page))
        .route("/ui/logout", post(session::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::require,
        ));
    Router::new()
        .merge(pages)
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/assets/{file}", get(layout::asset))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Adds the dashboard's security headers to every answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}
