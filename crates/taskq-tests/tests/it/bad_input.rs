//! Bad input gets a clear 4xx — `{"error": {"code", "message"}}` with a stable code — and
//! nothing is written: no record in MongoDB, no task in Redis. A backing service that is
//! down makes a submit fail with 503 `unavailable` and leaves nothing behind in the other.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use taskq_api::AppState;
use taskq_core::{Limits, TaskId};
use taskq_testkit::wait_until;

use crate::harness::{Env, assert_error, serve_api, store_via_proxy};

/// Asserts that the store holds no record and that none of `queues` holds a task.
async fn assert_nothing_written(env: &Env, what: &str, queues: &[&str]) {
    assert_eq!(env.total_records().await, 0, "{what}: records in MongoDB");
    for q in queues {
        assert_eq!(
            env.redis_total(q).await,
            0,
            "{what}: tasks in Redis queue {q}"
        );
    }
}

const JSON: Option<&str> = Some("application/json");

/// One bad submit: where it goes, its content type and body, and the expected answer.
struct Case {
    what: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
) -> Case {
    raw(what, path, JSON, &body.to_string(), status, code)
}

fn raw(
    what: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: &str,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        path,
        content_type,
        body: body.to_owned(),
        status,
        code,
    }
}

const SUBMIT: &str = "/v1/tasks";
const BATCH: &str = "/v1/tasks/batch";

