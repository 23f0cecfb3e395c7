//! `taskq-ui-bench`: how fast the dashboard answers with many records stored.
//!
//! Inserts `--records` task records (default 1,000,000) straight into a fresh MongoDB
//! database with `insert_many` (a mix of queues, types and statuses, as a week of
//! retention leaves them), creates the store's indexes, serves the api in-process on a
//! loopback port (authentication off), and times over HTTP:
//!
//! - `/ui` (the overview: every queue's counts, limits and throughput);
//! - `/ui/tasks?queue=…&status=dead&type=…` (a filtered list page);
//! - `/ui/tasks?…&from=…&to=…` (a time range);
//! - `/ui/tasks?q=…` (a text search, which no index serves);
//! - the count a bulk-retry confirmation states.
//!
//! Prints p50, p95 and max of `--samples` requests each, and drops the database.
//!
//! ```sh
//! export TASKQ_TEST_MONGODB_URI="$(scripts/mongo.sh start)"
//! cargo run --release -p taskq-bench --bin taskq-ui-bench -- --records 1000000
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use taskq_core::{Limits, NewTask, TaskEvent, TaskStatus};
use taskq_redis::{Broker, RedisConfig};
use taskq_store::{Search, Store};

#[derive(Debug, Parser)]
#[command(
    name = "taskq-ui-bench",
    about = "Times the dashboard's pages over many stored records"
)]
struct Args {
    /// MongoDB to use; falls back to `TASKQ_TEST_MONGODB_URI`.
    #[arg(long, env = "TASKQ_BENCH_MONGODB_URI", hide_env_values = true)]
    mongodb_uri: Option<String>,
    /// Redis to use; by default a `redis-server` of its own on a free port.
    #[arg(long, env = "TASKQ_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Records to insert.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Requests timed per page.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Keep the database afterwards (its name is printed).
    #[arg(long)]
    keep: bool,
    /// Use this database as it is when it already holds the records (a database kept
    /// by `--keep`), instead of a fresh one.
    #[arg(long)]
    database: Option<String>,
    /// The api's request timeout, in seconds (slow pages are timed, not cut off).
    #[arg(long, default_value_t = 600)]
    request_timeout_seconds: u64,
}

const QUEUES: [&str; 4] = ["default", "emails", "reports", "webhooks"];
const TYPES: [&str; 6] = ["http", "email", "resize", "report", "sync", "noop"];

