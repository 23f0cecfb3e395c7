//! `UpdateWriter` against a real server, including an outage.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use taskq_core::{TaskRecord, TaskStatus};
use taskq_store::{StatusUpdate, Store, UpdateWriter, WriterOptions};

use crate::common::{Must, TestDb, history, task};

fn running(r: &TaskRecord, at: DateTime<Utc>) -> StatusUpdate {
    StatusUpdate::transition(r.id, 2, TaskStatus::Running, 1, at).by("w".to_owned())
}

fn succeeded(r: &TaskRecord, at: DateTime<Utc>) -> StatusUpdate {
    StatusUpdate::transition(r.id, 3, TaskStatus::Succeeded, 1, at)
        .result(json!({ "ok": r.id.to_string() }))
        .by("w".to_owned())
}

/// Asserts the record went queued → running → succeeded, each event exactly once.
async fn assert_succeeded(store: &Store, r: &TaskRecord) {
    let got = store.get(r.id).await.must().must();
    assert_eq!(got.seq, 3, "task {}", r.id);
    let rec = got.record;
    assert_eq!(rec.status, TaskStatus::Succeeded);
    assert_eq!(rec.attempts, 1);
    assert!(rec.started_at.is_some() && rec.finished_at.is_some());
    assert_eq!(rec.result, Some(json!({ "ok": r.id.to_string() })));
    assert_eq!(
        history(&rec),
        vec![
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Succeeded
        ],
        "task {}",
        r.id
    );
}

fn later(r: &TaskRecord, ms: i64) -> DateTime<Utc> {
    r.created_at + chrono::Duration::milliseconds(ms)
}

#[tokio::test]
async fn coalesces_updates_of_one_task_into_one_write() {
    let db = TestDb::new().await;
    let rec = task("q", "t", json!({}));
    db.store.insert(&rec).await.must();
    let (writer, task) = UpdateWriter::spawn(
        db.store.clone(),
        WriterOptions {
            flush_interval: Duration::from_millis(300),
            ..WriterOptions::default()
        },
    );
    writer
        .send_many(vec![
            running(&rec, later(&rec, 1)),
            succeeded(&rec, later(&rec, 2)),
        ])
        .await
        .must();
    assert_eq!(writer.depth(), 2);
    task.shutdown().await;

    assert_succeeded(&db.store, &rec).await;
    let stats = writer.stats();
    assert_eq!(stats.batches_total(), 1, "one flush");
    assert_eq!(stats.last_batch_size(), 2);
    assert_eq!(stats.flushed_total(), 2);
    assert_eq!(stats.flush_errors_total(), 0);
    assert_eq!(writer.depth(), 0);

    // Closed: updates are handed back.
    let err = writer
        .send(running(&rec, later(&rec, 3)))
        .await
        .err()
        .must();
    assert_eq!(err.unsent.len(), 1);
    db.drop().await;
}

#[tokio::test]
async fn flushes_and_ends_when_every_handle_is_dropped() {
    let db = TestDb::new().await;
    let recs = db.insert_queued(100).await;
    let (writer, task) = UpdateWriter::spawn(
        db.store.clone(),
        WriterOptions {
            max_batch: 16,
            ..WriterOptions::default()
        },
    );
    let other = writer.clone();
    for r in &recs {
        writer.send(running(r, later(r, 1))).await.must();
        other.send(succeeded(r, later(r, 2))).await.must();
    }
    drop((writer, other));
    tokio::time::timeout(Duration::from_secs(30), task.wait())
        .await
        .must();
    for r in &recs {
        assert_succeeded(&db.store, r).await;
    }
    db.drop().await;
}

#[tokio::test]
async fn drops_only_what_the_server_keeps_refusing() {
    let db = TestDb::new().await;
    let (good, bad) = db.good_and_poisoned().await;
    let (writer, task) = UpdateWriter::spawn(
        db.store.clone(),
        WriterOptions {
            retry_min: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
            max_rejections: 3,
            ..WriterOptions::default()
        },
    );
    writer
        .send_many(vec![
            running(&good, later(&good, 1)),
            running(&bad, later(&bad, 1)),
        ])
        .await
        .must();
    tokio::time::timeout(Duration::from_secs(30), task.shutdown())
        .await
        .must();
    let stats = writer.stats();
    assert_eq!(stats.dropped_total(), 1);
    assert_eq!(stats.flushed_total(), 1);
    assert_eq!(stats.flush_errors_total(), 3);
    assert_eq!(writer.depth(), 0);
    let got = db.store.get(good.id).await.must().must();
    assert_eq!(got.record.status, TaskStatus::Running);
    db.drop().await;
}

#[tokio::test]
async fn loses_nothing_while_the_server_is_unreachable() {
    let db = TestDb::new().await;
    let (proxy, proxied) = db.proxied(Duration::from_millis(300)).await;

    let recs = db.insert_queued(300).await;
    let capacity = 50;
    let max_batch = 20;
    let (writer, task) = UpdateWriter::spawn(
        proxied,
        WriterOptions {
            capacity,
            max_batch,
            flush_interval: Duration::from_millis(2),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            ..WriterOptions::default()
        },
    );

    // Warm up so the pool holds connections that the cut will break.
    writer
        .send(running(&recs[0], later(&recs[0], 1)))
        .await
        .must();
    writer
        .send(succeeded(&recs[0], later(&recs[0], 2)))
        .await
        .must();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while writer.stats().flushed_total() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "warm-up flush never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.cut();
    let sender = {
        let writer = writer.clone();
        let recs = recs[1..].to_vec();
        tokio::spawn(async move {
            for r in &recs {
                writer.send(running(r, later(r, 1))).await.must();
                writer.send(succeeded(r, later(r, 2))).await.must();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stats = writer.stats();
    assert!(
        stats.flush_errors_total() > 0,
        "flushes should fail during the outage"
    );
    assert!(!sender.is_finished(), "a full buffer makes senders wait");
    let depth = writer.depth();
    // Buffered in the channel, in the batch being retried, and one sender waiting.
    assert!(
        depth <= capacity + max_batch + 1,
        "depth {depth} exceeds the bound"
    );
    assert!(
        depth >= capacity,
        "depth {depth}: the buffer should be full"
    );
    let flushed_during_outage = stats.flushed_total();

    proxy.restore();
    tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .must()
        .must();
    tokio::time::timeout(Duration::from_secs(60), task.shutdown())
        .await
        .must();

    let stats = writer.stats();
    assert!(stats.flushed_total() > flushed_during_outage);
    assert_eq!(stats.flushed_total(), 600);
    assert_eq!(stats.dropped_total(), 0);
    assert_eq!(writer.depth(), 0);
    for r in &recs {
        assert_succeeded(&db.store, r).await;
    }
    db.drop().await;
}
