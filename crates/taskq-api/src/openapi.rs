//! The api's OpenAPI 3.1 document, generated from the code and served at
//! `GET /openapi.json` (no token needed).
//!
//! Each handler's `#[utoipa::path]` beside it lists the statuses it answers itself; what
//! its route group's guards answer (a token's 401 and 403, a store's 503) and the request
//! timeout's 503 are added to every operation they apply to when the document is rendered,
//! and so are the body reader's 413 and 415 (to each operation with a request body), the
//! query reader's 400 (to each operation with query parameters) and each operation's
//! tag, the resource its path names ([`tag`]).
//! Each route is registered together with its operation ([`crate::routes`], utoipa-axum's
//! `routes!`), so the document lists exactly what is served; the wire types derive
//! `ToSchema` where they are defined (taskq-core, taskq-redis, here). The tests below
//! check that every `$ref` resolves and that request bodies reject unknown fields as the
//! handlers do. `scripts/schemathesis.sh` checks a live api against
//! it.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Paths, RefOr};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::AppState;
use crate::error::{
    AdminAuthErrors, ApiError, AuthErrors, JsonBodyErrors, QueryErrors, RecordsUnavailable,
    StoresUnavailable, TimedOut,
};
use utoipa_axum::router::OpenApiRouter;

/// The document's frame (info, tags, security); the operations come from the routes
/// themselves ([`crate::routes`]).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "taskq",
        description = "taskq's HTTP api: submit tasks, query them, and operate queues. \
            Every error is `{\"error\": {\"code\", \"message\"}}` with a stable `code`. \
            `/v1` calls need `Authorization: Bearer <token>`: a `submit` token may create \
            and read tasks, an `admin` token may do everything."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "tasks", description = "Submit, read, retry and cancel tasks."),
        (name = "flows", description = "Submit tasks that depend on each other (a DAG), read, cancel and retry them as one flow."),
        (name = "queues", description = "Queue state, pausing, limits and dead letters (admin)."),
        (name = "admin", description = "Operations on the whole system (admin)."),
        (name = "observability", description = "Probes, metrics and this document; no token needed."),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme the `/v1` operations name.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from TASKQ_TOKENS or TASKQ_TOKENS_FILE, of role `read` (every GET), `submit` (create and read tasks) or `admin` (everything).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, rendered once.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(render);

