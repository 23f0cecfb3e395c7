//! Bearer-token authentication with three roles.
//!
//! `read` may read everything (every `GET` of `/v1`, and every page of the dashboard)
//! and change nothing; `submit` may create and read tasks; `admin` may do everything. Tokens come from
//! `TASKQ_TOKENS` (`role:token,role:token`) and/or `TASKQ_TOKENS_FILE` (one `role:token`
//! per line, `#` comments; a Kubernetes Secret mounted as a file). Authentication is off
//! only when `TASKQ_AUTH=off` says so. Tokens are compared as SHA-256 digests in constant
//! time, against every configured token, so neither timing nor length gives one away.
//! Probes and `/metrics` need no token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read tasks and queues; change nothing.
    Read,
    /// Create and read tasks.
    Submit,
    /// Everything.
    Admin,
}

impl Role {
    /// Whether this role may make a request with `method` to a route group that needs
    /// `needs`: `admin` everything, `submit` the submit group, `read` every read-only
    /// request (`GET`, `HEAD`) of either group.
    pub fn permits(self, needs: Role, method: &axum::http::Method) -> bool {
        match self {
            Role::Admin => true,
            Role::Submit => needs <= Role::Submit,
            Role::Read => method == axum::http::Method::GET || method == axum::http::Method::HEAD,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (expected read, submit or admin)"
            )),
        }
    }
}

/// The configured tokens. `Debug` shows only how many there are.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<([u8; 32], Role)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.digests.len())
            .finish()
    }
}

/// Shortest accepted token: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses `role:token` entries separated by commas or newlines. Errors name the entry
    /// by position, never by its token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut digests = Vec::new();
        let entries = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let (role, token) = entry
                .split_once(':')
                .ok_or_else(|| format!("token entry {} is not `role:token`", i + 1))?;
            let role: Role = role.trim().parse()?;
            let token = token.trim();
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "token entry {} is shorter than {MIN_TOKEN_LEN} characters",
                    i + 1
                ));
            }
            digests.push((digest(token), role));
        }
        Ok(Self { digests })
    }

    /// Adds the tokens of `other`.
    pub fn extend(&mut self, other: Tokens) {
        self.digests.extend(other.digests);
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The role of `token`, comparing against every configured token in constant time.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let d = digest(token);
        let mut found = None;
        for (known, role) in &self.digests {
            if bool::from(known.ct_eq(&d)) {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

/// The authentication state a route group checks against.
#[derive(Clone, Debug)]
pub struct Guard {
    pub tokens: Option<Arc<Tokens>>,
    pub needs: Role,
}

/// Middleware: lets the request through when its bearer token has at least the role.
pub async fn require(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let Some(tokens) = &guard.tokens else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = presented else {
        return unauthorized("send `Authorization: Bearer <token>`");
    };
    match tokens.role_of(token) {
        None => unauthorized("the token is not valid"),
        Some(role) if role.permits(guard.needs, req.method()) => next.run(req).await,
        Some(Role::Read) => ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this token's role (read) may only read",
        )
        .into_response(),
        Some(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this token's role may not do this; an admin token is needed",
        )
        .into_response(),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn read_may_only_read_and_submit_may_not_administer() {
        for needs in [Role::Submit, Role::Admin] {
            assert!(Role::Read.permits(needs, &Method::GET));
            assert!(!Role::Read.permits(needs, &Method::POST));
            assert!(!Role::Read.permits(needs, &Method::PUT));
            assert!(Role::Admin.permits(needs, &Method::POST));
        }
        assert!(Role::Submit.permits(Role::Submit, &Method::POST));
        assert!(!Role::Submit.permits(Role::Admin, &Method::GET));
        assert!(!Role::Submit.permits(Role::Admin, &Method::POST));
    }

    #[test]
    fn parses_roles_and_rejects_bad_entries() {
        let t = Tokens::parse("submit:aaaaaaaaaaaaaaaa\n# comment\nadmin:bbbbbbbbbbbbbbbb")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.role_of("aaaaaaaaaaaaaaaa"), Some(Role::Submit));
        assert_eq!(t.role_of("bbbbbbbbbbbbbbbb"), Some(Role::Admin));
        assert_eq!(t.role_of("bbbbbbbbbbbbbbb"), None);
        assert_eq!(t.role_of(""), None);
        assert!(Tokens::parse("root:aaaaaaaaaaaaaaaa").is_err());
        let r = Tokens::parse("read:cccccccccccccccc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.role_of("cccccccccccccccc"), Some(Role::Read));
        assert!(Tokens::parse("admin:short").is_err());
        assert!(Tokens::parse("aaaaaaaaaaaaaaaa").is_err());
        // Errors never echo a token.
        let err = Tokens::parse("admin:tooshort-secret")
            .err()
            .unwrap_or_default();
        assert!(!err.contains("tooshort-secret"), "{err}");
    }
}