/// Status of record `i`: 85% succeeded, 5% dead, 4% cancelled, the rest live.
fn status_of(i: usize) -> TaskStatus {
    match i % 100 {
        0..85 => TaskStatus::Succeeded,
        85..90 => TaskStatus::Dead,
        90..94 => TaskStatus::Cancelled,
        94..97 => TaskStatus::Queued,
        97..99 => TaskStatus::Scheduled,
        _ => TaskStatus::Retrying,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The time of a first request (the overview's counts not cached yet), then of
/// `samples` more, sorted.
async fn time_get(
    http: &reqwest::Client,
    url: &str,
    samples: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let t = Instant::now();
    let r = http.get(url).send().await?;
    anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
    let _ = r.bytes().await?;
    let first = t.elapsed();
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let r = http.get(url).send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        out.push(t.elapsed());
        anyhow::ensure!(status.is_success(), "{url}: {status}");
    }
    out.sort();
    Ok((first, out))
}

fn line(name: &str, d: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{name:<44} p50 {:>8.1} ms   p95 {:>8.1} ms   max {:>8.1} ms",
        ms(percentile(d, 0.5)),
        ms(percentile(d, 0.95)),
        ms(percentile(d, 1.0))
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri = args
        .mongodb_uri
        .clone()
        .or_else(|| std::env::var("TASKQ_TEST_MONGODB_URI").ok())
        .context(
            "set --mongodb-uri or TASKQ_TEST_MONGODB_URI (scripts/mongo.sh start prints one)",
        )?;
    let _own_redis;
    let redis_url = match &args.redis_url {
        Some(u) => u.clone(),
        None => {
            let r = taskq_testkit::RedisServer::start();
            let u = r.url();
            _own_redis = r;
            u
        }
    };
    let db = args
        .database
        .clone()
        .unwrap_or_else(|| taskq_testkit::unique_db_name("uibench"));
    let store = Store::connect(&uri, &db).await?;
    let present = store
        .database()
        .collection::<mongodb::bson::Document>(taskq_store::TASKS)
        .estimated_document_count()
        .await?;
    let broker = Broker::connect(&RedisConfig::from_urls(&redis_url, false)).await?;

    // Records: created over the last 7 days, newest last.
    let limits = Limits::default();
    let now = chrono::Utc::now();
    let span_ms = 7 * 24 * 3600 * 1000_i64;
    let t0 = Instant::now();
    let batch = 10_000;
    let mut inserted = if args.database.is_some() && present >= args.records as u64 {
        eprintln!("{db} already holds {present} records");
        args.records
    } else {
        0
    };
    while inserted < args.records {
        let n = batch.min(args.records - inserted);
        let mut recs = Vec::with_capacity(n);
        for j in 0..n {
            let i = inserted + j;
            let created = now
                - chrono::Duration::milliseconds(
                    span_ms - span_ms * i as i64 / args.records as i64,
                );
            let task = NewTask {
                kind: TYPES[i % TYPES.len()].to_owned(),
                queue: Some(QUEUES[(i / 7) % QUEUES.len()].to_owned()),
                payload: serde_json::json!({"order": i, "customer": format!("c-{}", i % 5000)}),
                ..NewTask::default()
            };
            let mut rec = limits.admit(task, created, None)?;
            rec.id = uuid_at(created, i).to_string().parse()?;
            rec.status = status_of(i);
            if rec.status.is_final() {
                rec.attempts = 1;
                rec.finished_at = Some(created + chrono::Duration::milliseconds(40));
                if rec.status == TaskStatus::Dead {
                    rec.last_error = Some(format!("HTTP 503 from upstream {}", i % 97));
                }
                rec.events.push(TaskEvent {
                    status: rec.status,
                    at: created + chrono::Duration::milliseconds(40),
                    attempt: 1,
                    error: rec.last_error.clone(),
                    worker: Some("bench-worker".into()),
                });
            }
            recs.push(rec);
        }
        store.insert_many(&recs).await?;
        inserted += n;
        if inserted % 100_000 == 0 {
            eprintln!(
                "inserted {inserted} records ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let insert_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    store.ensure_indexes().await?;
    let index_secs = t1.elapsed().as_secs_f64();
    for q in QUEUES {
        broker.pause(&q.parse()?).await?;
        broker.resume(&q.parse()?).await?;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = taskq_api::AppState {
        request_timeout: Duration::from_secs(args.request_timeout_seconds),
        ..taskq_api::AppState::new(broker.clone(), store.clone())
    };
    let connections = state.connections;
    let app = taskq_api::app(state);
    tokio::spawn(async move {
        taskq_api::serve(listener, app, connections, std::future::pending::<()>()).await
    });
    let http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::COOKIE,
                reqwest::header::HeaderValue::from_static("taskq_ui=YmVuY2g"),
            )]
            .into_iter()
            .collect(),
        )
        .build()?;

    let mid = now - chrono::Duration::days(3);
    let from = (mid - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M");
    let to = mid.format("%Y-%m-%dT%H:%M");
    let pages = [
        ("overview /ui".to_owned(), format!("{base}/ui")),
        (
            "overview live part /ui/live".to_owned(),
            format!("{base}/ui/live"),
        ),
        (
            "list queue+status=dead+type".to_owned(),
            format!("{base}/ui/tasks?queue=emails&status=dead&type=http"),
        ),
        (
            "list status=dead".to_owned(),
            format!("{base}/ui/tasks?status=dead"),
        ),
        ("list, no filter".to_owned(), format!("{base}/ui/tasks")),
        (
            "list queue + 1 h time range".to_owned(),
            format!("{base}/ui/tasks?queue=emails&from={from}&to={to}"),
        ),
        (
            "list text search (common)".to_owned(),
            format!("{base}/ui/tasks?q=c-42"),
        ),
        (
            "list text search (rare: 1 match)".to_owned(),
            format!("{base}/ui/tasks?q=%22order%22%3A{}%2C", args.records / 2),
        ),
    ];
    println!(
        "records: {}  (inserted in {insert_secs:.1} s, indexes {index_secs:.1} s)  database: {db}",
        args.records
    );
    // The store's queries on their own, once each (they are what the pages wait on).
    let emails: taskq_core::QueueName = "emails".parse()?;
    let report = |name: &str, t: Instant, n: u64| {
        println!(
            "  store: {name:<46} {:>10.1} ms  ({n})",
            t.elapsed().as_secs_f64() * 1000.0
        );
    };
    for status in [TaskStatus::Dead, TaskStatus::Succeeded] {
        let t = Instant::now();
        let n = store.count_status(&emails, status, 100_000).await?;
        report(&format!("count_status(emails, {status}, cap 100000)"), t, n);
    }
    let dead_http = Search {
        queue: Some(emails.clone()),
        status: Some(TaskStatus::Dead),
        kind: Some("http".into()),
        ..Search::default()
    };
    let t = Instant::now();
    let n = store.search(&dead_http, 50, None).await?.tasks.len();
    report("search(emails, dead, http), page of 50", t, n as u64);
    let t = Instant::now();
    let n = store
        .search(&Search::default(), 50, None)
        .await?
        .tasks
        .len();
    report("search(no filter), page of 50", t, n as u64);
    // The overview never waits for its counts of finished tasks: they are taken in the
    // background and shown as `…` until the first ones return.
    let t = Instant::now();
    loop {
        let body = http.get(format!("{base}/ui")).send().await?.text().await?;
        if !body.contains("class=\"counting\"") {
            println!(
                "overview counts of finished tasks complete after {:.1} ms",
                t.elapsed().as_secs_f64() * 1000.0
            );
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "the overview's counts did not complete in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, url) in &pages {
        let t = Instant::now();
        match time_get(&http, url, args.samples).await {
            Ok((first, d)) => println!(
                "{}   first {:>8.1} ms",
                line(name, &d),
                first.as_secs_f64() * 1000.0
            ),
            Err(e) => println!(
                "{name:<44} failed after {:.1} s: {e}",
                t.elapsed().as_secs_f64()
            ),
        }
    }
    // The count a bulk-retry confirmation states.
    let search = Search {
        queue: Some("emails".parse()?),
        status: Some(TaskStatus::Dead),
        kind: Some("http".into()),
        ..Search::default()
    };
    let mut d = Vec::new();
    let mut matched = 0;
    for _ in 0..args.samples {
        let t = Instant::now();
        matched = store.count_matching(&search).await?;
        d.push(t.elapsed());
    }
    d.sort();
    println!(
        "{}  ({matched} tasks)",
        line("confirmation count queue+dead+type", &d)
    );
    let mut d = Vec::new();
    for _ in 0..args.samples {
        let t = Instant::now();
        store
            .count_status(&"emails".parse()?, TaskStatus::Succeeded, 100_000)
            .await?;
        d.push(t.elapsed());
    }
    d.sort();
    println!(
        "{}",
        line("count_status(emails, succeeded, cap 100000)", &d)
    );
    if !args.keep {
        store.database().drop().await?;
    }
    Ok(())
}

/// A UUIDv7 for time `t`, unique by `i`.
fn uuid_at(t: chrono::DateTime<chrono::Utc>, i: usize) -> uuid::Uuid {
    let ms = u128::from(u64::try_from(t.timestamp_millis()).unwrap_or(0));
    let rand = (i as u128) & ((1u128 << 62) - 1);
    uuid::Uuid::from_u128((ms << 80) | (0x7u128 << 76) | (0x2u128 << 62) | rand)
}
