//! `Store` against a real server.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Duration;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde_json::json;
use taskq_core::{QueueName, TaskEvent, TaskId, TaskRecord, TaskStatus};
use taskq_store::{
    Error, ListFilter, RequeueOutcome, StatusUpdate, Store, StoreOptions, ensure_indexes_with_retry,
};

use crate::common::{Must, TestDb, now, task, task_in, uri};
use crate::proxy::{ChaosProxy, through, upstream};

fn event(status: TaskStatus, at: chrono::DateTime<chrono::Utc>, attempt: u32) -> TaskEvent {
    TaskEvent {
        status,
        at,
        attempt,
        error: None,
        worker: Some("worker-1".into()),
    }
}

#[tokio::test]
async fn insert_and_get_round_trip_exotic_payloads() {
    let db = TestDb::new().await;
    let payload = json!({
        "$weird.keys": { "a.b": 1, "$set": "x" },
        "big": 18446744073709551615u64,
        "small": i64::MIN,
        "float": 0.1,
        "text": "naïve \u{0} nul",
        "nested": [ { "$where": "1" }, null, true ],
    });
    let mut rec = task("emails", "send.welcome", payload);
    rec.result = Some(json!({ "$id": 18446744073709551615u64 }));
    rec.last_error = Some("previous failure".into());
    db.store.insert(&rec).await.must();

    let got = db.store.get(rec.id).await.must().must();
    assert_eq!(got.seq, 1);
    assert_eq!(got.record, rec);
    assert_eq!(got.record.payload["big"].as_u64(), Some(u64::MAX));

    assert!(db.store.get(TaskId::new()).await.must().is_none());
    // The same id twice is refused.
    assert!(matches!(db.store.insert(&rec).await, Err(Error::Mongo(_))));
    db.drop().await;
}

#[tokio::test]
async fn a_corrupt_document_is_an_error() {
    let db = TestDb::new().await;
    let rec = task("q", "t", json!(1));
    db.store.insert(&rec).await.must();
    db.store
        .database()
        .collection::<Document>("tasks")
        .update_one(
            doc! { "_id": rec.id.to_string() },
            doc! { "$set": { "payload": "{oops" } },
        )
        .await
        .must();
    match db.store.get(rec.id).await {
        Err(Error::Corrupt { id, reason }) => {
            assert_eq!(id, rec.id.to_string());
            assert!(reason.contains("payload"), "{reason}");
        }
        other => panic!("expected a corrupt-record error, got {other:?}"),
    }
    db.drop().await;
}

#[tokio::test]
async fn insert_many_and_delete() {
    let db = TestDb::new().await;
    db.store.insert_many(&[]).await.must();
    let recs: Vec<TaskRecord> = (0..50)
        .map(|i| task("bulk", "t", json!({ "i": i })))
        .collect();
    db.store.insert_many(&recs).await.must();
    for r in &recs {
        assert_eq!(db.store.get(r.id).await.must().must().record, *r);
    }

    let gone: Vec<TaskId> = recs[..10].iter().map(|r| r.id).collect();
    assert_eq!(db.store.delete(&gone).await.must(), 10);
    assert_eq!(db.store.delete(&gone).await.must(), 0);
    assert_eq!(db.store.delete(&[]).await.must(), 0);
    assert!(db.store.get(gone[0]).await.must().is_none());
    assert!(db.store.get(recs[10].id).await.must().is_some());
    db.drop().await;
}

