//! Periodic tasks: every tick yields exactly one task however many schedulers run it,
//! in-process and through the real `taskq-api` binary; invalid config stops the api at
//! start-up with a message naming what to fix.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskq_api::periodic::parse_schedules;
use taskq_api::{AppState, spawn_periodic};
use taskq_core::{Limits, TaskRecord, TaskStatus};
use taskq_redis::{Broker, RedisConfig};
use taskq_store::{ListFilter, Store};
use taskq_testkit::{ChildGuard, free_port, mongo_uri, unique_db_name, wait_until, workspace_bin};
use tokio_util::sync::CancellationToken;

use crate::harness::Env;

const T: Duration = Duration::from_secs(30);

const EVERY_SECOND: &str = r#"[{"name": "every-second", "cron": "*/1 * * * * *",
    "task": {"type": "noop", "payload": {"from": "cron"}, "queue": "periodic", "max_attempts": 2}}]"#;

const KEY_PREFIX: &str = "periodic:every-second:";

/// Every record in the store, oldest first.
async fn records(store: &Store) -> Vec<TaskRecord> {
    let mut page = store
        .list(&ListFilter::default(), 1000, None)
        .await
        .expect("list")
        .tasks;
    page.reverse();
    page
}

/// Checks that `recs` hold one task per tick, each tick a distinct whole second between
/// `from` and `to`; returns the ticks.
fn distinct_ticks(
    recs: &[TaskRecord],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeSet<DateTime<Utc>> {
    let mut ticks = BTreeSet::new();
    for r in recs {
        let key = r
            .idempotency_key
            .as_deref()
            .expect("a periodic task has a key");
        let tick: DateTime<Utc> = key
            .strip_prefix(KEY_PREFIX)
            .unwrap_or_else(|| panic!("unexpected key {key}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(tick.timestamp_subsec_nanos(), 0, "{key}");
        assert!(
            tick >= from - chrono::Duration::seconds(1) && tick <= to,
            "tick {tick} outside {from}..{to}"
        );
        assert!(ticks.insert(tick), "tick {tick} submitted twice: {recs:#?}");
        assert_eq!(r.kind, "noop");
        assert_eq!(r.queue.as_str(), "periodic");
        assert_eq!(r.payload, serde_json::json!({"from": "cron"}));
        assert_eq!(r.max_attempts, 2);
    }
    ticks
}

/// The value of `taskq_tasks_submitted` in a metrics exposition (summed over labels).
fn submitted(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("tasks_submitted"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn four_schedulers_submit_each_tick_exactly_once() {
    let env = Env::start().await;
    let stop = CancellationToken::new();
    let mut schedulers = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..4 {
        // Each scheduler has connections of its own, as api replicas would.
        let broker = Broker::connect(&RedisConfig::from_urls(&env.redis.url(), false))
            .await
            .expect("redis");
        let store = Store::connect(&mongo_uri(), &env.db)
            .await
            .expect("mongodb");
        let state = AppState::new(broker, store);
        metrics.push(state.metrics.clone());
        let schedules = parse_schedules(&[("test", EVERY_SECOND)], &state.limits)
            .unwrap_or_else(|e| panic!("{e}"));
        schedulers.push(spawn_periodic(state, schedules, stop.clone()));
    }
    let started = Utc::now();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.cancel();
    for s in schedulers {
        tokio::time::timeout(T, s)
            .await
            .expect("schedulers stop on shutdown")
            .expect("scheduler task");
    }
    let stopped = Utc::now();

    let recs = records(&env.store).await;
    let ticks = distinct_ticks(&recs, started, stopped);
    assert_eq!(ticks.len(), recs.len());
    assert!(
        ticks.len() >= 3,
        "{} ticks in 3.5 s: {ticks:?}",
        ticks.len()
    );
    assert!(recs.iter().all(|r| r.status == TaskStatus::Queued));
    assert_eq!(
        env.redis_total("periodic").await,
        recs.len() as u64,
        "each tick's task is in Redis once"
    );
    let counted: u64 = metrics.iter().map(|m| submitted(&m.encode())).sum();
    assert_eq!(
        counted,
        recs.len() as u64,
        "submitted counter across schedulers"
    );

    // Nothing is submitted after shutdown.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(records(&env.store).await.len(), recs.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn api_replicas_share_a_schedule_file() {
    let env = Env::start().await;
    let path = std::env::temp_dir().join(format!("{}.json", unique_db_name("periodic")));
    std::fs::write(&path, EVERY_SECOND).expect("write the schedule file");
    let started = Utc::now();
    let mut apis: Vec<(ChildGuard, String)> = (0..2)
        .map(|_| {
            let port = free_port();
            let mut cmd = Command::new(workspace_bin("taskq-api"));
            cmd.env("TASKQ_REDIS_URL", env.redis.url())
                .env("TASKQ_MONGODB_URI", mongo_uri())
                .env("TASKQ_MONGODB_DATABASE", &env.db)
                .env("TASKQ_LISTEN", format!("127.0.0.1:{port}"))
                .env("TASKQ_AUTH", "off")
                .env("TASKQ_PERIODIC_FILE", &path)
                .env("RUST_LOG", "info")
                .env_remove("TASKQ_PERIODIC")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
            (
                ChildGuard::spawn_logged("taskq-api", &mut cmd),
                format!("http://127.0.0.1:{port}"),
            )
        })
        .collect();
    for (_, url) in &apis {
        let ready = wait_until(T, Duration::from_millis(50), || async {
            env.http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "{url} not ready");
    }
    let enough = wait_until(T, Duration::from_millis(100), || async {
        records(&env.store).await.len() >= 3
    })
    .await;
    assert!(enough, "fewer than 3 periodic tasks within {T:?}");
    for (api, _) in &mut apis {
        api.terminate();
    }
    for (api, _) in &mut apis {
        let status = api.wait_timeout(T).expect("the api stops on SIGTERM");
        assert!(status.success(), "{status}: {}", api.log());
        assert!(api.log().contains("running periodic schedules"));
    }
    let _ = std::fs::remove_file(&path);
    let recs = records(&env.store).await;
    let ticks = distinct_ticks(&recs, started, Utc::now());
    assert_eq!(ticks.len(), recs.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_to_start_on_invalid_periodic_config() {
    let task = r#""task": {"type": "noop"}"#;
    let cases = [
        (
            format!(r#"[{{"name": "a", "cron": "0 0 3 * * * *x", {task}}}]"#),
            "TASKQ_PERIODIC[0]: schedule `a`: `cron`: `0 0 3 * * * *x` is not a valid cron expression",
        ),
        (
            format!(r#"[{{"name": "a", "cron": "0 3 * * *", {task}}}]"#),
            "has 5 fields; taskq's cron has seconds first",
        ),
        (
            format!(
                r#"[{{"name": "a", "cron": "0 * * * * *", {task}}}, {{"name": "a", "cron": "30 * * * * *", {task}}}]"#
            ),
            "TASKQ_PERIODIC[1]: schedule name `a` is used twice",
        ),
        (
            r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "no such type!"}}]"#.into(),
            "schedule `a`: invalid `task`: `type`: must be 1-128 characters",
        ),
        (
            r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "noop", "delay_ms": 1000}}]"#
                .into(),
            "`task.delay_ms` is not allowed",
        ),
        (
            format!(r#"[{{"name": "nightly report", "cron": "0 * * * * *", {task}}}]"#),
            "schedule name \"nightly report\" must be 1-64 characters",
        ),
    ];
    for (config, expected) in cases {
        let mut cmd = Command::new(workspace_bin("taskq-api"));
        // Nothing listens there: the config must be refused before any connection.
        cmd.env("TASKQ_REDIS_URL", "redis://127.0.0.1:1")
            .env("TASKQ_MONGODB_URI", "mongodb://127.0.0.1:1")
            .env("TASKQ_LISTEN", "127.0.0.1:0")
            .env("TASKQ_AUTH", "off")
            .env("TASKQ_PERIODIC", &config)
            .env_remove("TASKQ_PERIODIC_FILE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        let mut api = ChildGuard::spawn_logged("taskq-api", &mut cmd);
        let status = api
            .wait_timeout(T)
            .unwrap_or_else(|| panic!("the api started with {config}"));
        assert!(!status.success(), "{config}");
        let log = api.log();
        assert!(
            log.contains(expected),
            "{config}\n  said: {log}\n  want: {expected}"
        );
    }
}

#[test]
fn schedules_are_checked_against_the_api_limits() {
    let tight = Limits {
        max_payload_bytes: 4,
        ..Limits::default()
    };
    let e = parse_schedules(&[("TASKQ_PERIODIC", EVERY_SECOND)], &tight)
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("payload is 15 bytes; the limit is 4 bytes"),
        "{e}"
    );
}
