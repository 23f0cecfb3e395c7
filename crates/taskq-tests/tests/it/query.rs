//! Task queries: `GET /v1/tasks/{id}` returns the full record; `GET /v1/tasks` lists
//! newest first, filters by status, type and queue, and pages with a cursor that stays
//! stable while new tasks arrive. No worker runs, so tasks stay queued or scheduled.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_core::TaskId;

use crate::harness::{Env, assert_error};

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

fn ids_of(page: &Value) -> Vec<TaskId> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no `tasks` in {page}"))
        .iter()
        .map(|t| {
            t["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no id in {t}"))
        })
        .collect()
}

/// `GET /v1/tasks?<query>`, asserting 200.
async fn list(env: &Env, query: &str) -> Value {
    let (status, v) = env.get(&format!("/v1/tasks?{query}")).await;
    assert_eq!(status, StatusCode::OK, "list ?{query}: {v}");
    v
}

/// Follows `next_cursor` from the first page to the last; returns the ids of every page.
async fn all_pages(env: &Env, query: &str, limit: u32) -> Vec<Vec<TaskId>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            None => format!("{query}&limit={limit}"),
            Some(c) => format!("{query}&limit={limit}&cursor={c}"),
        };
        let page = list(env, &q).await;
        let ids = ids_of(&page);
        assert!(ids.len() <= limit as usize, "page over the limit: {page}");
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(
                    ids.len(),
                    limit as usize,
                    "a page with a successor is full: {page}"
                );
                assert_eq!(c, ids[ids.len() - 1].to_string(), "{page}");
                cursor = Some(c.to_owned());
                pages.push(ids);
            }
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                pages.push(ids);
                return pages;
            }
        }
        assert!(pages.len() < 100, "pagination does not end");
    }
}

/// A submitted task and what it was submitted with.
#[derive(Clone, Debug)]
struct Sub {
    id: TaskId,
    queue: &'static str,
    kind: &'static str,
    status: &'static str,
}

/// Submits 8 tasks across queues `alpha`/`beta` and types `a`/`b`, some delayed.
/// Returned oldest first.
async fn populate(env: &Env) -> Vec<Sub> {
    let plan: [(&str, &str, bool); 8] = [
        ("alpha", "a", false),
        ("beta", "b", false),
        ("alpha", "b", true),
        ("alpha", "a", false),
        ("beta", "a", true),
        ("beta", "b", false),
        ("alpha", "b", true),
        ("alpha", "a", false),
    ];
    let mut subs = Vec::new();
    for (queue, kind, delayed) in plan {
        let mut body = json!({"type": kind, "queue": queue, "payload": {"n": subs.len()}});
        if delayed {
            body["delay_ms"] = json!(60_000);
        }
        let id = env.submit(body).await;
        subs.push(Sub {
            id,
            queue,
            kind,
            status: if delayed { "scheduled" } else { "queued" },
        });
    }
    subs
}

/// Which submitted tasks a filter should return.
type Keep = fn(&Sub) -> bool;

