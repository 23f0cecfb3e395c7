//! `Store` against a real server.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Duration;
use mongodb::bson::doc;
use serde_json::json;
use taskq_core::{Progress, QueueName, TaskId, TaskRecord, TaskStatus};
use taskq_store::{
    Error, ListFilter, ProgressReport, RETENTION_INDEX, RequeueOutcome, Retention, StatusUpdate,
    ensure_indexes_with_retry,
};

use crate::common::{Must, TestDb, history, now, task, task_in};

/// A transition made by `worker-1`.
fn transition(
    id: TaskId,
    seq: u64,
    status: TaskStatus,
    attempts: u32,
    at: chrono::DateTime<chrono::Utc>,
) -> StatusUpdate {
    StatusUpdate::transition(id, seq, status, attempts, at).by("worker-1".to_owned())
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
    rec.key = Some("customer-7".into());
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
    db.set_raw(rec.id, doc! { "payload": "{oops" }).await;
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

/// A submit's undo removes only records that still carry its own mark; a repeat that
/// took a record over (re-marked it) keeps it, and exactly one of two concurrent
/// take-overs wins.
#[tokio::test]
async fn a_taken_over_record_outlives_the_original_submits_undo() {
    let db = TestDb::new().await;
    // One submit: every record carries its mark (their creation time), to the millisecond.
    let mut recs: Vec<TaskRecord> = (0..3).map(|i| task("undo", "t", json!(i))).collect();
    let mark = recs[0].created_at;
    for r in &mut recs {
        r.created_at = mark;
    }
    db.store.insert_many(&recs).await.must();
    let stored = db.store.get(recs[0].id).await.must().must();
    assert_eq!(stored.submit_pending, Some(mark));

    let later = mark + Duration::seconds(6);
    assert!(
        db.store
            .take_over_submit(recs[0].id, mark, later)
            .await
            .must()
    );
    assert!(
        !db.store
            .take_over_submit(recs[0].id, mark, later)
            .await
            .must(),
        "a second take-over of the same mark must lose"
    );
    assert_eq!(
        db.store.get(recs[0].id).await.must().must().submit_pending,
        Some(later)
    );
    let ids: Vec<TaskId> = recs.iter().map(|r| r.id).collect();
    assert_eq!(db.store.delete_unsubmitted(&ids, mark).await.must(), 2);
    assert!(
        db.store.get(recs[0].id).await.must().is_some(),
        "the taken-over record stays"
    );
    assert!(db.store.get(recs[1].id).await.must().is_none());
    // The new owner's own undo matches its mark.
    assert_eq!(db.store.delete_unsubmitted(&ids, later).await.must(), 1);
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
        let mut t = task_in(queue, kind, status);
        if i % 4 == 0 {
            t.key = Some(format!("customer-{}", i % 8));
        }
        all.push(t);
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
        ..ListFilter::default()
    };
    let got = db.store.list(&odd_dead, 100, None).await.must();
    let want = ids(&|t| t.status == TaskStatus::Dead && t.queue.as_str() == "odd");
    assert!(!want.is_empty());
    assert_eq!(only_old(got.tasks), want);

    let customer = ListFilter {
        key: Some("customer-4".into()),
        ..ListFilter::default()
    };
    let got = db.store.list(&customer, 100, None).await.must();
    let want = ids(&|t| t.key.as_deref() == Some("customer-4"));
    assert_eq!(want.len(), 4);
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

    let running = transition(rec.id, 2, TaskStatus::Running, 1, t1);
    let done = transition(rec.id, 3, TaskStatus::Succeeded, 1, t2)
        .result(json!({ "$out.put": 18446744073709551615u64 }));

    // The later update lands first; the stale one must not undo it.
    db.store.apply(std::slice::from_ref(&done)).await.must();
    db.store.apply(std::slice::from_ref(&running)).await.must();
    let got = db.store.get(rec.id).await.must().must();
    assert_eq!(got.seq, 3);
    let r = got.record;
    assert_eq!(r.status, TaskStatus::Succeeded);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.updated_at, t2, "updated_at does not go back");
    assert_eq!(r.finished_at, Some(t2));
    assert_eq!(r.result, done.result);
    // Dates only grow: the stale update's start time is news and is kept.
    assert_eq!(r.started_at, Some(t1));
    // ... and its history is added, in time order.
    assert_eq!(
        history(&r),
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
        .apply(&[StatusUpdate::new(
            TaskId::new(),
            2,
            TaskStatus::Running,
            1,
            t1,
        )])
        .await
        .must();
    db.drop().await;
}

