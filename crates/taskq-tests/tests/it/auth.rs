//! Bearer tokens and roles on the api, and the request limits.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_api::{AppState, Tokens};

use crate::harness::Env;

const SUBMIT: &str = "submit-token-aaaaaaaaaaaaaaaa";
const ADMIN: &str = "admin-token-bbbbbbbbbbbbbbbbbb";

async fn call(
    env: &Env,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value, bool) {
    let url = format!("{}{path}", env.api);
    let mut req = match method {
        "GET" => env.http.get(url),
        "DELETE" => env.http.delete(url),
        _ => env.http.post(url).json(&json!({"type": "noop"})),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let challenge = resp.headers().contains_key("www-authenticate");
    (status, resp.json().await.unwrap_or(Value::Null), challenge)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles_guard_every_endpoint() {
    let tokens = Tokens::parse(&format!("submit:{SUBMIT},admin:{ADMIN}")).expect("tokens");
    let env = Env::start_with(|s| AppState {
        tokens: Some(Arc::new(tokens)),
        ..s
    })
    .await;
    // Without a token, or with a wrong one: 401 with a challenge, and nothing written.
    for token in [None, Some("nope-nope-nope-nope-nope"), Some("")] {
        let (status, body, challenge) = call(&env, "POST", "/v1/tasks", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(challenge);
    }
    assert_eq!(env.total_records().await, 0);
    // A submit token creates and reads tasks...
    let (status, body, _) = call(&env, "POST", "/v1/tasks", Some(SUBMIT)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    for path in [
        format!("/v1/tasks/{id}"),
        format!("/v1/tasks/{id}?wait=100ms"),
        "/v1/tasks".to_owned(),
    ] {
        let (status, _, _) = call(&env, "GET", &path, Some(SUBMIT)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let (status, _, challenge) = call(&env, "GET", &path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(challenge);
    }
    // ...but may not operate the queues: 403.
    for (method, path) in [
        ("POST", format!("/v1/tasks/{id}/cancel")),
        ("POST", format!("/v1/tasks/{id}/retry")),
        ("DELETE", format!("/v1/tasks/{id}")),
        ("GET", "/v1/queues".to_owned()),
        ("POST", "/v1/queues/default/pause".to_owned()),
        ("POST", "/v1/queues/default/purge-dead".to_owned()),
        ("POST", "/v1/admin/recover".to_owned()),
    ] {
        let (status, body, _) = call(&env, method, &path, Some(SUBMIT)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
        let (status, _, _) = call(&env, method, &path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // An admin token may do everything.
    let (status, _, _) = call(&env, "GET", "/v1/queues", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) =
        call(&env, "POST", &format!("/v1/tasks/{id}/cancel"), Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body, _) = call(&env, "DELETE", &format!("/v1/tasks/{id}"), Some(ADMIN)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _, _) = call(&env, "GET", &format!("/v1/tasks/{id}"), Some(SUBMIT)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the deleted task is gone for readers too"
    );
    let (status, _, _) = call(&env, "POST", "/v1/tasks", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::CREATED);
    // Probes and metrics need no token.
    for path in ["/livez", "/readyz", "/metrics"] {
        let resp = env
            .http
            .get(format!("{}{path}", env.api))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}