fn bad_submits() -> Vec<Case> {
    vec![
        // Not JSON at all, or not the JSON we take.
        raw(
            "malformed JSON",
            SUBMIT,
            JSON,
            r#"{"type":"#,
            400,
            "invalid_json",
        ),
        raw("empty body", SUBMIT, JSON, "", 400, "invalid_json"),
        raw(
            "trailing garbage",
            SUBMIT,
            JSON,
            r#"{"type":"x"} x"#,
            400,
            "invalid_json",
        ),
        raw(
            "text/plain",
            SUBMIT,
            Some("text/plain"),
            r#"{"type":"x"}"#,
            415,
            "unsupported_media_type",
        ),
        raw(
            "form content type",
            SUBMIT,
            Some("application/x-www-form-urlencoded"),
            "type=x",
            415,
            "unsupported_media_type",
        ),
        // Well-formed JSON of the wrong shape.
        case("body is null", SUBMIT, json!(null), 400, "invalid_request"),
        case(
            "body is an array",
            SUBMIT,
            json!([{"type": "x"}]),
            400,
            "invalid_request",
        ),
        case(
            "type is a number",
            SUBMIT,
            json!({"type": 5}),
            400,
            "invalid_request",
        ),
        case(
            "max_attempts is a string",
            SUBMIT,
            json!({"type": "x", "max_attempts": "3"}),
            400,
            "invalid_request",
        ),
        case(
            "priority is a number",
            SUBMIT,
            json!({"type": "x", "payload": {"a": 1}, "priority": 1}),
            400,
            "invalid_request",
        ),
        case(
            "type missing",
            SUBMIT,
            json!({"payload": {"a": 1}}),
            400,
            "invalid_request",
        ),
        case(
            "unknown field",
            SUBMIT,
            json!({"type": "x", "priorty": "high"}),
            400,
            "invalid_request",
        ),
        case(
            "unknown priority",
            SUBMIT,
            json!({"type": "x", "priority": "urgent"}),
            400,
            "invalid_request",
        ),
        case(
            "delay_ms is a float",
            SUBMIT,
            json!({"type": "x", "delay_ms": 1e30}),
            400,
            "invalid_request",
        ),
        case(
            "timeout_ms beyond i64",
            SUBMIT,
            json!({"type": "x", "timeout_ms": u64::MAX}),
            400,
            "invalid_request",
        ),
        case(
            "run_at is prose",
            SUBMIT,
            json!({"type": "x", "run_at": "yesterday"}),
            400,
            "invalid_request",
        ),
        case(
            "run_at is no date",
            SUBMIT,
            json!({"type": "x", "run_at": "2026-13-45T00:00:00Z"}),
            400,
            "invalid_request",
        ),
        case(
            "backoff unknown field",
            SUBMIT,
            json!({"type": "x", "backoff": {"initial": 5}}),
            400,
            "invalid_request",
        ),
        // Right shape, value out of range.
        case(
            "empty type",
            SUBMIT,
            json!({"type": ""}),
            400,
            "invalid_field",
        ),
        case(
            "type with a space",
            SUBMIT,
            json!({"type": "send email"}),
            400,
            "invalid_field",
        ),
        case(
            "type too long",
            SUBMIT,
            json!({"type": "t".repeat(129)}),
            400,
            "invalid_field",
        ),
        case(
            "run_at too far ahead",
            SUBMIT,
            json!({"type": "x", "run_at": "3000-01-01T00:00:00Z"}),
            400,
            "invalid_field",
        ),
        case(
            "negative delay_ms",
            SUBMIT,
            json!({"type": "x", "delay_ms": -1}),
            400,
            "invalid_field",
        ),
        case(
            "absurd delay_ms",
            SUBMIT,
            json!({"type": "x", "delay_ms": i64::MAX}),
            400,
            "invalid_field",
        ),
        case(
            "run_at and delay_ms",
            SUBMIT,
            json!({"type": "x", "run_at": "2030-01-01T00:00:00Z", "delay_ms": 10}),
            400,
            "invalid_field",
        ),
        case(
            "negative timeout_ms",
            SUBMIT,
            json!({"type": "x", "timeout_ms": -5}),
            400,
            "invalid_field",
        ),
        case(
            "zero timeout_ms",
            SUBMIT,
            json!({"type": "x", "timeout_ms": 0}),
            400,
            "invalid_field",
        ),
        case(
            "absurd timeout_ms",
            SUBMIT,
            json!({"type": "x", "timeout_ms": i64::MAX}),
            400,
            "invalid_field",
        ),
        case(
            "max_attempts 0",
            SUBMIT,
            json!({"type": "x", "max_attempts": 0}),
            400,
            "invalid_field",
        ),
        case(
            "max_attempts -1",
            SUBMIT,
            json!({"type": "x", "max_attempts": -1}),
            400,
            "invalid_field",
        ),
        case(
            "max_attempts 1000",
            SUBMIT,
            json!({"type": "x", "max_attempts": 1000}),
            400,
            "invalid_field",
        ),
        case(
            "backoff multiplier 0.5",
            SUBMIT,
            json!({"type": "x", "backoff": {"multiplier": 0.5}}),
            400,
            "invalid_field",
        ),
        case(
            "backoff jitter 2",
            SUBMIT,
            json!({"type": "x", "backoff": {"jitter": 2}}),
            400,
            "invalid_field",
        ),
        case(
            "backoff initial over max",
            SUBMIT,
            json!({"type": "x", "backoff": {"initial_ms": 10, "max_ms": 5}}),
            400,
            "invalid_field",
        ),
        case(
            "queue with braces",
            SUBMIT,
            json!({"type": "x", "queue": "{orders}"}),
            400,
            "invalid_field",
        ),
        case(
            "queue with a space",
            SUBMIT,
            json!({"type": "x", "queue": "my queue"}),
            400,
            "invalid_field",
        ),
        case(
            "empty queue",
            SUBMIT,
            json!({"type": "x", "queue": ""}),
            400,
            "invalid_field",
        ),
        // A valid queue name with a bad field: that queue must stay empty too.
        case(
            "bad field on queue other",
            SUBMIT,
            json!({"type": "x", "queue": "other", "max_attempts": 0}),
            400,
            "invalid_field",
        ),
        // Batch envelopes.
        raw(
            "batch malformed JSON",
            BATCH,
            JSON,
            r#"{"tasks": ["#,
            400,
            "invalid_json",
        ),
        raw(
            "batch text/plain",
            BATCH,
            Some("text/plain"),
            r#"{"tasks": [{"type": "x"}]}"#,
            415,
            "unsupported_media_type",
        ),
        case(
            "batch empty",
            BATCH,
            json!({"tasks": []}),
            400,
            "invalid_request",
        ),
        case(
            "batch without tasks",
            BATCH,
            json!({}),
            400,
            "invalid_request",
        ),
        case(
            "batch tasks not a list",
            BATCH,
            json!({"tasks": {"type": "x"}}),
            400,
            "invalid_request",
        ),
        case(
            "batch unknown field",
            BATCH,
            json!({"tasks": [{"type": "x"}], "atomic": true}),
            400,
            "invalid_request",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_submits_get_a_4xx_and_write_nothing() {
    let env = Env::start().await;
    for c in bad_submits() {
        let got = env
            .post_raw(c.path, c.content_type, c.body.clone().into_bytes())
            .await;
        assert_error(c.what, (got.0, &got.1), c.status, c.code);
        assert_nothing_written(&env, c.what, &["default", "other"]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ids_routes_and_methods_get_a_json_4xx() {
    let env = Env::start().await;
    let id = TaskId::new();
    let upper = id.to_string().to_uppercase();
    let v4 = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let cases: Vec<(String, Method, String, u16, &str)> = vec![
        (
            "get garbage id".into(),
            Method::GET,
            "/v1/tasks/not-an-id".into(),
            400,
            "invalid_id",
        ),
        (
            "get uppercase id".into(),
            Method::GET,
            format!("/v1/tasks/{upper}"),
            400,
            "invalid_id",
        ),
        (
            "get v4 uuid".into(),
            Method::GET,
            format!("/v1/tasks/{v4}"),
            400,
            "invalid_id",
        ),
        (
            "get unhyphenated id".into(),
            Method::GET,
            format!("/v1/tasks/{}", id.to_string().replace('-', "")),
            400,
            "invalid_id",
        ),
        (
            "retry garbage id".into(),
            Method::POST,
            "/v1/tasks/xyz/retry".into(),
            400,
            "invalid_id",
        ),
        (
            "retry uppercase id".into(),
            Method::POST,
            format!("/v1/tasks/{upper}/retry"),
            400,
            "invalid_id",
        ),
        (
            "retry unknown id".into(),
            Method::POST,
            format!("/v1/tasks/{id}/retry"),
            404,
            "not_found",
        ),
        (
            "delete garbage id".into(),
            Method::DELETE,
            "/v1/tasks/not-an-id".into(),
            400,
            "invalid_id",
        ),
        (
            "get a path that is not UTF-8".into(),
            Method::GET,
            "/v1/tasks/%FF".into(),
            400,
            "invalid_path",
        ),
        (
            "get garbage flow id".into(),
            Method::GET,
            "/v1/flows/not-an-id".into(),
            400,
            "invalid_id",
        ),
        (
            "cancel unknown flow".into(),
            Method::POST,
            format!("/v1/flows/{id}/cancel"),
            404,
            "not_found",
        ),
        (
            "get invalid queue name".into(),
            Method::GET,
            "/v1/queues/no!such".into(),
            400,
            "invalid_queue",
        ),
        (
            "pause invalid queue name".into(),
            Method::POST,
            "/v1/queues/no!such/pause".into(),
            400,
            "invalid_queue",
        ),
        (
            "set limits of an invalid queue name".into(),
            Method::PUT,
            "/v1/queues/no!such/limits".into(),
            400,
            "invalid_queue",
        ),
        (
            "purge dead of an unknown queue".into(),
            Method::POST,
            "/v1/queues/never-used/purge-dead".into(),
            404,
            "not_found",
        ),
        (
            "unknown route".into(),
            Method::GET,
            "/v1/nope".into(),
            404,
            "not_found",
        ),
        (
            "unknown sub-route".into(),
            Method::GET,
            format!("/v1/tasks/{id}/nope"),
            404,
            "not_found",
        ),
        ("root".into(), Method::GET, "/".into(), 404, "not_found"),
        (
            "delete the collection".into(),
            Method::DELETE,
            "/v1/tasks".into(),
            405,
            "method_not_allowed",
        ),
        (
            "put a task".into(),
            Method::PUT,
            format!("/v1/tasks/{id}"),
            405,
            "method_not_allowed",
        ),
        (
            "get the batch route".into(),
            Method::GET,
            "/v1/tasks/batch".into(),
            405,
            "method_not_allowed",
        ),
    ];
    for (what, method, path, status, code) in cases {
        let got = env.request(method, &path, None, Vec::new()).await;
        assert_error(&what, (got.0, &got.1), status, code);
        assert_nothing_written(&env, &what, &["default"]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_over_the_limit_is_413_and_the_limit_itself_is_accepted() {
    let env = Env::start_with(|s| AppState {
        limits: Arc::new(Limits {
            max_payload_bytes: 100,
            ..Limits::default()
        }),
        ..s
    })
    .await;
    // A JSON string of n characters is n + 2 bytes.
    let over = json!({"type": "x", "payload": "a".repeat(99)});
    let (status, body) = env.post(SUBMIT, over.clone()).await;
    assert_error(
        "payload of 101 bytes",
        (status, &body),
        413,
        "payload_too_large",
    );
    assert_nothing_written(&env, "payload of 101 bytes", &["default"]).await;

    // Inside a batch the item is refused with the same code; the batch as a whole is 400.
    let (status, body) = env.post(BATCH, json!({"tasks": [over]})).await;
    assert_error(
        "batch of one big payload",
        (status, &body),
        400,
        "invalid_request",
    );
    assert_eq!(
        body["results"][0]["error"]["code"], "payload_too_large",
        "{body}"
    );
    assert_nothing_written(&env, "batch of one big payload", &["default"]).await;

    // Exactly at the limit is fine.
    let id = env
        .submit(json!({"type": "x", "payload": "a".repeat(98)}))
        .await;
    assert_eq!(env.record(id).await["payload"], "a".repeat(98));
    assert_eq!(env.total_records().await, 1);
    assert_eq!(env.redis_total("default").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_is_413() {
    let env = Env::start_with(|s| AppState {
        max_body_bytes: 1024,
        ..s
    })
    .await;
    let big = json!({"type": "x", "payload": "a".repeat(2000)}).to_string();
    let tasks: Vec<Value> = (0..50)
        .map(|i| json!({"type": "x", "payload": i}))
        .collect();
    let big_batch = json!({ "tasks": tasks }).to_string();
    assert!(big_batch.len() > 1024);
    for (what, path, body) in [
        ("submit body of 2 KB", SUBMIT, big),
        ("batch body over 1 KB", BATCH, big_batch),
    ] {
        let got = env.post_raw(path, JSON, body.into_bytes()).await;
        assert_error(what, (got.0, &got.1), 413, "payload_too_large");
        assert_nothing_written(&env, what, &["default"]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_over_the_limit_is_413() {
    let env = Env::start_with(|s| AppState { max_batch: 3, ..s }).await;
    let tasks: Vec<Value> = (0..4).map(|i| json!({"type": "x", "payload": i})).collect();
    let (status, body) = env.post(BATCH, json!({ "tasks": tasks })).await;
    assert_error(
        "batch of 4 with limit 3",
        (status, &body),
        413,
        "batch_too_large",
    );
    assert_nothing_written(&env, "batch of 4 with limit 3", &["default"]).await;

    // The limit itself is accepted.
    let tasks: Vec<Value> = (0..3).map(|i| json!({"type": "x", "payload": i})).collect();
    let (status, body) = env.post(BATCH, json!({ "tasks": tasks })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(env.total_records().await, 3);
    assert_eq!(env.redis_total("default").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_of_only_invalid_items_is_400_with_every_error_by_index() {
    let env = Env::start().await;
    let tasks = json!([
        {"type": ""},
        {"type": 5},
        {"type": "x", "queue": "other", "max_attempts": 0},
        {"type": "x", "priorty": "high"},
        {"type": "x", "queue": "{q}"},
        "not an object",
    ]);
    let expected = [
        "invalid_field",
        "invalid_request",
        "invalid_field",
        "invalid_request",
        "invalid_field",
        "invalid_request",
    ];
    let (status, body) = env.post(BATCH, json!({ "tasks": tasks })).await;
    assert_error("all-invalid batch", (status, &body), 400, "invalid_request");
    assert_eq!(body["accepted"], 0, "{body}");
    assert_eq!(body["rejected"], expected.len(), "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), expected.len(), "{body}");
    for (i, (r, code)) in results.iter().zip(expected).enumerate() {
        assert_eq!(r["index"], i, "{body}");
        assert!(r.get("id").is_none(), "item {i} has an id: {body}");
        assert_eq!(r["error"]["code"], code, "item {i}: {body}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "item {i}: {body}"
        );
    }
    assert_nothing_written(&env, "all-invalid batch", &["default", "other"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_batch_is_207_and_writes_only_the_valid_items() {
    let env = Env::start().await;
    let tasks = json!([
        {"type": "a", "payload": 0},
        {"type": "a", "max_attempts": 0},
        {"type": "b", "queue": "other", "payload": 2},
        {"type": "a", "priority": "urgent"},
        {"type": "c", "delay_ms": 60000},
        {"type": "a", "run_at": "yesterday"},
    ]);
    // index -> Some(status) when valid, None when invalid
    let expected: [(Option<&str>, Option<&str>); 6] = [
        (Some("queued"), None),
        (None, Some("invalid_field")),
        (Some("queued"), None),
        (None, Some("invalid_request")),
        (Some("scheduled"), None),
        (None, Some("invalid_request")),
    ];
    let (status, body) = env.post(BATCH, json!({ "tasks": tasks })).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");
    assert_eq!(body["rejected"], 3, "{body}");
    assert!(
        body.get("error").is_none(),
        "a partly accepted batch is no error: {body}"
    );
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), expected.len(), "{body}");
    let mut ids = Vec::new();
    for (i, (r, (ok, code))) in results.iter().zip(expected).enumerate() {
        assert_eq!(r["index"], i, "{body}");
        match (ok, code) {
            (Some(st), _) => {
                assert_eq!(r["status"], st, "item {i}: {body}");
                assert!(r.get("error").is_none(), "item {i}: {body}");
                let id: TaskId = r["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("item {i} has no id: {body}"));
                ids.push((i, id));
            }
            (None, Some(code)) => {
                assert!(r.get("id").is_none(), "item {i}: {body}");
                assert_eq!(r["error"]["code"], code, "item {i}: {body}");
            }
            (None, None) => unreachable!(),
        }
    }
    assert_eq!(env.total_records().await, 3);
    assert_eq!(env.redis_total("default").await, 2);
    assert_eq!(env.redis_total("other").await, 1);
    for (i, id) in ids {
        let rec = env.record(id).await;
        assert_eq!(rec["type"], tasks[i]["type"], "item {i}: {rec}");
    }
}

/// With Redis down, the api's circuit opens within a few probe rounds; from then on
/// every submit is refused at once, before anything is written. (A submit that reaches
/// Redis just before the circuit opens has its record undone or cancelled: see
/// `crash::a_record_whose_task_never_reached_redis_ends_cancelled`.)
#[tokio::test(flavor = "multi_thread")]
async fn redis_down_makes_submit_503_and_writes_nothing() {
    let mut env = Env::start().await;
    env.redis.stop();
    let open = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { env.get("/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    assert!(open, "the api stayed ready with Redis down");
    let (status, body) = env.post(SUBMIT, json!({"type": "x"})).await;
    assert_error(
        "submit with redis down",
        (status, &body),
        503,
        "unavailable",
    );
    assert_eq!(
        body["error"]["message"],
        "redis is unreachable; retry later"
    );
    let tasks = json!([{"type": "x"}, {"type": "y", "queue": "other"}]);
    let (status, body) = env.post(BATCH, json!({ "tasks": tasks })).await;
    assert_error("batch with redis down", (status, &body), 503, "unavailable");
    assert_eq!(
        env.total_records().await,
        0,
        "a refused submit wrote a record"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_down_makes_submit_503_and_leaves_nothing_in_redis() {
    // Redis and a direct store come from the Env; the api under test reaches the same
    // database through a proxy that we cut.
    let env = Env::start().await;
    let (proxy, store) = store_via_proxy(&env).await;
    store.ping().await.expect("mongodb through the proxy");
    let (api, stop) = serve_api(AppState::new(env.broker.clone(), store)).await;
    let post = |path: &'static str, body: Value| {
        let req = env.http.post(format!("{api}{path}")).json(&body);
        async move {
            let resp = tokio::time::timeout(Duration::from_secs(60), req.send())
                .await
                .expect("the api answers while mongodb is down")
                .expect("request");
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Through the proxy everything works.
    let (status, body) = post(SUBMIT, json!({"type": "x"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(env.total_records().await, 1);
    assert_eq!(env.redis_total("default").await, 1);

    proxy.cut();
    let (status, body) = post(SUBMIT, json!({"type": "x"})).await;
    assert_error(
        "submit with mongodb down",
        (status, &body),
        503,
        "unavailable",
    );
    let (status, body) = post(BATCH, json!({"tasks": [{"type": "x"}, {"type": "y"}]})).await;
    assert_error(
        "batch with mongodb down",
        (status, &body),
        503,
        "unavailable",
    );
    assert_eq!(
        env.redis_total("default").await,
        1,
        "only the task accepted before the cut"
    );
    assert_eq!(env.total_records().await, 1);

    // And it recovers when MongoDB is back.
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = post(SUBMIT, json!({"type": "x"})).await;
        if status == StatusCode::CREATED {
            break;
        }
        assert_error(
            "submit while mongodb comes back",
            (status, &body),
            503,
            "unavailable",
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the api did not recover: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A submit answered 503 while MongoDB came back may still have had its insert land
    // (a reply lost on a reconnecting pool, or a submit given up while its insert was on
    // the way, whose record is removed once the insert returns). Its task never reaches
    // Redis, and its record, if it stays, is still marked submit-pending, which the
    // workers' submit check cancels.
    wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async { env.total_records().await == 2 },
    )
    .await;
    assert_eq!(env.redis_total("default").await, 2);
    // No worker runs here, so every record is still marked; of them, exactly the two
    // accepted tasks are in Redis.
    let pending = env
        .store
        .pending_submits(taskq_core::now() + chrono::Duration::hours(1), 100)
        .await
        .expect("pending submits");
    assert_eq!(env.total_records().await, pending.len() as u64);
    let ids: Vec<_> = pending.iter().map(|p| p.id).collect();
    let (_, present) = env
        .broker
        .present(&"default".parse().expect("queue"), &ids)
        .await
        .expect("present");
    assert_eq!(present.iter().filter(|p| **p).count(), 2, "{pending:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_items_follow_the_rules_of_a_single_submit() {
    let env = Env::start().await;
    let dup = br#"{"type": "a", "type": "b"}"#;
    let (status, body) = env
        .post_raw(SUBMIT, Some("application/json"), dup.to_vec())
        .await;
    assert_error(
        "duplicate key, single",
        (status, &body),
        400,
        "invalid_request",
    );
    let batch = br#"{"tasks": [{"type": "a", "type": "b"}, {"type": "ok"}, [1],
        {"type": "x", "max_attempts": 1, "max_attempts": 2}]}"#;
    let (status, body) = env
        .post_raw(BATCH, Some("application/json"), batch.to_vec())
        .await;
    assert_eq!(status.as_u16(), 207, "{body}");
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 4, "{body}");
    for i in [0, 2, 3] {
        assert_eq!(
            results[i]["error"]["code"], "invalid_request",
            "item {i}: {body}"
        );
    }
    assert!(
        results[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("duplicate field")),
        "{body}"
    );
    assert!(results[1]["id"].is_string(), "{body}");
    assert_eq!(env.total_records().await, 1);
}