/// A progress report lands while its attempt runs (whether or not the record already
/// shows it running) and never once the record moved past the attempt.
#[tokio::test]
async fn progress_lands_only_while_its_attempt_runs() {
    let db = TestDb::new().await;
    let rec = task("q", "t", json!(null));
    db.store.insert(&rec).await.must();
    let t = |n: i64| rec.created_at + Duration::milliseconds(n);
    let report = |seq: u64, attempt: u32, value: serde_json::Value, at| ProgressReport {
        id: rec.id,
        seq,
        progress: Progress { attempt, value, at },
    };
    let progress = |db: &TestDb| {
        let id = rec.id;
        let store = db.store.clone();
        async move { store.get(id).await.must().must().record.progress }
    };

    // Attempt 1 started at seq 2; its `running` update is not in the record yet.
    let first = report(
        2,
        1,
        json!({"$done": 1, "total.n": 18446744073709551615u64}),
        t(5),
    );
    assert_eq!(
        db.store
            .set_progress(std::slice::from_ref(&first))
            .await
            .must(),
        1
    );
    assert_eq!(progress(&db).await, Some(first.progress.clone()));
    db.store
        .apply(&[transition(rec.id, 2, TaskStatus::Running, 1, t(1))])
        .await
        .must();
    let second = report(2, 1, json!(50), t(10));
    assert_eq!(
        db.store
            .set_progress(std::slice::from_ref(&second))
            .await
            .must(),
        1
    );
    let got = db.store.get(rec.id).await.must().must();
    assert_eq!(got.record.progress, Some(second.progress.clone()));
    assert_eq!(
        got.record.status,
        TaskStatus::Running,
        "a report moves no state"
    );
    assert_eq!(got.seq, 2);

    // The attempt failed (seq 3): its late report is dropped, the last one stays.
    db.store
        .apply(&[transition(rec.id, 3, TaskStatus::Retrying, 1, t(20))])
        .await
        .must();
    let late = report(2, 1, json!(90), t(15));
    assert_eq!(db.store.set_progress(&[late]).await.must(), 0);
    assert_eq!(progress(&db).await, Some(second.progress.clone()));

    // Attempt 2 (seq 4) replaces it; after its success (seq 5) nothing lands.
    let retry = report(4, 2, json!(10), t(30));
    assert_eq!(
        db.store
            .set_progress(std::slice::from_ref(&retry))
            .await
            .must(),
        1
    );
    db.store
        .apply(&[
            transition(rec.id, 4, TaskStatus::Running, 2, t(25)),
            transition(rec.id, 5, TaskStatus::Succeeded, 2, t(40)),
        ])
        .await
        .must();
    let after = report(4, 2, json!(100), t(35));
    let unknown = ProgressReport {
        id: TaskId::new(),
        ..after.clone()
    };
    assert_eq!(db.store.set_progress(&[after, unknown]).await.must(), 0);
    let done = db.store.get(rec.id).await.must().must().record;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.progress, Some(retry.progress));
    db.store.set_progress(&[]).await.must();
    db.drop().await;
}

