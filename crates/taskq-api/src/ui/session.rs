//! Sign-in, the session cookie, CSRF protection and who may do what in the dashboard.
//!
//! The session cookie `taskq_ui` holds the api token itself (base64url), HttpOnly,
//! Secure, SameSite=Strict, limited to `/ui`: every request is authenticated against
//! the configured tokens exactly as a bearer token would be, so revoking a token ends
//! its sessions and api replicas need no shared session state.
//!
//! Every form that changes something carries a CSRF token: SHA-256 of a fixed label and
//! the session's token. Only a page served to the session holds it (the cookie itself
//! is unreadable to scripts and never sent cross-site), and it reveals nothing of the
//! token. A POST is refused (403) when the field is missing or wrong, when `Origin`
//! names another origin, or when `Sec-Fetch-Site` says it came from another site.
//!
//! Roles mirror the api's: `read` views every page, `submit` views tasks (as
//! `GET /v1/tasks` allows it), `admin` views everything and acts, unless `TASKQ_UI` is
//! `read-only`. With `TASKQ_AUTH=off` a session is a random value and acts as `admin`.

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use maud::html;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::UiMode;
use super::layout::{self, UiError};
use crate::AppState;
use crate::auth::Role;

/// The session cookie's name.
pub const COOKIE: &str = "taskq_ui";
/// How long a session cookie lives in the browser.
const MAX_AGE_SECONDS: u64 = 12 * 3600;
/// Largest form body the dashboard reads.
const MAX_FORM_BYTES: usize = 1024 * 1024;

/// Who is looking, and what they may do (a request extension on every signed-in page).
#[derive(Clone, Debug)]
pub struct Viewer {
    pub role: Role,
    /// The CSRF token of this session.
    pub csrf: String,
    pub mode: UiMode,
}

impl Viewer {
    /// May view queues, workers and schedules (the api's admin reads).
    pub fn sees_queues(&self) -> bool {
        matches!(self.role, Role::Read | Role::Admin)
    }

    /// May act (retry, cancel, delete, pause, limits, purge).
    pub fn acts(&self) -> bool {
        self.role == Role::Admin && self.mode == UiMode::On
    }

    /// `Ok` when the viewer may act, else the 403 page.
    pub fn require_act(&self) -> Result<(), UiError> {
        if self.mode != UiMode::On {
            return Err(UiError::forbidden(
                "the dashboard is read-only (TASKQ_UI=read-only)",
            ));
        }
        if self.role != Role::Admin {
            return Err(UiError::forbidden(
                "this token's role may not act; an admin token is needed",
            ));
        }
        Ok(())
    }

    /// `Ok` when the viewer may see queue-wide pages, else the 403 page.
    pub fn require_queues(&self) -> Result<(), UiError> {
        if self.sees_queues() {
            Ok(())
        } else {
            Err(UiError::forbidden(
                "this token's role (submit) may view tasks only",
            ))
        }
    }
}

/// The CSRF token of a session whose cookie holds `secret`.
fn csrf_of(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"taskq-ui-csrf\0");
    h.update(secret.as_bytes());
    B64.encode(h.finalize())
}

/// The session secret in the request's cookie, if any.
fn session_secret(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, v)) = pair.trim().split_once('=')
                && name == COOKIE
                && let Ok(bytes) = B64.decode(v.trim())
                && let Ok(s) = String::from_utf8(bytes)
                && !s.is_empty()
            {
                return Some(s);
            }
        }
    }
    None
}

/// The viewer of a request, when its session is valid.
fn viewer(state: &AppState, headers: &HeaderMap) -> Option<Viewer> {
    let secret = session_secret(headers)?;
    let role = match &state.tokens {
        None => Role::Admin,
        Some(tokens) => tokens.role_of(&secret)?,
    };
    Some(Viewer {
        role,
        csrf: csrf_of(&secret),
        mode: state.ui.mode,
    })
}

