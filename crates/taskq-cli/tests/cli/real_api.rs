//! The CLI against the real api (in-process, on a fresh `redis-server` and a fresh
//! database of the MongoDB server in `TASKQ_TEST_MONGODB_URI`), for the endpoints the
//! api has: submit, batch, get, list and retry.

use std::time::Duration;

use serde_json::{Value, json};
use taskq_api::AppState;
use taskq_core::{QueueSelection, TaskId};
use taskq_redis::{Broker, RedisConfig};
use taskq_store::Store;
use taskq_testkit::{RedisServer, mongo_uri, unique_db_name};
use taskq_worker::{HttpHandler, Registry, Settings, UrlAllowList, Worker, register_builtins};
use tokio_util::sync::CancellationToken;

use crate::support::{
    jsonl_file, path_str, submit_json, submit_line, taskq, taskq_line, taskq_out,
};

struct RealApi {
    url: String,
    broker: Broker,
    store: Store,
    server: tokio::task::JoinHandle<()>,
    _redis: RedisServer,
}

impl Drop for RealApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl RealApi {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let broker = Broker::connect(&RedisConfig::from_urls(&redis.url(), false))
            .await
            .expect("redis");
        let store = Store::connect(&mongo_uri(), &unique_db_name("cli"))
            .await
            .expect("mongodb");
        store.ensure_indexes().await.expect("indexes");
        let app = taskq_api::app(AppState::new(broker.clone(), store.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("api");
        });
        Self {
            url,
            broker,
            store,
            server,
            _redis: redis,
        }
    }

    /// Starts an in-process worker with the built-in handlers on the `default` queue.
    fn worker(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let mut settings = Settings::new(QueueSelection::new(
            "default".parse().expect("queues"),
            false,
        ));
        settings.promote_interval = Duration::from_millis(50);
        settings.reap_interval = Duration::from_millis(100);
        let mut registry = Registry::new();
        let http = HttpHandler::new(
            UrlAllowList::parse("http://127.0.0.1/").expect("allow"),
            Duration::from_secs(5),
        )
        .expect("http handler");
        register_builtins(&mut registry, http);
        let worker = Worker::new(settings, self.broker.clone(), self.store.clone(), registry);
        let stop = CancellationToken::new();
        let s = stop.clone();
        (stop, tokio::spawn(async move { worker.run(s).await }))
    }

    /// The record through `taskq get -o json`.
    async fn record(&self, id: &str) -> Value {
        taskq(&self.url, &["get", id, "-o", "json"]).await.json()
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_get_and_list_against_the_api() {
    let api = RealApi::start().await;
    let first = submit_line(
        &api.url,
        r#"noop --payload {"n":1} --queue cli --priority high --max-attempts 2 --timeout-ms 1500"#,
    )
    .await
    .json();
    assert_eq!(first["status"], "queued");
    assert_eq!(first["queue"], "cli");
    assert_eq!(first["priority"], "high");
    assert_eq!(first["payload"], json!({"n": 1}));
    assert_eq!(first["max_attempts"], 2);
    assert_eq!(first["timeout_ms"], 1500);
    let first_id = first["id"].as_str().expect("id").to_owned();

    let out = taskq_out(&api.url, "submit echo --queue cli --delay-ms 60000").await;
    assert!(
        out.starts_with("task ") && out.contains(" submitted\n"),
        "{out}"
    );
    assert!(out.contains("\nstatus           scheduled\n"), "{out}");
    let second_id = out
        .lines()
        .find_map(|l| l.strip_prefix("id "))
        .map(|s| s.trim().to_owned())
        .expect("id line");
    let run_at = submit_line(
        &api.url,
        "noop --queue cli --run-at 2020-01-01T02:00:00+02:00",
    )
    .await
    .json();
    // A past time means now.
    assert_eq!(run_at["status"], "queued");

    let out = taskq_out(&api.url, &format!("get {first_id}")).await;
    assert!(
        out.starts_with(&format!("id               {first_id}\n")),
        "{out}"
    );
    assert!(out.contains("\nstatus           queued\n"), "{out}");
    assert!(out.contains("\nattempts         0/2\n"), "{out}");
    assert!(out.contains("\nevents:\n"), "{out}");
    assert_eq!(api.record(&first_id).await, first);

    let list = taskq(&api.url, &["list", "--queue", "cli", "-o", "json"])
        .await
        .json();
    assert_eq!(ids(&list).len(), 3);
    assert!(ids(&list).contains(&first_id) && ids(&list).contains(&second_id));
    let list = taskq_line(
        &api.url,
        "list --queue cli --type echo --status scheduled -o json",
    )
    .await
    .json();
    assert_eq!(ids(&list), [second_id.as_str()]);
    let out = taskq_out(&api.url, "list --queue cli --limit 1").await;
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("\nmore tasks: add --cursor "), "{out}");
    let all = taskq_line(&api.url, "list --queue cli --limit 1 --all -o json")
        .await
        .json();
    assert_eq!(ids(&all), ids(&list_all(&api).await));
    assert_eq!(all["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_limits_and_the_busiest_keys() {
    let api = RealApi::start().await;
    let out = taskq_out(
        &api.url,
        "limits keyed --max-running-per-key 1 --max-concurrent 8",
    )
    .await;
    assert!(
        out.contains("max_running_per_key=1") && out.contains("max_concurrent=8"),
        "{out}"
    );
    let mut ids = Vec::new();
    for key in ["acme", "acme", "zeta"] {
        let t = submit_json(&api.url, &["noop", "--queue", "keyed", "--key", key])
            .await
            .json();
        assert_eq!(t["key"], key);
        ids.push(t["id"].as_str().expect("id").to_owned());
    }
    let list = taskq(&api.url, &["list", "--key", "acme", "-o", "json"])
        .await
        .json();
    let mut acme = vec![ids[0].clone(), ids[1].clone()];
    acme.reverse();
    assert_eq!(self::ids(&list), acme, "newest first");
    let out = taskq_out(&api.url, "queues keyed").await;
    assert!(out.contains("busiest keys:\nKEY"), "{out}");
    let acme_row = out.lines().position(|l| l.starts_with("acme "));
    let zeta_row = out.lines().position(|l| l.starts_with("zeta "));
    assert!(
        acme_row.is_some() && acme_row < zeta_row,
        "busiest first: {out}"
    );
    let bad = taskq(&api.url, &["submit", "noop", "--key", "a b"]).await;
    let line = bad.error_line();
    assert!(
        line.contains("invalid_field") && line.contains("key"),
        "{line}"
    );
}

async fn list_all(api: &RealApi) -> Value {
    taskq(&api.url, &["list", "--queue", "cli", "-o", "json"])
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_of_the_api_are_one_line() {
    let api = RealApi::start().await;
    let unknown = TaskId::new().to_string();
    let run = taskq(&api.url, &["get", &unknown]).await;
    assert_eq!(
        run.error_line(),
        format!("error: no task {unknown} (not_found, HTTP 404)")
    );
    let run = taskq(&api.url, &["get", "nope"]).await;
    assert!(
        run.error_line().ends_with("(invalid_id, HTTP 400)"),
        "{run:?}"
    );
    let run = taskq(&api.url, &["retry", &unknown]).await;
    assert!(
        run.error_line().ends_with("(not_found, HTTP 404)"),
        "{run:?}"
    );
    let run = taskq(&api.url, &["list", "--status", "bogus"]).await;
    assert!(
        run.error_line().ends_with("(invalid_query, HTTP 400)"),
        "{run:?}"
    );
    let run = taskq(&api.url, &["submit", "not a type!"]).await;
    assert!(
        run.error_line().ends_with("(invalid_field, HTTP 400)"),
        "{run:?}"
    );
    let run = taskq(&api.url, &["submit", "noop", "--max-attempts", "1000"]).await;
    assert!(
        run.error_line().ends_with("(invalid_field, HTTP 400)"),
        "{run:?}"
    );
    assert_eq!(run.stdout, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_runs_a_dead_task_again_and_refuses_others() {
    let api = RealApi::start().await;
    let (stop, worker) = api.worker();
    let rec = submit_json(&api.url, &["fail", "--payload", r#"{"permanent": true}"#])
        .await
        .json();
    let id = rec["id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while api.record(&id).await["status"] != "dead" {
        assert!(tokio::time::Instant::now() < deadline, "task never died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    worker.await.expect("worker");

    let out = taskq_out(&api.url, &format!("retry {id}")).await;
    assert!(
        out.starts_with(&format!("task {id} will run again from attempt 1\n")),
        "{out}"
    );
    assert!(out.contains("\nstatus           queued\n"), "{out}");
    let run = taskq(&api.url, &["retry", &id]).await;
    assert_eq!(
        run.error_line(),
        format!("error: task {id} is queued; only dead tasks can be retried (conflict, HTTP 409)")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_a_finished_task_and_refuses_an_unfinished_one() {
    let api = RealApi::start().await;
    let rec = submit_json(&api.url, &["noop"]).await.json();
    let id = rec["id"].as_str().expect("id").to_owned();
    let run = taskq(&api.url, &["delete", &id]).await;
    assert_eq!(
        run.error_line(),
        format!(
            "error: task {id} is queued; only finished tasks (succeeded, dead, cancelled) can \
             be deleted: cancel it first (conflict, HTTP 409)"
        )
    );
    assert_eq!(api.record(&id).await["status"], "queued");

    taskq_out(&api.url, &format!("cancel {id}")).await;
    let out = taskq_out(&api.url, &format!("delete {id}")).await;
    assert_eq!(out, format!("task {id} deleted\n"));
    let run = taskq(&api.url, &["get", &id]).await;
    assert_eq!(
        run.error_line(),
        format!("error: no task {id} (not_found, HTTP 404)")
    );
    let run = taskq(&api.url, &["delete", &id, "-o", "json"]).await;
    assert_eq!(
        run.error_line(),
        format!("error: no task {id} (not_found, HTTP 404)")
    );

    let rec = submit_json(&api.url, &["noop"]).await.json();
    let id = rec["id"].as_str().expect("id").to_owned();
    taskq_out(&api.url, &format!("cancel {id}")).await;
    let out = taskq_out(&api.url, &format!("delete {id} -o json")).await;
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v, json!({ "deleted": id }));
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_reports_rejected_items_by_line() {
    let api = RealApi::start().await;
    let file = jsonl_file(
        "{\"type\": \"noop\"}\n\
         \n\
         {\"type\": \"\"}\n\
         {\"type\": \"echo\", \"payload\": 1, \"queue\": \"cli\"}\n\
         {\"type\": \"noop\", \"qeue\": \"typo\"}\n\
         {\"type\": \"noop\", \"delay_ms\": 60000}\n",
    );
    let run = submit_json(&api.url, &["--file", path_str(&file), "--batch-size", "2"]).await;
    assert_eq!(run.error_line(), "error: 2 of 5 tasks were rejected");
    let v: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["rejected"], 2);
    assert_eq!(v["not_sent"], 0);
    let results = v["results"].as_array().expect("results");
    let lines: Vec<u64> = results.iter().filter_map(|r| r["line"].as_u64()).collect();
    assert_eq!(lines, [1, 3, 4, 5, 6]);
    assert_eq!(results[1]["error"]["code"], "invalid_field");
    assert_eq!(results[3]["error"]["code"], "invalid_request");
    for r in [&results[0], &results[2], &results[4]] {
        let id = r["id"].as_str().expect("accepted id");
        assert_eq!(api.record(id).await["status"], r["status"]);
    }
    assert_eq!(results[4]["status"], "scheduled");

    let run = taskq(&api.url, &["submit", "--file", path_str(&file)]).await;
    run.error_line();
    // The summary, then a table of the rejected lines: its header and one row a line,
    // each starting with the line's number and the error's code.
    let (summary, table) = run.stdout.split_once('\n').expect("a summary line");
    assert_eq!(summary, "3 of 5 tasks accepted, 2 rejected");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["LINE", "CODE"],
            ["3", "invalid_field"],
            ["5", "invalid_request"]
        ],
        "{}",
        run.stdout
    );

    let good = jsonl_file("{\"type\": \"noop\"}\n{\"type\": \"echo\"}\n");
    let run = taskq(&api.url, &["submit", "--file", path_str(&good)]).await;
    assert_eq!(run.ok(), "2 of 2 tasks accepted, 0 rejected\n");
    let list = taskq(&api.url, &["list", "--all", "-o", "json"])
        .await
        .json();
    assert_eq!(ids(&list).len(), 3 + 3 + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_and_get_wait_for_the_task_to_finish() {
    let api = RealApi::start().await;
    let (stop, worker) = api.worker();
    // The finished task with its result; exit 0.
    let done = submit_json(
        &api.url,
        &["echo", "--payload", r#"{"answer": 42}"#, "--wait", "50s"],
    )
    .await
    .json();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"answer": 42}));
    let out = taskq_out(&api.url, "submit echo --payload 7 --wait 50s").await;
    assert!(out.contains("\nstatus           succeeded\n"), "{out}");
    assert!(out.contains("\nresult           7\n"), "{out}");

    // A task that dies: printed, then exit 1 saying how it ended.
    let run = submit_json(
        &api.url,
        &[
            "fail",
            "--payload",
            r#"{"permanent": true}"#,
            "--wait",
            "50s",
        ],
    )
    .await;
    let line = run.error_line();
    assert!(
        line.starts_with("error: task ")
            && line.ends_with(" ended dead: fail handler failed attempt 1"),
        "{line}"
    );
    let dead: Value = serde_json::from_str(&run.stdout).expect("the record on stdout");
    assert_eq!(dead["status"], "dead");

    // One that does not finish within the wait: exit 1, the record as it stands.
    let idle = submit_line(&api.url, "noop --queue idle").await.json();
    let idle_id = idle["id"].as_str().expect("id").to_owned();
    let run = taskq(&api.url, &["get", &idle_id, "--wait", "1500ms"]).await;
    assert_eq!(
        run.error_line(),
        format!("error: task {idle_id} is still queued after waiting 1500 ms")
    );
    assert!(
        run.stdout.contains("\nstatus           queued\n"),
        "{run:#?}"
    );
    // Cancelled while waited for: exit 1.
    let waiting = tokio::spawn({
        let (url, id) = (api.url.clone(), idle_id.clone());
        async move { taskq(&url, &["get", &id, "--wait", "50s", "-o", "json"]).await }
    });
    taskq(&api.url, &["cancel", &idle_id]).await.ok();
    let run = waiting.await.expect("taskq get --wait");
    assert_eq!(
        run.error_line(),
        format!("error: task {idle_id} ended cancelled")
    );
    // A finished task answers at once; exit 0.
    let id = done["id"].as_str().expect("id");
    assert_eq!(
        taskq(&api.url, &["get", id, "--wait", "50", "-o", "json"])
            .await
            .json(),
        api.record(id).await
    );
    // Bad waits are usage errors, refused before anything is sent.
    for bad in ["61s", "soon", "-1"] {
        let run = taskq(&api.url, &["get", id, "--wait", bad]).await;
        assert_eq!(run.code, Some(2), "--wait {bad}: {run:#?}");
    }
    stop.cancel();
    worker.await.expect("worker");
}

#[tokio::test(flavor = "multi_thread")]
async fn flow_submit_get_cancel_and_a_refused_flow() {
    let api = RealApi::start().await;
    // A fan-out/fan-in as the README shows it: one task, two branches, one join.
    let file = jsonl_file(
        r#"{"tasks": [
          {"name": "fetch", "type": "echo", "payload": {"url": "https://example.com"}},
          {"name": "left", "type": "echo", "depends_on": ["fetch"]},
          {"name": "right", "type": "echo", "depends_on": ["fetch"]},
          {"name": "join", "type": "noop", "depends_on": ["left", "right"]}
        ]}"#,
    );
    let flow = taskq(&api.url, &["flow", "submit", path_str(&file), "-o", "json"])
        .await
        .json();
    assert_eq!(flow["status"], "running", "{flow:#}");
    assert_eq!(flow["counts"], json!({"queued": 1, "waiting": 3}));
    let id = flow["id"].as_str().expect("flow id").to_owned();

    // The table names dependencies by name.
    let out = taskq_out(&api.url, &format!("flow get {id}")).await;
    assert!(out.contains(&id), "{out}");
    let join = out
        .lines()
        .find(|l| l.contains(" join "))
        .unwrap_or_else(|| panic!("no join row: {out}"));
    assert!(
        join.contains("waiting") && join.contains("left,right"),
        "{out}"
    );

    let (stop, worker) = api.worker();
    let done = taskq_testkit::wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            taskq(&api.url, &["flow", "get", &id, "-o", "json"])
                .await
                .json()["status"]
                == "succeeded"
        },
    )
    .await;
    assert!(done, "the flow did not succeed");
    stop.cancel();
    worker.await.expect("worker");

    // Nothing left to cancel in a finished flow; a waiting one is cancelled whole.
    let out = taskq_out(&api.url, &format!("flow cancel {id}")).await;
    assert_eq!(
        out,
        format!("flow {id}: 0 tasks cancelled, 0 running tasks signalled\n")
    );
    let second = jsonl_file(
        r#"[{"name": "a", "type": "noop"}, {"name": "b", "type": "noop", "depends_on": ["a"]}]"#,
    );
    let flow = taskq(
        &api.url,
        &["flow", "submit", path_str(&second), "-o", "json"],
    )
    .await
    .json();
    let id = flow["id"].as_str().expect("flow id").to_owned();
    let out = taskq_out(&api.url, &format!("flow cancel {id}")).await;
    assert_eq!(
        out,
        format!("flow {id}: 2 tasks cancelled, 0 running tasks signalled\n")
    );
    let flow = taskq(&api.url, &["flow", "get", &id, "-o", "json"])
        .await
        .json();
    assert_eq!(flow["status"], "cancelled", "{flow:#}");

    let cycle = jsonl_file(
        r#"[{"name": "a", "type": "noop", "depends_on": ["b"]}, {"name": "b", "type": "noop", "depends_on": ["a"]}]"#,
    );
    let run = taskq(&api.url, &["flow", "submit", path_str(&cycle)]).await;
    let line = run.error_line();
    assert!(
        line.contains("invalid_flow") && line.contains("cycle"),
        "{line}"
    );
}