/// A whole life (running, retrying, running again, dead) whose updates arrive
/// shuffled, first in one `apply` call and then spread over several.
#[tokio::test]
async fn out_of_order_updates_leave_the_newest_state() {
    let db = TestDb::new().await;
    let ms = Duration::milliseconds;
    let life = |r: &TaskRecord| -> Vec<StatusUpdate> {
        let t = |n: i64| r.created_at + ms(n);
        let run1 = transition(r.id, 2, TaskStatus::Running, 1, t(10));
        let retry = transition(r.id, 3, TaskStatus::Retrying, 1, t(20))
            .scheduled_at(t(100))
            .error("first".to_owned());
        let queued = transition(r.id, 4, TaskStatus::Queued, 1, t(100));
        let run2 = transition(r.id, 5, TaskStatus::Running, 2, t(110));
        let dead = transition(r.id, 6, TaskStatus::Dead, 2, t(120)).error("second".to_owned());
        // Newest first, the stale running update of attempt 1 last.
        vec![dead, queued, run2, retry, run1]
    };
    let check = |got: taskq_store::StoredTask, r: &TaskRecord| {
        let t = |n: i64| r.created_at + ms(n);
        assert_eq!(got.seq, 6);
        let rec = got.record;
        assert_eq!(rec.status, TaskStatus::Dead);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.updated_at, t(120));
        assert_eq!(rec.started_at, Some(t(110)));
        assert_eq!(rec.finished_at, Some(t(120)));
        assert_eq!(rec.scheduled_at, t(100));
        // Every stale update's history is there too, once, oldest first.
        let history: Vec<(TaskStatus, u32)> =
            rec.events.iter().map(|e| (e.status, e.attempt)).collect();
        assert_eq!(
            history,
            vec![
                (TaskStatus::Queued, 0),
                (TaskStatus::Running, 1),
                (TaskStatus::Retrying, 1),
                (TaskStatus::Queued, 1),
                (TaskStatus::Running, 2),
                (TaskStatus::Dead, 2),
            ]
        );
    };

    let one = task("q", "t", json!({}));
    let many = task("q", "t", json!({}));
    db.store
        .insert_many(&[one.clone(), many.clone()])
        .await
        .must();

    // All in one call (the store does not merge; the server applies them in order).
    db.store.apply(&life(&one)).await.must();
    check(db.store.get(one.id).await.must().must(), &one);

    // One call per update.
    for u in life(&many) {
        db.store.apply(std::slice::from_ref(&u)).await.must();
    }
    let got = db.store.get(many.id).await.must().must();
    check(got.clone(), &many);

    // A stale update arriving after everything: its events are still added, the state
    // and dates stay.
    let late = many.created_at + ms(5);
    let stale = StatusUpdate::transition(many.id, 2, TaskStatus::Running, 1, late)
        .by("worker-2".to_owned());
    db.store.apply(&[stale]).await.must();
    let after = db.store.get(many.id).await.must().must();
    assert_eq!(after.seq, 6);
    assert_eq!(after.record.status, TaskStatus::Dead);
    assert_eq!(after.record.attempts, 2);
    assert_eq!(after.record.started_at, got.record.started_at);
    assert_eq!(after.record.updated_at, got.record.updated_at);
    assert_eq!(after.record.events.len(), 7);
    assert_eq!(
        after.record.events[1].worker.as_deref(),
        Some("worker-2"),
        "the stale event, in time order"
    );
    db.drop().await;
}

#[tokio::test]
async fn the_live_state_is_one_subdocument() {
    let db = TestDb::new().await;
    let rec = task("q", "t", json!({}));
    db.store.insert(&rec).await.must();
    let u = transition(rec.id, 2, TaskStatus::Running, 1, now());
    db.store.apply(&[u]).await.must();
    let raw = db.raw(rec.id).await;
    assert_eq!(
        raw.get_document("st").must(),
        &doc! { "seq": 2_i64, "status": "running", "attempts": 1_i64 }
    );
    for gone in ["status", "attempts", "seq"] {
        assert!(!raw.contains_key(gone), "top-level `{gone}` in {raw}");
    }
    db.drop().await;
}