/// Ids of `subs` matching `keep`, newest first.
fn newest_first(subs: &[Sub], keep: impl Fn(&Sub) -> bool) -> Vec<TaskId> {
    subs.iter()
        .rev()
        .filter(|s| keep(s))
        .map(|s| s.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_returns_the_full_record() {
    let env = Env::start().await;
    let payload = json!({
        "to": "a@example.com",
        "n": [1, 2, 3.5, null],
        "nested": {"ok": true},
        // Keys MongoDB treats specially are plain data here.
        "$set": {"a.b": 18_446_744_073_709_551_615_u64},
    });
    let resp = env
        .http
        .post(format!("{}/v1/tasks", env.api))
        .json(&json!({
            "type": "email.send",
            "queue": "mail",
            "payload": payload,
            "priority": "high",
            "max_attempts": 7,
            "timeout_ms": 1234,
            "delay_ms": 60_000,
            "backoff": {"initial_ms": 100, "max_ms": 1000, "multiplier": 3.0, "jitter": 0.5},
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let created: Value = resp.json().await.expect("json");
    let id: TaskId = created["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    assert_eq!(location, Some(format!("/v1/tasks/{id}")));

    let rec = env.record(id).await;
    assert_eq!(rec["id"], id.to_string());
    assert_eq!(rec["status"], "scheduled");
    assert_eq!(rec["queue"], "mail");
    assert_eq!(rec["type"], "email.send");
    assert_eq!(rec["payload"], payload);
    assert_eq!(rec["priority"], "high");
    assert_eq!(rec["attempts"], 0);
    assert_eq!(rec["max_attempts"], 7);
    assert_eq!(rec["timeout_ms"], 1234);
    assert_eq!(rec["backoff"]["initial_ms"], 100, "{rec}");
    assert_eq!(rec["backoff"]["max_ms"], 1000, "{rec}");
    assert_eq!(rec["backoff"]["multiplier"], 3.0, "{rec}");
    assert_eq!(rec["backoff"]["jitter"], 0.5, "{rec}");
    for field in ["last_error", "result", "started_at", "finished_at"] {
        assert!(
            rec.get(field).is_some_and(Value::is_null),
            "`{field}` must be present and null: {rec}"
        );
    }
    let created_at = time(&rec["created_at"]);
    let scheduled_at = time(&rec["scheduled_at"]);
    assert_eq!(
        (scheduled_at - created_at).num_milliseconds(),
        60_000,
        "{rec}"
    );
    // The stored times are those the submit answered with (at most rounded to ms).
    assert!(
        (time(&created["created_at"]) - created_at)
            .num_milliseconds()
            .abs()
            <= 1
    );
    let events = rec["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{rec}");
    assert_eq!(events[0]["status"], "scheduled");
    assert_eq!(events[0]["attempt"], 0);
    assert_eq!(time(&events[0]["at"]), created_at);

    // The defaults of a minimal submit.
    let id = env.submit(json!({"type": "x"})).await;
    let rec = env.record(id).await;
    assert_eq!(rec["status"], "queued");
    assert_eq!(rec["queue"], "default");
    assert_eq!(rec["priority"], "normal");
    assert_eq!(rec["payload"], Value::Null);
    assert_eq!(rec["max_attempts"], 5);
    assert_eq!(rec["timeout_ms"], 600_000);
    assert_eq!(rec["created_at"], rec["scheduled_at"]);
    assert_eq!(rec["events"].as_array().map(Vec::len), Some(1), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_task_is_404() {
    let env = Env::start().await;
    env.submit(json!({"type": "x"})).await;
    let (status, body) = env.get(&format!("/v1/tasks/{}", TaskId::new())).await;
    assert_error("an unknown task", (status, &body), 404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_newest_first_and_filters() {
    let env = Env::start().await;
    let empty = list(&env, "").await;
    assert_eq!(empty, json!({"tasks": [], "next_cursor": null}));

    let subs = populate(&env).await;
    let all = list(&env, "").await;
    assert_eq!(ids_of(&all), newest_first(&subs, |_| true));
    assert!(all["next_cursor"].is_null(), "{all}");
    // Entries are full records.
    let first = &all["tasks"][0];
    let last = subs.last().expect("subs");
    assert_eq!(first["queue"], last.queue);
    assert_eq!(first["type"], last.kind);
    assert_eq!(first["status"], last.status);
    assert_eq!(first["payload"], json!({"n": 7}));
    assert!(first["events"].is_array(), "{first}");

    let cases: Vec<(&str, Keep)> = vec![
        ("status=queued", |s| s.status == "queued"),
        ("status=scheduled", |s| s.status == "scheduled"),
        ("status=running", |_| false),
        ("type=a", |s| s.kind == "a"),
        ("type=b", |s| s.kind == "b"),
        ("type=nope", |_| false),
        ("queue=alpha", |s| s.queue == "alpha"),
        ("queue=beta", |s| s.queue == "beta"),
        ("queue=gamma", |_| false),
        ("queue=alpha&status=scheduled", |s| {
            s.queue == "alpha" && s.status == "scheduled"
        }),
        ("queue=beta&type=a", |s| s.queue == "beta" && s.kind == "a"),
        ("queue=alpha&type=a&status=queued", |s| {
            s.queue == "alpha" && s.kind == "a" && s.status == "queued"
        }),
    ];
    for (query, keep) in cases {
        let page = list(&env, query).await;
        let expected = newest_first(&subs, keep);
        assert_eq!(ids_of(&page), expected, "?{query}: {page}");
        assert!(page["next_cursor"].is_null(), "?{query}: {page}");
        for t in page["tasks"].as_array().expect("tasks") {
            for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                assert_eq!(t[k], v, "?{query}: {t}");
            }
        }
    }

    // limit cuts the newest `limit` and points past them.
    let page = list(&env, "limit=3").await;
    let expected = newest_first(&subs, |_| true);
    assert_eq!(ids_of(&page), expected[..3]);
    assert_eq!(page["next_cursor"], expected[2].to_string());
    let page = list(&env, "limit=1000").await;
    assert_eq!(ids_of(&page), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn cursor_pagination_returns_every_task_once() {
    let env = Env::start().await;
    let subs = populate(&env).await;
    let expected = newest_first(&subs, |_| true);
    for limit in [1, 3, 4, 7, 8, 9] {
        let pages = all_pages(&env, "", limit).await;
        let expected_pages = expected.len().div_ceil(limit as usize).max(1);
        assert_eq!(pages.len(), expected_pages, "limit {limit}: {pages:?}");
        assert_eq!(pages.concat(), expected, "limit {limit}");
    }
    // With a filter, too.
    let alpha = newest_first(&subs, |s| s.queue == "alpha");
    let pages = all_pages(&env, "queue=alpha", 2).await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.concat(), alpha);
    let queued_b = newest_first(&subs, |s| s.kind == "b" && s.status == "queued");
    assert_eq!(
        all_pages(&env, "type=b&status=queued", 1).await.concat(),
        queued_b
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cursor_pagination_is_stable_while_tasks_arrive() {
    let env = Env::start().await;
    let subs = populate(&env).await;
    let expected = newest_first(&subs, |_| true);

    let mut seen = Vec::new();
    let mut added = Vec::new();
    let first = list(&env, "limit=3").await;
    seen.extend(ids_of(&first));
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        // New tasks arrive between page fetches, in the listed queue and another one.
        added.push(env.submit(json!({"type": "a", "queue": "alpha"})).await);
        added.push(
            env.submit(json!({"type": "b", "queue": "beta", "delay_ms": 60_000}))
                .await,
        );
        let page = list(&env, &format!("limit=3&cursor={c}")).await;
        seen.extend(ids_of(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        seen, expected,
        "no task skipped, repeated or added mid-listing"
    );
    assert!(seen.iter().all(|id| !added.contains(id)));

    // A fresh listing starts with the new ones.
    let mut now_expected: Vec<TaskId> = added.iter().rev().copied().collect();
    now_expected.extend(&expected);
    assert_eq!(all_pages(&env, "", 5).await.concat(), now_expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_list_queries_are_400_invalid_query() {
    let env = Env::start().await;
    env.submit(json!({"type": "x"})).await;
    let upper = TaskId::new().to_string().to_uppercase();
    let cases = [
        "status=done".to_owned(),
        "status=".to_owned(),
        "limit=0".to_owned(),
        "limit=1001".to_owned(),
        "limit=-1".to_owned(),
        "limit=abc".to_owned(),
        "limit=".to_owned(),
        "cursor=garbage".to_owned(),
        format!("cursor={upper}"),
        "queue=%7Bx%7D".to_owned(),
        "queue=a%20b".to_owned(),
        "queue=".to_owned(),
        "type=".to_owned(),
        format!("type={}", "t".repeat(129)),
        "foo=1".to_owned(),
        "status=queued&foo=1".to_owned(),
    ];
    for query in cases {
        let (status, body) = env.get(&format!("/v1/tasks?{query}")).await;
        assert_error(&format!("?{query}"), (status, &body), 400, "invalid_query");
    }
}