#[tokio::test]
async fn list_filters_and_pages_newest_first() {
    let db = TestDb::new().await;
    db.store.ensure_indexes().await.must();
    let mut all = Vec::new();
    for i in 0..30 {
        let queue = if i % 2 == 0 { "even" } else { "odd" };
        let kind = if i % 3 == 0 { "fizz" } else { "plain" };
        let status = if i % 5 == 0 {
            TaskStatus::Dead
        } else {
            TaskStatus::Queued
        };
        all.push(task_in(queue, kind, status));
    }
    // Inserted in two batches, out of id order, to show the sort does the work.
    db.store.insert_many(&all[15..]).await.must();
    db.store.insert_many(&all[..15]).await.must();
    let newest_first: Vec<TaskId> = all.iter().rev().map(|t| t.id).collect();

    // Paging through everything with a concurrent insert between every page.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut late = Vec::new();
    loop {
        let page = db
            .store
            .list(&ListFilter::default(), 7, cursor)
            .await
            .must();
        assert!(page.tasks.len() <= 7);
        seen.extend(page.tasks.iter().map(|t| t.id));
        let newcomer = task_in("even", "plain", TaskStatus::Queued);
        db.store.insert(&newcomer).await.must();
        late.push(newcomer.id);
        match page.next_cursor {
            Some(c) => {
                assert_eq!(Some(c), page.tasks.last().map(|t| t.id));
                cursor = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(
        seen, newest_first,
        "pages are newest first, without gaps or repeats"
    );

    // An exact multiple of the page size ends without an empty extra page.
    let first = db
        .store
        .list(&ListFilter::default(), 1000, None)
        .await
        .must();
    assert_eq!(first.tasks.len(), 30 + late.len());
    assert_eq!(first.next_cursor, None);
    assert_eq!(
        first.tasks[0].id,
        *late.last().must(),
        "the newest is first"
    );

    let ids = |f: &dyn Fn(&TaskRecord) -> bool| -> Vec<TaskId> {
        all.iter().rev().filter(|t| f(t)).map(|t| t.id).collect()
    };
    let only_old = |page: Vec<TaskRecord>| -> Vec<TaskId> {
        let late: HashSet<TaskId> = late.iter().copied().collect();
        page.into_iter()
            .map(|t| t.id)
            .filter(|id| !late.contains(id))
            .collect()
    };
    let dead = ListFilter {
        status: Some(TaskStatus::Dead),
        ..ListFilter::default()
    };
    let got = db.store.list(&dead, 100, None).await.must();
    assert_eq!(only_old(got.tasks), ids(&|t| t.status == TaskStatus::Dead));

    let fizz = ListFilter {
        kind: Some("fizz".into()),
        ..ListFilter::default()
    };
    let got = db.store.list(&fizz, 100, None).await.must();
    assert_eq!(only_old(got.tasks), ids(&|t| t.kind == "fizz"));

    let odd_dead = ListFilter {
        status: Some(TaskStatus::Dead),
        queue: Some("odd".parse::<QueueName>().must()),
        kind: None,
    };
    let got = db.store.list(&odd_dead, 100, None).await.must();
    let want = ids(&|t| t.status == TaskStatus::Dead && t.queue.as_str() == "odd");
    assert!(!want.is_empty());
    assert_eq!(only_old(got.tasks), want);

    // Paging a filter.
    let p1 = db.store.list(&fizz, 3, None).await.must();
    let p2 = db.store.list(&fizz, 3, p1.next_cursor).await.must();
    let both: Vec<TaskId> = p1.tasks.iter().chain(&p2.tasks).map(|t| t.id).collect();
    assert_eq!(both, ids(&|t| t.kind == "fizz")[..6].to_vec());
    db.drop().await;
}

#[tokio::test]
async fn apply_never_regresses_status_but_keeps_history() {
    let db = TestDb::new().await;
    let rec = task("q", "t", json!(null));
    db.store.insert(&rec).await.must();
    let t0 = rec.created_at;
    let (t1, t2) = (
        t0 + Duration::milliseconds(10),
        t0 + Duration::milliseconds(20),
    );

    let mut running = StatusUpdate::new(rec.id, 2, TaskStatus::Running, t1);
    running.attempts = Some(1);
    running.started_at = Some(t1);
    running.events = vec![event(TaskStatus::Running, t1, 1)];
    let mut done = StatusUpdate::new(rec.id, 3, TaskStatus::Succeeded, t2);
    done.finished_at = Some(t2);
    done.result = Some(json!({ "$out.put": 18446744073709551615u64 }));
    done.events = vec![event(TaskStatus::Succeeded, t2, 1)];

    // The later update lands first; the stale one must not undo it.
    db.store.apply(std::slice::from_ref(&done)).await.must();
    db.store.apply(std::slice::from_ref(&running)).await.must();
    let got = db.store.get(rec.id).await.must().must();
    assert_eq!(got.seq, 3);
    let r = got.record;
    assert_eq!(r.status, TaskStatus::Succeeded);
    assert_eq!(r.updated_at, t2);
    assert_eq!(r.finished_at, Some(t2));
    assert_eq!(r.result, done.result);
    // Fields only the stale update carried are not applied either.
    assert_eq!(r.started_at, None);
    assert_eq!(r.attempts, 0);
    // ... but its history is, in time order.
    let statuses: Vec<TaskStatus> = r.events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        vec![
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Succeeded
        ]
    );

    // Re-sending both (as after an ambiguous failure) changes nothing.
    db.store
        .apply(&[running.clone(), done.clone()])
        .await
        .must();
    let again = db.store.get(rec.id).await.must().must();
    assert_eq!(again.record, r);
    assert_eq!(again.seq, 3);

    // Unknown tasks and empty slices are fine.
    db.store.apply(&[]).await.must();
    db.store
        .apply(&[StatusUpdate::new(TaskId::new(), 2, TaskStatus::Running, t1)])
        .await
        .must();
    db.drop().await;
}

#[tokio::test]
async fn apply_in_one_slice_in_any_order() {
    let db = TestDb::new().await;
    let recs: Vec<TaskRecord> = (0..20).map(|_| task("q", "t", json!({}))).collect();
    db.store.insert_many(&recs).await.must();
    let mut updates = Vec::new();
    for r in &recs {
        let at = r.created_at + Duration::milliseconds(5);
        let mut dead = StatusUpdate::new(r.id, 4, TaskStatus::Dead, at + Duration::milliseconds(2));
        dead.last_error = Some("gave up".into());
        dead.events = vec![event(TaskStatus::Dead, at + Duration::milliseconds(2), 1)];
        let mut running = StatusUpdate::new(r.id, 2, TaskStatus::Running, at);
        running.events = vec![event(TaskStatus::Running, at, 1)];
        updates.push(dead);
        updates.push(running);
    }
    db.store.apply(&updates).await.must();
    for r in &recs {
        let got = db.store.get(r.id).await.must().must();
        assert_eq!(got.seq, 4);
        assert_eq!(got.record.status, TaskStatus::Dead);
        assert_eq!(got.record.last_error.as_deref(), Some("gave up"));
        assert_eq!(got.record.events.len(), 3);
    }
    db.drop().await;
}

#[tokio::test]
async fn apply_splits_large_slices() {
    let db = TestDb::new().await;
    // 6,000 updates with events = 12,000 statements: more than one command.
    let recs: Vec<TaskRecord> = (0..6_000).map(|_| task("q", "t", json!({}))).collect();
    let t = std::time::Instant::now();
    db.store.insert_many(&recs).await.must();
    eprintln!("TIMING insert_many {:?}", t.elapsed());
    let updates: Vec<StatusUpdate> = recs
        .iter()
        .map(|r| {
            let mut u = StatusUpdate::new(r.id, 2, TaskStatus::Running, r.created_at);
            u.events = vec![event(TaskStatus::Running, r.created_at, 1)];
            u
        })
        .collect();
    let t = std::time::Instant::now();
    db.store.apply(&updates).await.must();
    eprintln!("TIMING apply {:?}", t.elapsed());
    let counts = db.store.count_by_status(None).await.must();
    assert_eq!(counts[&TaskStatus::Running], 6_000);
    for r in [&recs[0], &recs[4_999], &recs[5_999]] {
        assert_eq!(
            db.store.get(r.id).await.must().must().record.events.len(),
            2
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn apply_reports_updates_the_server_refuses() {
    let db = TestDb::new().await;
    let good = task("q", "t", json!({}));
    let bad = task("q", "t", json!({}));
    db.store
        .insert_many(&[good.clone(), bad.clone()])
        .await
        .must();
    // History that is not an array cannot be appended to.
    db.store
        .database()
        .collection::<Document>("tasks")
        .update_one(
            doc! { "_id": bad.id.to_string() },
            doc! { "$set": { "events": "broken" } },
        )
        .await
        .must();
    let updates: Vec<StatusUpdate> = [&good, &bad]
        .iter()
        .map(|r| {
            let mut u = StatusUpdate::new(r.id, 2, TaskStatus::Running, now());
            u.events = vec![event(TaskStatus::Running, now(), 1)];
            u
        })
        .collect();
    match db.store.apply(&updates).await {
        Err(Error::Rejected(rs)) => {
            assert_eq!(rs.len(), 1, "{rs:?}");
            assert_eq!(rs[0].id, bad.id);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The other update was applied.
    let got = db.store.get(good.id).await.must().must();
    assert_eq!(got.record.status, TaskStatus::Running);
    assert_eq!(got.record.events.len(), 2);
    db.drop().await;
}

#[tokio::test]
async fn requeue_dead_outcomes() {
    let db = TestDb::new().await;
    assert_eq!(
        db.store.requeue_dead(TaskId::new(), now()).await.must(),
        RequeueOutcome::NotFound
    );
    let rec = task("q", "t", json!({}));
    db.store.insert(&rec).await.must();
    assert_eq!(
        db.store.requeue_dead(rec.id, now()).await.must(),
        RequeueOutcome::NotDead(TaskStatus::Queued)
    );

    let died = rec.created_at + Duration::milliseconds(50);
    let mut dead = StatusUpdate::new(rec.id, 5, TaskStatus::Dead, died);
    dead.attempts = Some(3);
    dead.finished_at = Some(died);
    dead.last_error = Some("boom".into());
    dead.events = vec![event(TaskStatus::Dead, died, 3)];
    db.store.apply(&[dead]).await.must();

    let at = died + Duration::milliseconds(50);
    let RequeueOutcome::Requeued(after) = db.store.requeue_dead(rec.id, at).await.must() else {
        panic!("expected the dead task to be requeued");
    };
    assert_eq!(after.seq, 6);
    let r = &after.record;
    assert_eq!(r.status, TaskStatus::Queued);
    assert_eq!(r.attempts, 0);
    assert_eq!(r.finished_at, None);
    assert_eq!(r.updated_at, at);
    assert_eq!(r.scheduled_at, at);
    assert_eq!(
        r.last_error.as_deref(),
        Some("boom"),
        "the last error is kept"
    );
    let last = r.events.last().must();
    assert_eq!(
        (last.status, last.at, last.attempt),
        (TaskStatus::Queued, at, 0)
    );
    assert_eq!(db.store.get(rec.id).await.must().must(), *after);

    assert_eq!(
        db.store.requeue_dead(rec.id, at).await.must(),
        RequeueOutcome::NotDead(TaskStatus::Queued)
    );
    db.drop().await;
}

#[tokio::test]
async fn ensure_indexes_is_idempotent() {
    let db = TestDb::new().await;
    db.store.ensure_indexes().await.must();
    db.store.ensure_indexes().await.must();
    let names: HashSet<String> = db
        .store
        .database()
        .collection::<Document>("tasks")
        .list_indexes()
        .await
        .must()
        .try_collect::<Vec<_>>()
        .await
        .must()
        .into_iter()
        .filter_map(|ix| ix.options.and_then(|o| o.name))
        .collect();
    for n in ["status_id", "queue_id", "type_id", "queue_status_id"] {
        assert!(names.contains(n), "missing index {n}: {names:?}");
    }
    db.drop().await;
}

#[tokio::test]
async fn index_creation_waits_for_the_server() {
    let db = TestDb::new().await;
    let proxy = ChaosProxy::start(upstream(&uri())).await;
    let proxied = Store::connect_with(
        &through(&uri(), proxy.addr()),
        &db.name,
        &StoreOptions {
            server_selection_timeout: std::time::Duration::from_millis(200),
            ..StoreOptions::default()
        },
    )
    .await
    .must();
    proxy.cut();
    let ready = Arc::new(AtomicBool::new(false));
    let job = tokio::spawn(ensure_indexes_with_retry(proxied, Arc::clone(&ready)));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(!ready.load(Ordering::Acquire), "no server, no indexes");
    proxy.restore();
    tokio::time::timeout(std::time::Duration::from_secs(30), job)
        .await
        .must()
        .must();
    assert!(ready.load(Ordering::Acquire));
    db.drop().await;
}

#[tokio::test]
async fn counts_by_status() {
    let db = TestDb::new().await;
    let empty = db.store.count_by_status(None).await.must();
    assert_eq!(empty.len(), TaskStatus::ALL.len());
    assert!(empty.values().all(|n| *n == 0));

    let mut recs = Vec::new();
    for _ in 0..3 {
        recs.push(task_in("a", "t", TaskStatus::Queued));
    }
    for _ in 0..2 {
        recs.push(task_in("a", "t", TaskStatus::Dead));
    }
    recs.push(task_in("b", "t", TaskStatus::Dead));
    recs.push(task_in("b", "t", TaskStatus::Succeeded));
    db.store.insert_many(&recs).await.must();

    let all = db.store.count_by_status(None).await.must();
    assert_eq!(all[&TaskStatus::Queued], 3);
    assert_eq!(all[&TaskStatus::Dead], 3);
    assert_eq!(all[&TaskStatus::Succeeded], 1);
    assert_eq!(all[&TaskStatus::Running], 0);

    let a = db
        .store
        .count_by_status(Some(&"a".parse().must()))
        .await
        .must();
    assert_eq!(a[&TaskStatus::Queued], 3);
    assert_eq!(a[&TaskStatus::Dead], 2);
    assert_eq!(a[&TaskStatus::Succeeded], 0);
    db.drop().await;
}

#[tokio::test]
async fn zz_timing_probe() {
    let db = TestDb::new().await;
    for total in [1_000usize, 6_000] {
        let recs: Vec<TaskRecord> = (0..total).map(|_| task("q", "t", json!({}))).collect();
        db.store.insert_many(&recs).await.must();
        let mk = |with_events: bool, seq: u64| -> Vec<StatusUpdate> {
            recs[..1000].iter().map(|r| {
                let mut u = StatusUpdate::new(r.id, seq, TaskStatus::Running, r.created_at);
                if with_events { u.events = vec![event(TaskStatus::Running, r.created_at, 1)]; }
                u
            }).collect()
        };
        let t = std::time::Instant::now();
        db.store.apply(&mk(false, 2)).await.must();
        eprintln!("TIMING {total} docs: 1000 guarded sets {:?}", t.elapsed());
        let t = std::time::Instant::now();
        db.store.apply(&mk(true, 2)).await.must();
        eprintln!("TIMING {total} docs: 1000 stale sets + 1000 addToSet {:?}", t.elapsed());
        let coll = db.store.database().collection::<Document>("tasks");
        let t = std::time::Instant::now();
        for r in &recs[..200] {
            coll.update_one(doc!{"_id": r.id.to_string()}, doc!{"$set": {"x": 1}}).await.must();
        }
        eprintln!("TIMING {total} docs: 200 update_one by _id {:?}", t.elapsed());
        let t = std::time::Instant::now();
        for r in &recs[..200] {
            coll.update_one(doc!{"_id": r.id.to_string(), "seq": {"$lt": 100}}, doc!{"$set": {"x": 2}}).await.must();
        }
        eprintln!("TIMING {total} docs: 200 update_one by _id+seq {:?}", t.elapsed());
        db.store.database().collection::<Document>("tasks").drop().await.must();
    }
    db.drop().await;
}