#[tokio::test]
async fn apply_in_one_slice_in_any_order() {
    let db = TestDb::new().await;
    let recs = db.insert_queued(20).await;
    let mut updates = Vec::new();
    for r in &recs {
        let at = r.created_at + Duration::milliseconds(5);
        let dead = transition(r.id, 4, TaskStatus::Dead, 1, at + Duration::milliseconds(2))
            .error("gave up".to_owned());
        let running = transition(r.id, 2, TaskStatus::Running, 1, at);
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
    // 12,000 updates = 12,000 statements: more than one command. Every statement finds
    // its record through the `_id` index, so this stays fast on mongo-java-server too.
    let recs = db.insert_queued(12_000).await;
    let updates: Vec<StatusUpdate> = recs
        .iter()
        .map(|r| transition(r.id, 2, TaskStatus::Running, 1, r.created_at))
        .collect();
    let started = std::time::Instant::now();
    db.store.apply(&updates).await.must();
    eprintln!("apply of 12,000 updates took {:?}", started.elapsed());
    let counts = db.store.count_by_status(None).await.must();
    assert_eq!(counts[&TaskStatus::Running], 12_000);
    // First and last statements of the first command, first and last of the second.
    for r in [&recs[0], &recs[9_999], &recs[10_000], &recs[11_999]] {
        let got = db.store.get(r.id).await.must().must();
        assert_eq!(got.record.status, TaskStatus::Running);
        assert_eq!(got.record.attempts, 1);
        assert_eq!(got.record.events.len(), 2);
    }
    db.drop().await;
}

#[tokio::test]
async fn apply_reports_updates_the_server_refuses() {
    let db = TestDb::new().await;
    let (good, bad) = db.good_and_poisoned().await;
    let updates: Vec<StatusUpdate> = [&good, &bad]
        .iter()
        .map(|r| transition(r.id, 2, TaskStatus::Running, 1, now()))
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
    let dead = transition(rec.id, 5, TaskStatus::Dead, 3, died).error("boom".to_owned());
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

    // The live state keeps its field order and types, so later updates still compare
    // by seq: the late dead update of the old run loses, the next run wins.
    let raw = db.raw(rec.id).await;
    assert_eq!(
        raw.get_document("st").must(),
        &doc! { "seq": 6_i64, "status": "queued", "attempts": 0_i64 }
    );
    let run = at + Duration::milliseconds(10);
    let stale = StatusUpdate::new(rec.id, 5, TaskStatus::Dead, 3, died);
    let running = StatusUpdate::new(rec.id, 7, TaskStatus::Running, 1, run);
    db.store.apply(&[running, stale]).await.must();
    let got = db.store.get(rec.id).await.must().must();
    assert_eq!(got.seq, 7);
    assert_eq!(
        (
            got.record.status,
            got.record.attempts,
            got.record.updated_at
        ),
        (TaskStatus::Running, 1, run)
    );
    db.drop().await;
}

#[tokio::test]
async fn ensure_indexes_is_idempotent() {
    let db = TestDb::new().await;
    db.store.ensure_indexes().await.must();
    db.store.ensure_indexes().await.must();
    let names: HashSet<String> = db
        .indexes()
        .await
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
    let (proxy, proxied) = db.proxied(std::time::Duration::from_millis(200)).await;
    proxy.cut();
    let ready = Arc::new(AtomicBool::new(false));
    let week = std::time::Duration::from_secs(7 * 86_400);
    let job = tokio::spawn(ensure_indexes_with_retry(
        proxied,
        Some(Retention::For(week)),
        Arc::clone(&ready),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(!ready.load(Ordering::Acquire), "no server, no indexes");
    proxy.restore();
    tokio::time::timeout(std::time::Duration::from_secs(30), job)
        .await
        .must()
        .must();
    assert!(ready.load(Ordering::Acquire));
    assert_eq!(db.store.retention().await.must(), Some(Some(week)));
    db.drop().await;
}

#[tokio::test]
async fn the_retention_ttl_index_follows_the_setting() {
    let db = TestDb::new().await;
    db.store.ensure_indexes().await.must();
    assert_eq!(db.store.retention().await.must(), None);
    let hour = std::time::Duration::from_secs(3600);
    db.store.ensure_retention(Retention::For(hour)).await.must();
    db.store.ensure_retention(Retention::For(hour)).await.must();
    let minute = std::time::Duration::from_secs(60);
    db.store
        .ensure_retention(Retention::For(minute))
        .await
        .must();
    // One index, on `finished_at`, with the latest lifetime (servers without `collMod`
    // get it dropped and re-created).
    let indexes = db.indexes().await;
    let retention: Vec<_> = indexes
        .iter()
        .filter(|ix| {
            ix.options
                .as_ref()
                .is_some_and(|o| o.name.as_deref() == Some(RETENTION_INDEX))
        })
        .collect();
    assert_eq!(retention.len(), 1, "{indexes:?}");
    assert_eq!(retention[0].keys, doc! { "finished_at": 1 });
    assert_eq!(
        retention[0].options.as_ref().and_then(|o| o.expire_after),
        Some(minute)
    );
    // Keeping records forever drops it; the query indexes stay.
    db.store.ensure_retention(Retention::Forever).await.must();
    assert_eq!(db.store.retention().await.must(), None);
    db.store.ensure_retention(Retention::Forever).await.must();
    let left = db.indexes().await;
    assert_eq!(left.len(), indexes.len() - 1, "{left:?}");
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