fn render() -> Result<Bytes, String> {
    let crate::Routes {
        submits,
        reads,
        admin,
        open,
    } = crate::routes();
    let mut openapi = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(guarded::<AuthErrors, StoresUnavailable>(submits))
        .merge(guarded::<AuthErrors, RecordsUnavailable>(reads))
        .merge(guarded::<AdminAuthErrors, StoresUnavailable>(admin))
        .merge(open)
        .into_openapi();
    // The request timeout answers every route (see [`crate::app`]); the store guards' 503s
    // above say so too.
    operations(&mut openapi.paths).for_each(add_missing::<TimedOut>);
    // Every JSON body is read by [`crate::extract::JsonBody`], which answers 413 and 415;
    // an operation that says more of its 413 keeps its own.
    operations(&mut openapi.paths)
        .filter(|op| op.request_body.is_some())
        .for_each(add_missing::<JsonBodyErrors>);
    // Every query is read by [`crate::extract::QueryParams`], which answers 400
    // `invalid_query`: said alone, or after the operation's own 400s.
    operations(&mut openapi.paths)
        .filter(|op| {
            op.parameters
                .iter()
                .flatten()
                .any(|p| p.parameter_in == ParameterIn::Query)
        })
        .for_each(add_or_append::<QueryErrors>);
    for (path, item) in &mut openapi.paths.paths {
        let tag = tag(path);
        for op in operations_of(item) {
            op.tags = Some(vec![tag.to_owned()]);
        }
    }
    let mut doc = serde_json::to_value(openapi).map_err(|e| e.to_string())?;
    add_cross_field_rules(&mut doc);
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// Documents the guards of a route group on each of its operations (see [`crate::app`]):
/// the `bearer` security requirement and the token guard's answers `E`, and the store
/// guard's 503 `U` where the operation does not say more about its own 503 (what it kept,
/// whether calling again is safe). So no handler restates them and none can be left out.
fn guarded<E: IntoResponses, U: IntoResponses>(
    mut group: OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    let answers = E::responses();
    for op in operations(&mut group.get_openapi_mut().paths) {
        op.security = Some(vec![SecurityRequirement::new::<_, _, String>("bearer", [])]);
        op.responses.responses.extend(answers.clone());
        add_missing::<U>(op);
    }
    group
}

/// Adds the answers `A` to `op`, each unless `op` documents that status itself.
fn add_missing<A: IntoResponses>(op: &mut Operation) {
    for (status, answer) in A::responses() {
        op.responses.responses.entry(status).or_insert(answer);
    }
}

/// Adds the answers `A` to `op`; where `op` documents a status itself and does not name
/// `A`'s error code there, `A`'s description is appended to its own.
fn add_or_append<A: IntoResponses>(op: &mut Operation) {
    for (status, answer) in A::responses() {
        let Some(own) = op.responses.responses.get_mut(&status) else {
            op.responses.responses.insert(status, answer);
            continue;
        };
        let (RefOr::T(own), RefOr::T(answer)) = (own, answer) else {
            continue;
        };
        let code = answer.description.split('`').nth(1).unwrap_or_default();
        if !own.description.contains(code) {
            own.description = format!("{} Or: {}", own.description, answer.description);
        }
    }
}

/// Every operation of `paths`.
fn operations(paths: &mut Paths) -> impl Iterator<Item = &mut Operation> {
    paths.paths.values_mut().flat_map(operations_of)
}

/// Every operation of one path.
fn operations_of(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// An operation's tag (one of [`ApiDoc`]'s): the resource its path names
/// (`/v1/{tasks,flows,queues,admin}/...`); the paths outside `/v1` (probes, metrics, this
/// document) are `observability`. So the document groups operations as the paths do and
/// no handler states its group.
fn tag(path: &str) -> &str {
    match path.strip_prefix("/v1/") {
        Some(rest) => rest.split('/').next().unwrap_or(rest),
        None => "observability",
    }
}

/// Rules between two fields, which `#[schema]` attributes cannot state, added as
/// `anyOf` to the schemas they constrain. Each mirrors a check in the code named beside it.
/// (Some rules have no JSON Schema form at all and are only described: `run_at` at most
/// 366 days ahead, `backoff.initial_ms` ≤ `backoff.max_ms` after defaults.)
fn add_cross_field_rules(doc: &mut Value) {
    let null_or_absent = |field: &str| json!({"properties": {field: {"type": "null"}}});
    let rules = [
        // taskq_core::Limits::admit: "give either `run_at` or `delay_ms`, not both".
        (
            "NewTask",
            json!([null_or_absent("run_at"), null_or_absent("delay_ms")]),
        ),
        // queues::set_limits: "`burst` needs `max_dispatches_per_second`", and the same
        // of the per-key pair.
        (
            "QueueLimits",
            json!([
                null_or_absent("burst"),
                {
                    "required": ["max_dispatches_per_second"],
                    "properties": {"max_dispatches_per_second": {"type": "number"}}
                }
            ]),
        ),
        (
            "QueueLimits",
            json!([
                null_or_absent("burst_per_key"),
                {
                    "required": ["max_dispatches_per_second_per_key"],
                    "properties": {"max_dispatches_per_second_per_key": {"type": "number"}}
                }
            ]),
        ),
    ];
    for (schema, any_of) in rules {
        if let Some(Value::Object(s)) = doc.pointer_mut(&format!("/components/schemas/{schema}")) {
            // A second rule on one schema: every rule under `allOf`.
            match s.remove("anyOf") {
                None if !s.contains_key("allOf") => {
                    s.insert("anyOf".to_owned(), any_of);
                }
                first => {
                    let all = s.entry("allOf").or_insert_with(|| json!([]));
                    if let Value::Array(all) = all {
                        all.extend(first.map(|f| json!({ "anyOf": f })));
                        all.push(json!({ "anyOf": any_of }));
                    }
                }
            }
        }
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1).", body = Object, content_type = "application/json")),
)]
pub async fn document() -> Response {
    match &*DOCUMENT {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc() -> Value {
        let json = match &*DOCUMENT {
            Ok(j) => j.clone(),
            Err(e) => panic!("rendering the document: {e}"),
        };
        serde_json::from_slice(&json).unwrap_or_else(|e| panic!("the document is not JSON: {e}"))
    }

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    #[test]
    fn the_document_parses() {
        // TASKQ_OPENAPI_DUMP=FILE writes the document out, e.g. for a client generator.
        if let Ok(path) = std::env::var("TASKQ_OPENAPI_DUMP") {
            std::fs::write(&path, DOCUMENT.clone().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        let v = doc();
        assert_eq!(v["openapi"], "3.1.0");
        assert_eq!(v["info"]["title"], "taskq");
        assert!(v["info"]["version"].is_string());
        let paths = v["paths"].as_object().map(|p| p.len()).unwrap_or(0);
        assert!(paths >= 15, "{paths} paths");
        // Every operation has a unique id, one of the declared tags, and JSON bodies for
        // its JSON answers.
        let tags: BTreeSet<&str> = v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str())
            .collect();
        let mut ids = BTreeSet::new();
        for (path, item) in v["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let id = op["operationId"].as_str().unwrap_or_default().to_owned();
                assert!(
                    ids.insert(id),
                    "{method} {path}: duplicate or missing operationId"
                );
                let tag = op["tags"].as_array().map(Vec::as_slice);
                assert!(
                    matches!(tag, Some([t]) if t.as_str().is_some_and(|t| tags.contains(t))),
                    "{method} {path}: tags {tag:?}, want one of {tags:?}"
                );
                let responses = op["responses"].as_object();
                assert!(responses.is_some_and(|r| !r.is_empty()), "{method} {path}");
            }
        }
    }

    /// The api's surface: a route added or removed shows here (the document itself
    /// comes from the router, see [`crate::routes`]).
    #[test]
    fn the_document_lists_every_served_operation() {
        let v = doc();
        let mut documented = BTreeSet::new();
        for (path, item) in v["paths"].as_object().into_iter().flatten() {
            for m in METHODS {
                if item.get(m).is_some() {
                    documented.insert(format!("{} {path}", m.to_uppercase()));
                }
            }
        }
        let want: BTreeSet<String> = [
            "POST /v1/tasks",
            "GET /v1/tasks",
            "POST /v1/tasks/batch",
            "GET /v1/tasks/{id}",
            "DELETE /v1/tasks/{id}",
            "POST /v1/tasks/{id}/retry",
            "POST /v1/tasks/{id}/cancel",
            "POST /v1/flows",
            "GET /v1/flows/{id}",
            "POST /v1/flows/{id}/cancel",
            "POST /v1/flows/{id}/retry",
            "GET /v1/queues",
            "GET /v1/queues/{name}",
            "POST /v1/queues/{name}/pause",
            "POST /v1/queues/{name}/resume",
            "PUT /v1/queues/{name}/limits",
            "POST /v1/queues/{name}/retry-dead",
            "POST /v1/queues/{name}/purge-dead",
            "POST /v1/admin/recover",
            "GET /livez",
            "GET /readyz",
            "GET /metrics",
            "GET /openapi.json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(documented, want);
    }

    #[test]
    fn v1_operations_need_a_token_and_document_their_errors() {
        let v = doc();
        for (path, item) in v["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let responses = &op["responses"];
                assert!(responses.get("503").is_some(), "{method} {path}: no 503");
                if path.starts_with("/v1/") {
                    assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
                    assert!(responses.get("401").is_some(), "{method} {path}: no 401");
                    let admin = !matches!(
                        (method.as_str(), path.as_str()),
                        ("post", "/v1/tasks" | "/v1/tasks/batch" | "/v1/flows")
                            | ("get", "/v1/tasks" | "/v1/tasks/{id}" | "/v1/flows/{id}")
                    );
                    assert_eq!(
                        responses.get("403").is_some(),
                        admin,
                        "{method} {path}: 403 iff admin-only"
                    );
                } else {
                    assert!(op.get("security").is_none(), "{method} {path}");
                }
                if op.get("requestBody").is_some() {
                    for code in ["400", "413", "415"] {
                        assert!(responses.get(code).is_some(), "{method} {path}: no {code}");
                    }
                }
                let query = op["parameters"].as_array().into_iter().flatten();
                if query.into_iter().any(|p| p["in"] == "query") {
                    let bad = responses["400"]["description"].as_str().unwrap_or_default();
                    assert!(
                        bad.contains("`invalid_query`"),
                        "{method} {path}: 400 {bad:?}"
                    );
                }
            }
        }
        assert!(v["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    }

    #[test]
    fn an_operations_own_answers_come_before_the_rules() {
        let v = doc();
        let get = &v["paths"]["/v1/tasks/{id}"]["get"]["responses"];
        let bad = get["400"]["description"].as_str().unwrap_or_default();
        assert!(
            bad.starts_with("`id` is not a task id (`invalid_id`).")
                && bad.contains("`invalid_query`"),
            "{bad:?}"
        );
        let retry = &v["paths"]["/v1/tasks/{id}/retry"]["post"]["responses"];
        let unavailable = retry["503"]["description"].as_str().unwrap_or_default();
        assert!(
            unavailable.contains("the task stays dead"),
            "{unavailable:?}"
        );
        let cancel = &v["paths"]["/v1/flows/{id}/cancel"]["post"]["responses"];
        let unavailable = cancel["503"]["description"].as_str().unwrap_or_default();
        assert!(unavailable.contains("stay cancelled"), "{unavailable:?}");
    }

    #[test]
    fn error_codes_are_listed() {
        let v = doc();
        let schemas = &v["components"]["schemas"];
        let listed: Vec<&str> = schemas["ErrorCode"]["enum"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let codes: Vec<&str> = crate::ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, codes, "{}", schemas["ErrorCode"]);
        assert_eq!(
            schemas["ErrorDetail"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }

    #[test]
    fn request_bodies_reject_unknown_fields() {
        let v = doc();
        let schemas = &v["components"]["schemas"];
        for name in ["NewTask", "BackoffOverride", "BatchRequest", "QueueLimits"] {
            assert_eq!(
                schemas[name]["additionalProperties"],
                Value::Bool(false),
                "{name}: {}",
                schemas[name]
            );
        }
        let required = &schemas["NewTask"]["required"];
        assert_eq!(required, &json!(["type"]));
    }

    #[test]
    fn cross_field_rules_are_in_the_document() {
        let v = doc();
        let schemas = &v["components"]["schemas"];
        assert_eq!(
            schemas["NewTask"]["anyOf"][1]["properties"]["delay_ms"]["type"],
            "null"
        );
        let limits = &schemas["QueueLimits"]["allOf"];
        assert_eq!(
            limits[0]["anyOf"][1]["required"],
            json!(["max_dispatches_per_second"])
        );
        assert_eq!(
            limits[1]["anyOf"][1]["required"],
            json!(["max_dispatches_per_second_per_key"])
        );
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(v: &Value, doc: &Value, bad: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let target = r
                            .strip_prefix('#')
                            .and_then(|p| doc.pointer(p))
                            .filter(|t| !t.is_null());
                        if target.is_none() {
                            bad.push(r.clone());
                        }
                    }
                    m.values().for_each(|c| walk(c, doc, bad));
                }
                Value::Array(a) => a.iter().for_each(|c| walk(c, doc, bad)),
                _ => {}
            }
        }
        let v = doc();
        let mut bad = Vec::new();
        walk(&v, &v, &mut bad);
        assert!(bad.is_empty(), "dangling refs: {bad:?}");
    }

    #[tokio::test]
    async fn serves_the_document_as_json() {
        let resp = document().await;
        assert_eq!(resp.status(), axum::http::StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}