/// Middleware of every signed-in page: a request without a valid session is sent to
/// the sign-in page (`GET`) or refused (403, anything else).
pub async fn require(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match viewer(&state, req.headers()) {
        Some(v) => {
            req.extensions_mut().insert(v);
            next.run(req).await
        }
        None if req.method() == Method::GET || req.method() == Method::HEAD => {
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/ui".into());
            let next_param = url_encode(&target);
            Redirect::to(&format!("/ui/login?next={next_param}")).into_response()
        }
        None => UiError::forbidden("sign in first").into_response(),
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `next` target that stays inside the dashboard.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

/// A form posted to the dashboard, its CSRF token and origin checked.
#[derive(Debug)]
pub struct SignedForm {
    pub viewer: Viewer,
    pairs: Vec<(String, String)>,
}

impl SignedForm {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key`, empty values counting as absent.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Whether a state-changing request comes from the dashboard's own origin, as far as
/// the browser says (`Sec-Fetch-Site`, `Origin`); requests that say nothing (non-browser
/// clients) rely on the CSRF token alone.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
        && site.as_bytes() != b"none"
    {
        return false;
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let bare = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        return bare == Some(host);
    }
    true
}

/// Reads an urlencoded body of at most [`MAX_FORM_BYTES`].
async fn form_pairs(req: Request) -> Result<Vec<(String, String)>, UiError> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|_| UiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"))?;
    Ok(form_urlencoded_parse(&bytes))
}

/// The `name=value` pairs of an `application/x-www-form-urlencoded` text (a form body
/// or a URL query), in order; bad escapes are kept as they are.
pub(super) fn form_urlencoded_parse(bytes: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| -> String {
        let s = s.replace('+', " ");
        let mut out = Vec::with_capacity(s.len());
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Some(hex) = b.get(i + 1..i + 3)
                && hex.iter().all(u8::is_ascii_hexdigit)
                && let Ok(v) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = String::from_utf8_lossy(bytes);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

impl FromRequest<AppState> for SignedForm {
    type Rejection = UiError;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(viewer) = req.extensions().get::<Viewer>().cloned() else {
            return Err(UiError::forbidden("sign in first"));
        };
        if !same_origin(req.headers()) {
            return Err(UiError::forbidden(
                "the form was not sent from this dashboard",
            ));
        }
        let pairs = form_pairs(req).await?;
        let form = SignedForm { viewer, pairs };
        let sent = form.get("csrf").unwrap_or_default();
        if !bool::from(sent.as_bytes().ct_eq(form.viewer.csrf.as_bytes())) {
            return Err(UiError::forbidden(
                "the form's CSRF token is missing or wrong; reload the page",
            ));
        }
        Ok(form)
    }
}

/// `GET /ui/login`.
pub async fn login_page(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let pairs = form_urlencoded_parse(query.unwrap_or_default().as_bytes());
    let next = pairs
        .iter()
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.as_str());
    login_form(&state, &safe_next(next), None, StatusCode::OK)
}

fn login_form(state: &AppState, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let auth_off = state.tokens.is_none();
    let body = html! {
        main class="login" {
            h1 { "taskq" }
            form method="post" action="/ui/login" class="card" {
                input type="hidden" name="next" value=(next);
                @if auth_off {
                    p { "Authentication is off (TASKQ_AUTH=off): anyone who reaches the api may use it." }
                } @else {
                    label for="token" { "API token" }
                    input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
                }
                @if let Some(e) = error {
                    p class="error" role="alert" { (e) }
                }
                button type="submit" { "Sign in" }
            }
        }
    };
    (status, layout::bare("Sign in", body)).into_response()
}

/// `POST /ui/login`: checks the token and sets the session cookie.
pub async fn login(State(state): State<AppState>, req: Request) -> Response {
    if !same_origin(req.headers()) {
        return UiError::forbidden("the form was not sent from this dashboard").into_response();
    }
    let pairs = match form_pairs(req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_owned())
    };
    let next = safe_next(get("next").as_deref());
    let secret = match &state.tokens {
        None => {
            let bytes: [u8; 32] = rand::random();
            B64.encode(bytes)
        }
        Some(tokens) => {
            let token = get("token").unwrap_or_default();
            if tokens.role_of(&token).is_none() {
                return login_form(
                    &state,
                    &next,
                    Some("That token is not valid."),
                    StatusCode::UNAUTHORIZED,
                );
            }
            token
        }
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; Max-Age={MAX_AGE_SECONDS}; HttpOnly; Secure; SameSite=Strict",
        B64.encode(secret.as_bytes())
    );
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /ui/logout`: clears the session cookie.
pub async fn logout(_form: SignedForm) -> Response {
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "taskq_ui=; Path=/ui; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_csrf_hides_the_token() {
        let p = form_urlencoded_parse(b"a=1&ids=x%2By&ids=z+w&bad=%zz&e");
        assert_eq!(p[1], ("ids".into(), "x+y".into()));
        assert_eq!(p[2], ("ids".into(), "z w".into()));
        assert_eq!(p[3], ("bad".into(), "%zz".into()));
        assert_eq!(p[4], ("e".into(), String::new()));
        let c = csrf_of("secret-token-0123456789");
        assert!(!c.contains("secret"));
        assert_ne!(c, csrf_of("secret-token-0123456788"));
    }

    #[test]
    fn next_stays_inside_the_dashboard() {
        assert_eq!(safe_next(Some("/ui/tasks?x=1")), "/ui/tasks?x=1");
        assert_eq!(safe_next(Some("https://evil.example")), "/ui");
        assert_eq!(safe_next(Some("//evil.example/ui")), "/ui");
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn cross_origin_posts_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("taskq.example"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://taskq.example"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }
}
