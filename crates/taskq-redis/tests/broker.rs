//! The broker's scripts against real Redis: a single server and a three-master cluster.

use std::collections::HashSet;
use std::time::Duration;

use taskq_core::{Limits, NewTask, QueueName, TaskId, TaskRecord, TaskStatus};
use taskq_redis::keys::task_hash;
use taskq_redis::{
    Broker, CallId, EnqueueItem, FailOutcome, Leased, OutboxEntry, QueueKeys, QueueLimits,
    RedisConfig,
};
use taskq_testkit::{RedisCluster, RedisServer};

fn record(queue: &str, priority: &str, delay_ms: Option<i64>) -> TaskRecord {
    let req: NewTask = serde_json::from_value(serde_json::json!({
        "type": "t", "queue": queue, "priority": priority, "delay_ms": delay_ms,
        "max_attempts": 2,
    }))
    .expect("request");
    Limits::default()
        .admit(req, taskq_core::now(), None)
        .expect("valid")
}

/// The first enqueue of each record.
fn items(recs: &[TaskRecord]) -> Vec<EnqueueItem> {
    recs.iter()
        .map(|r| EnqueueItem::from_record(r, 1))
        .collect()
}

/// Fails `l`'s attempt with `error`, to be retried in a minute.
async fn retry_later(broker: &Broker, queue: &QueueName, l: &Leased, error: &str) {
    let due = FailOutcome::RetryAt(taskq_core::now_ms() + 60_000);
    broker
        .fail(queue, "w1", &[(l.msg.id, l.token.as_str(), due, error)])
        .await
        .expect("fail");
}

/// Gives `l` back to its queue.
async fn release(broker: &Broker, queue: &QueueName, l: &Leased) {
    broker
        .release(queue, "w1", &[(l.msg.id, l.token.as_str())])
        .await
        .expect("release");
}

fn q(name: &str) -> QueueName {
    name.parse().expect("queue")
}

async fn single() -> (RedisServer, Broker) {
    let server = RedisServer::start();
    let broker = Broker::connect(&RedisConfig::from_urls(&server.url(), false))
        .await
        .expect("connect");
    (server, broker)
}

async fn cluster() -> (RedisCluster, Broker) {
    let cluster = RedisCluster::start();
    let broker = Broker::connect(&RedisConfig::from_urls(&cluster.urls().join(","), true))
        .await
        .expect("connect");
    (cluster, broker)
}

/// Priorities, lease tokens, retries, release and idempotent enqueue on one broker.
async fn lifecycle(broker: &Broker, queue: &str) {
    let recs: Vec<TaskRecord> = ["low", "normal", "high", "normal"]
        .iter()
        .map(|p| record(queue, p, None))
        .collect();
    let items = items(&recs);
    assert_eq!(
        broker.enqueue(&items).await.expect("enqueue"),
        vec![true; 4]
    );
    // Enqueueing the same ids again adds nothing (recovery relies on this).
    assert_eq!(
        broker.enqueue(&items).await.expect("enqueue"),
        vec![false; 4]
    );

    let leased = lease_for(broker, &q(queue), 10, Duration::from_secs(30), "w1").await;
    let order: Vec<TaskId> = leased.iter().map(|l| l.msg.id).collect();
    assert_eq!(order, vec![recs[2].id, recs[1].id, recs[3].id, recs[0].id]);
    assert!(
        leased
            .iter()
            .all(|l| l.attempt == 1 && l.seq == 2 && l.queued_at_ms > 0)
    );
    let counts = broker.counts(&q(queue)).await.expect("counts");
    assert_eq!((counts.queued, counts.running), (0, 4));

    // A stale token is refused; the right one acknowledges once.
    let first = &leased[0];
    let ack_first = async |worker: &str, token: &str| {
        broker
            .ack(&q(queue), worker, &[(first.msg.id, token, None)])
            .await
            .expect("ack")
    };
    assert_eq!(ack_first("w9", "w9:1").await, vec![None]);
    assert_eq!(ack_first("w1", first.token.as_str()).await, vec![Some(3)]);
    assert_eq!(ack_first("w1", first.token.as_str()).await, vec![None]);

    // Fail one into the retry set, kill another, release the last.
    let due = taskq_core::now_ms() + 50;
    let seqs = broker
        .fail(
            &q(queue),
            "w1",
            &[
                (
                    leased[1].msg.id,
                    leased[1].token.as_str(),
                    FailOutcome::RetryAt(due),
                    "boom",
                ),
                (
                    leased[2].msg.id,
                    leased[2].token.as_str(),
                    FailOutcome::Dead,
                    "bang",
                ),
            ],
        )
        .await
        .expect("fail");
    assert_eq!(seqs, vec![Some(3), Some(3)]);
    assert_eq!(
        broker
            .release(
                &q(queue),
                "w1",
                &[(leased[3].msg.id, leased[3].token.as_str())]
            )
            .await
            .expect("release"),
        vec![Some(3)]
    );
    let counts = broker.counts(&q(queue)).await.expect("counts");
    assert_eq!((counts.queued, counts.retrying, counts.running), (1, 1, 0));

    // The released task comes back first and its attempt was not counted.
    let again = lease_for(broker, &q(queue), 1, Duration::from_secs(30), "w2").await;
    assert_eq!(again[0].msg.id, leased[3].msg.id);
    assert_eq!(again[0].attempt, 1);

    tokio::time::sleep(Duration::from_millis(60)).await;
    let promoted = broker
        .promote(&q(queue), taskq_core::now_ms(), 100)
        .await
        .expect("promote");
    assert_eq!(promoted.len(), 1);
    assert!(promoted[0].from_retry);
    assert_eq!(promoted[0].id, leased[1].msg.id);
    let retry = lease_for(broker, &q(queue), 1, Duration::from_secs(30), "w2").await;
    assert_eq!(retry[0].attempt, 2);

    // Running tasks are not removed (their attempts are under way): the remove reports
    // them, and their leases still expire as any other's.
    let mut left = broker
        .remove(&[(q(queue), retry[0].msg.id), (q(queue), again[0].msg.id)])
        .await
        .expect("remove")
        .taken;
    left.sort();
    let mut running = vec![retry[0].msg.id, again[0].msg.id];
    running.sort();
    assert_eq!(left, running);
    let reaped = broker
        .reap(&q(queue), taskq_core::now_ms() + 60_000, 100)
        .await
        .expect("reap");
    assert_eq!(reaped.len(), 2, "{reaped:?}");

    // A removed queued task is skipped by every script.
    let gone = record(queue, "normal", None);
    broker
        .enqueue(&[EnqueueItem::from_record(&gone, 1)])
        .await
        .expect("enqueue");
    assert!(
        broker
            .remove(&[(q(queue), gone.id)])
            .await
            .expect("remove")
            .taken
            .is_empty()
    );
    let (_, present) = broker
        .present(&q(queue), &[gone.id])
        .await
        .expect("present");
    assert_eq!(present, vec![false]);
}

/// Runs `calls` concurrently; returns every item they returned, in call order.
async fn gather<T, E: std::fmt::Debug>(
    calls: impl IntoIterator<Item = impl Future<Output = Result<Vec<T>, E>>>,
) -> Vec<T> {
    let mut all = Vec::new();
    for r in futures::future::join_all(calls).await {
        all.extend(r.expect("a concurrent call"));
    }
    all
}

/// Many concurrent reapers and promoters each take a task at most once.
async fn concurrent_maintenance(broker: &Broker, queue: &str) {
    let recs: Vec<TaskRecord> = (0..300)
        .map(|_| record(queue, "normal", Some(300)))
        .collect();
    let items = items(&recs);
    broker.enqueue(&items).await.expect("enqueue");
    assert_eq!(
        broker.counts(&q(queue)).await.expect("counts").scheduled,
        300
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let now = taskq_core::now_ms();
    let qn = q(queue);
    let mut promoted = gather((0..8).map(|_| broker.promote(&qn, now, 50))).await;
    // Whatever is left after eight callers of 50 each.
    promoted.extend(broker.promote(&q(queue), now, 1000).await.expect("promote"));
    let ids: HashSet<TaskId> = promoted.iter().map(|p| p.id).collect();
    assert_eq!(promoted.len(), 300);
    assert_eq!(ids.len(), 300);

    let leased = lease_for(broker, &q(queue), 300, Duration::from_millis(1), "w").await;
    assert_eq!(leased.len(), 300);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let now = taskq_core::now_ms();
    let mut reaped = gather((0..8).map(|_| broker.reap(&qn, now, 40))).await;
    reaped.extend(broker.reap(&q(queue), now, 1000).await.expect("reap"));
    let ids: HashSet<TaskId> = reaped.iter().map(|r| r.id).collect();
    assert_eq!((reaped.len(), ids.len()), (300, 300));
    assert!(reaped.iter().all(|r| r.requeued && r.attempts == 1));
    // The expired workers' acknowledgements are refused.
    let acks: Vec<(TaskId, &str, Option<&serde_json::Value>)> = leased
        .iter()
        .map(|l| (l.msg.id, l.token.as_str(), None))
        .collect();
    assert!(
        broker
            .ack(&q(queue), "w", &acks)
            .await
            .expect("ack")
            .iter()
            .all(Option::is_none)
    );
    // Second expiry on the last attempt: dead, out of Redis.
    let leased = lease_for(broker, &q(queue), 300, Duration::from_millis(1), "w").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let reaped = broker
        .reap(&q(queue), taskq_core::now_ms(), 1000)
        .await
        .expect("reap");
    assert_eq!(leased.len(), 300);
    assert!(reaped.iter().all(|r| !r.requeued && r.attempts == 2));
    let c = broker.counts(&q(queue)).await.expect("counts");
    assert_eq!(c.queued + c.running + c.scheduled + c.retrying, 0);
}

/// Of many concurrent claims on one idempotency key exactly one wins; only the holder
/// can keep or drop its claim; a claim lapses after its hold.
async fn idempotency_claims(broker: &Broker, queue: &str) {
    let qn = q(queue);
    let ids: Vec<TaskId> = (0..16).map(|_| TaskId::new()).collect();
    let claims = ids
        .iter()
        .map(|id| broker.claim_idempotency_key(&qn, "k", *id, Duration::from_secs(30)));
    let answers: Vec<Option<TaskId>> = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(|r| r.expect("claim"))
        .collect();
    let winners: Vec<TaskId> = ids
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_none())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = winners[0];
    assert!(answers.iter().flatten().all(|h| *h == winner));
    let loser = ids
        .iter()
        .find(|id| **id != winner)
        .copied()
        .expect("a loser");
    let claim = async |id: TaskId| {
        broker
            .claim_idempotency_key(&qn, "k", id, Duration::from_secs(30))
            .await
            .expect("claim")
    };
    let drop_claim = async |id: TaskId| {
        broker
            .drop_idempotency_claim(&qn, "k", id)
            .await
            .expect("drop")
    };
    let keep_claim = async |id: TaskId, hold: Duration| {
        broker
            .keep_idempotency_claim(&qn, "k", id, hold)
            .await
            .expect("keep")
    };
    assert!(!drop_claim(loser).await);
    assert!(!keep_claim(loser, Duration::from_secs(1)).await);
    // The winner shortens its claim; it lapses and the key is free again.
    assert!(keep_claim(winner, Duration::from_millis(50)).await);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let next = TaskId::new();
    assert_eq!(claim(next).await, None);
    assert!(drop_claim(next).await);
    assert_eq!(claim(winner).await, None);
}

/// Every transition lands in the outbox in the same step; a writer that reads entries and
/// dies leaves them to another writer's claim; acknowledged entries are trimmed; stopped
/// writers are swept; a full outbox stops the dequeue.
async fn outbox(broker: &Broker, queue: &str) {
    let qn = q(queue);
    broker.outbox_join(&qn).await.expect("join");
    broker
        .outbox_join(&qn)
        .await
        .expect("joining twice is fine");
    let recs: Vec<TaskRecord> = (0..4).map(|_| record(queue, "normal", None)).collect();
    let items = items(&recs);
    broker.enqueue(&items).await.expect("enqueue");
    let leased = lease_for(broker, &qn, 4, Duration::from_secs(30), "w1").await;
    let result = serde_json::json!({"n": 123456789012345678_u64});
    broker
        .ack(
            &qn,
            "w1",
            &[(leased[0].msg.id, leased[0].token.as_str(), Some(&result))],
        )
        .await
        .expect("ack");
    retry_later(broker, &qn, &leased[1], "a|b \"c\"").await;
    broker
        .ack_cancelled(&qn, "w1", &[(leased[2].msg.id, leased[2].token.as_str())])
        .await
        .expect("cancel");
    release(broker, &qn, &leased[3]).await;

    // A writer reads everything and dies without acknowledging.
    let mut dead = broker.outbox_reader(&qn, "dead").await.expect("reader");
    let read: Vec<OutboxEntry> = dead.read(100, false).await.expect("read");
    assert_eq!(read.len(), 5, "{read:#?}");
    let running = &read[0].updates;
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|u| u.status == TaskStatus::Running
        && u.seq == 2
        && u.attempts == 1
        && u.worker.as_deref() == Some("w1")));
    let done: Vec<_> = read[1..].iter().map(|e| e.updates[0].clone()).collect();
    assert_eq!(
        done.iter()
            .map(|u| (u.status, u.seq, u.attempts))
            .collect::<Vec<_>>(),
        vec![
            (TaskStatus::Succeeded, 3, 1),
            (TaskStatus::Retrying, 3, 1),
            (TaskStatus::Cancelled, 3, 1),
            (TaskStatus::Queued, 3, 0),
        ]
    );
    assert_eq!(
        done[0].result.as_deref(),
        Some(r#"{"n":123456789012345678}"#)
    );
    assert_eq!(done[1].error.as_deref(), Some("a|b \"c\""));
    assert!(done[1].due_ms.is_some());
    // Nothing new for anyone.
    let mut other = broker.outbox_reader(&qn, "other").await.expect("reader");
    assert!(other.read(100, false).await.expect("read").is_empty());

    // Not idle long enough: nothing to claim. Then everything is claimable.
    let (_, none) = broker
        .outbox_claim(&qn, "other", Duration::from_secs(60), "0-0", 100)
        .await
        .expect("claim");
    assert!(none.is_empty());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (next, claimed) = broker
        .outbox_claim(&qn, "other", Duration::from_millis(10), "0-0", 100)
        .await
        .expect("claim");
    assert_eq!(next, "0-0");
    assert_eq!(claimed, read);
    let ids: Vec<&str> = claimed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(broker.outbox_ack(&qn, &ids).await.expect("ack"), 5);
    // Acknowledged entries are trimmed, the newest too: an empty outbox is an applied one.
    assert_eq!(broker.outbox_len(&qn).await.expect("len"), 0);

    // A writer restarted under its name first re-reads what it had not acknowledged.
    let again = lease_for(broker, &qn, 1, Duration::from_secs(30), "w1").await;
    assert_eq!(again.len(), 1);
    let mut first = broker
        .outbox_reader(&qn, "restarted")
        .await
        .expect("reader");
    let got = first.read(100, false).await.expect("read");
    assert_eq!(got.len(), 1);
    let mut restarted = broker
        .outbox_reader(&qn, "restarted")
        .await
        .expect("reader");
    assert_eq!(restarted.read(100, false).await.expect("read"), got);
    assert!(restarted.read(100, false).await.expect("read").is_empty());
    broker
        .outbox_ack(&qn, &[got[0].id.as_str()])
        .await
        .expect("ack");

    // Writers without pending entries that stopped reading are removed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        broker
            .outbox_sweep(&qn, Duration::from_millis(10))
            .await
            .expect("sweep"),
        3
    );

    // A full outbox holds the dequeue back: one task taken without a cap leaves its
    // `running` update unapplied, then a cap at the outbox's length holds the next one.
    let more: Vec<TaskRecord> = (0..2).map(|_| record(queue, "normal", None)).collect();
    broker
        .enqueue(
            &more
                .iter()
                .map(|r| EnqueueItem::from_record(r, 1))
                .collect::<Vec<_>>(),
        )
        .await
        .expect("enqueue");
    let taken = broker
        .dequeue(&mut CallId::new(), &qn, 1, Duration::from_secs(30), "w1", 0)
        .await
        .expect("dequeue");
    assert_eq!(taken.tasks.len(), 1);
    let len = broker.outbox_len(&qn).await.expect("len") as usize;
    assert!(len >= 1);
    let held = broker
        .dequeue(
            &mut CallId::new(),
            &qn,
            1,
            Duration::from_secs(30),
            "w1",
            len.max(1),
        )
        .await
        .expect("dequeue");
    assert!(held.tasks.is_empty() && held.limited);

    // Presence and the epoch: every enqueue set it (if absent).
    let (epoch, present) = broker
        .present(&qn, &[leased[1].msg.id, leased[0].msg.id, TaskId::new()])
        .await
        .expect("present");
    assert!(epoch > 0 && epoch <= taskq_core::now_ms());
    assert_eq!(present, vec![true, false, false]);
}

/// A dequeue call repeated under its name (its reply was lost) answers with the tasks
/// the first run leased and still holds, and leases nothing more.
async fn repeated_dequeue_calls(broker: &Broker, queue: &str) {
    let qn = q(queue);
    let recs: Vec<TaskRecord> = (0..3).map(|_| record(queue, "normal", None)).collect();
    broker.enqueue(&items(&recs)).await.expect("enqueue");
    let mut call = CallId::new();
    let lease = Duration::from_secs(30);
    let first = broker
        .dequeue(&mut call, &qn, 2, lease, "w1", 0)
        .await
        .expect("dequeue");
    assert_eq!(first.tasks.len(), 2);
    let same = |d: &taskq_redis::Dequeued| -> Vec<(TaskId, u32, u64, String)> {
        d.tasks
            .iter()
            .map(|l| (l.msg.id, l.attempt, l.seq, l.token.clone()))
            .collect()
    };
    let again = broker
        .dequeue(&mut call, &qn, 2, lease, "w1", 0)
        .await
        .expect("repeat");
    assert_eq!(same(&again), same(&first));
    let counts = broker.counts(&qn).await.expect("counts");
    assert_eq!((counts.queued, counts.running), (1, 2));
    // A task acknowledged since is no longer the call's.
    let done = &first.tasks[0];
    broker
        .ack(&qn, "w1", &[(done.msg.id, done.token.as_str(), None)])
        .await
        .expect("ack");
    let after_ack = broker
        .dequeue(&mut call, &qn, 2, lease, "w1", 0)
        .await
        .expect("repeat");
    assert_eq!(same(&after_ack), same(&first)[1..].to_vec());
    // Another call takes the rest.
    let rest = broker
        .dequeue(&mut CallId::new(), &qn, 2, lease, "w1", 0)
        .await
        .expect("dequeue");
    assert_eq!(rest.tasks.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_on_a_single_redis() {
    let (server, broker) = single().await;
    task_keys(&broker, "keyed", &[server.url()]).await;
    a_lost_head_does_not_block_its_key(&broker, &server.url()).await;
    a_key_with_lost_or_wrong_backlog_sizes_keeps_its_order(&broker, &server.url()).await;
    lifecycle(&broker, "default").await;
    outbox(&broker, "outbox").await;
    concurrent_maintenance(&broker, "bulk").await;
    idempotency_claims(&broker, "default").await;
    repeated_dequeue_calls(&broker, "calls").await;
    assert_eq!(
        broker.queues().await.expect("queues"),
        vec![
            q("bulk"),
            q("calls"),
            q("default"),
            q("keyed"),
            q("lost"),
            q("outbox"),
            q("sizes")
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_on_a_redis_cluster() {
    let (cluster, broker) = cluster().await;
    for name in ["keyed", "keyed2", "keyed3"] {
        task_keys(&broker, name, &cluster.urls()).await;
    }
    // Several queues, so the keys spread over the cluster's slots and nodes.
    for name in ["default", "emails", "critical", "reports"] {
        lifecycle(&broker, name).await;
    }
    concurrent_maintenance(&broker, "bulk").await;
    for name in ["outbox", "outbox2", "outbox3"] {
        outbox(&broker, name).await;
    }
    for name in ["default", "emails", "critical"] {
        idempotency_claims(&broker, name).await;
        repeated_dequeue_calls(&broker, &format!("calls-{name}")).await;
    }
    // A batch across queues goes to several nodes in one call.
    let recs: Vec<TaskRecord> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| record(n, "high", None))
        .collect();
    let items = items(&recs);
    assert_eq!(
        broker.enqueue(&items).await.expect("enqueue"),
        vec![true; 5]
    );
}

/// Every field a task hash holds in any live state (scheduled, queued, running, flagged
/// for cancellation, retrying, released, a flow's waiting failure handler) is one of
/// `keys::task_hash::ALL`.
#[tokio::test(flavor = "multi_thread")]
async fn task_hashes_hold_only_the_listed_fields() {
    let (server, broker) = single().await;
    let qn = q("fields");
    let recs: Vec<TaskRecord> = (0..4)
        .map(|_| record("fields", "normal", None))
        .chain([record("fields", "low", Some(60_000))])
        .collect();
    // The one that stays running has a key.
    let mut recs = recs;
    recs[3].key = Some("customer-1".into());
    let items = items(&recs);
    broker.enqueue(&items).await.expect("enqueue");
    let leased = lease_for(&broker, &qn, 4, Duration::from_secs(30), "w1").await;
    assert_eq!(leased.len(), 4);
    // One stays running and is flagged, one retries, one is released, one stays running.
    assert_eq!(
        broker.cancel(&qn, leased[0].msg.id).await.expect("cancel"),
        taskq_redis::CancelOutcome::Signalled
    );
    retry_later(&broker, &qn, &leased[1], "boom").await;
    release(&broker, &qn, &leased[2]).await;
    // And a flow's waiting failure handler.
    let handler = record("fields", "normal", None);
    broker
        .flow_register(&[taskq_redis::flow::Waiting {
            item: EnqueueItem::from_record(&handler, 1),
            deps: vec![(qn.clone(), TaskId::new())],
            on_failure: true,
        }])
        .await
        .expect("register");
    let recs: Vec<TaskRecord> = recs.into_iter().chain([handler]).collect();

    let client = redis::Client::open(server.url()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let keys = QueueKeys::new(&qn);
    let mut seen = std::collections::BTreeSet::new();
    for r in &recs {
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(keys.task(&r.id))
            .query_async(&mut c)
            .await
            .expect("hkeys");
        assert!(!fields.is_empty(), "task {} has no hash", r.id);
        seen.extend(fields);
    }
    let unlisted: Vec<&String> = seen
        .iter()
        .filter(|f| !task_hash::ALL.contains(&f.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "fields missing from task_hash::ALL: {unlisted:?}"
    );
    // And the list holds nothing the scripts never write.
    let unused: Vec<&&str> = task_hash::ALL
        .iter()
        .filter(|f| !seen.contains(**f))
        .collect();
    assert!(unused.is_empty(), "listed but never written: {unused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wake_listener_wakes_on_enqueue_and_times_out_otherwise() {
    let (_server, broker) = single().await;
    let mut wake = broker
        .wake_listener(&[q("default"), q("other")])
        .await
        .expect("listener");
    assert!(!wake.wait(Duration::from_millis(200)).await);
    let rec = record("other", "normal", None);
    broker
        .enqueue(&[EnqueueItem::from_record(&rec, 1)])
        .await
        .expect("enqueue");
    assert!(wake.wait(Duration::from_secs(5)).await);
    // A scheduled task wakes nobody until it is promoted.
    let later = record("default", "normal", Some(60_000));
    broker
        .enqueue(&[EnqueueItem::from_record(&later, 1)])
        .await
        .expect("enqueue");
    assert!(!wake.wait(Duration::from_millis(300)).await);
}

/// Flow scripts across two queues: a task waiting on two dependencies of another queue
/// is queued only by the second success, once (settling again, or registering again as
/// recovery does, changes nothing); a task waiting on one that died is cancelled with the
/// reason; every change's update is in the dependent queue's outbox.
async fn flow(broker: &Broker, deps_queue: &str, queue: &str) {
    use taskq_redis::flow::{Finished, Waiting};
    let wait = |r: &TaskRecord, deps: Vec<(QueueName, TaskId)>, on_failure| Waiting {
        item: EnqueueItem::from_record(r, 1),
        deps,
        on_failure,
    };
    let (dq, qn) = (q(deps_queue), q(queue));
    broker.outbox_join(&qn).await.expect("join");
    let (d1, d2, d3) = (TaskId::new(), TaskId::new(), TaskId::new());
    let joined = record(queue, "normal", None);
    let doomed = record(queue, "high", None);
    let both = vec![(dq.clone(), d1), (dq.clone(), d2)];
    let registered = broker
        .flow_register(&[
            wait(&joined, both.clone(), false),
            wait(&doomed, vec![(dq.clone(), d3)], false),
        ])
        .await
        .expect("register");
    assert_eq!(registered, vec![true, true]);
    // A waiting task is present (the submit check keeps it) but not runnable.
    let (_, present) = broker
        .present(&qn, &[joined.id, doomed.id])
        .await
        .expect("present");
    assert_eq!(present, vec![true, true]);
    assert_eq!(broker.counts(&qn).await.expect("counts").queued, 0);

    let ok = |d| [(d, Finished::Succeeded)];
    let settle = async |finished: &[(TaskId, Finished)]| {
        broker.flow_settle(&dq, finished).await.expect("settle")
    };
    assert_eq!(settle(&ok(d1)).await, (0, 0));
    assert_eq!(settle(&ok(d1)).await, (0, 0));
    let died = [(d3, Finished::Died(format!("dependency {d3} died")))];
    assert_eq!(settle(&died).await, (0, 1));
    assert_eq!(settle(&died).await, (0, 0));
    let (_, present) = broker
        .present(&qn, &[joined.id, doomed.id])
        .await
        .expect("present");
    assert_eq!(present, vec![true, false]);
    // Registered again (Redis holds it: left alone) and d1 settled again: still waiting.
    let again = broker
        .flow_register(&[wait(&joined, both, false)])
        .await
        .expect("register again");
    assert_eq!(again, vec![false]);
    assert_eq!(settle(&ok(d1)).await, (0, 0));
    assert_eq!(broker.counts(&qn).await.expect("counts").queued, 0);
    // The last dependency succeeds: queued, once.
    assert_eq!(settle(&ok(d2)).await, (1, 0));
    assert_eq!(settle(&ok(d2)).await, (0, 0));
    let leased = lease_for(broker, &qn, 2, Duration::from_secs(30), "w1").await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].msg.id, joined.id);

    let mut reader = broker.outbox_reader(&qn, "w").await.expect("reader");
    let updates: Vec<(TaskId, u64, TaskStatus, Option<String>)> = reader
        .read(100, false)
        .await
        .expect("read")
        .iter()
        .flat_map(|e| &e.updates)
        .map(|u| (u.id, u.seq, u.status, u.error.clone()))
        .collect();
    assert_eq!(
        updates,
        vec![
            (
                doomed.id,
                2,
                TaskStatus::Cancelled,
                Some(format!("dependency {d3} died"))
            ),
            (joined.id, 2, TaskStatus::Queued, None),
            (joined.id, 3, TaskStatus::Running, None),
        ]
    );

    // Failure handlers: one runs when a dependency dies, the other is cancelled when all
    // of its dependencies succeeded.
    let (e1, e2) = (TaskId::new(), TaskId::new());
    let runs = record(queue, "normal", None);
    let idle = record(queue, "normal", None);
    broker
        .flow_register(&[
            wait(&runs, vec![(dq.clone(), e1), (dq.clone(), e2)], true),
            wait(&idle, vec![(dq.clone(), e1)], true),
        ])
        .await
        .expect("register handlers");
    assert_eq!(settle(&ok(e1)).await, (0, 1));
    let why = format!("dependency {e2} died");
    let died = [(e2, Finished::Died(why.clone()))];
    assert_eq!(settle(&died).await, (1, 0));
    assert_eq!(settle(&died).await, (0, 0));
    let updates: Vec<(TaskId, TaskStatus, Option<String>)> = reader
        .read(100, false)
        .await
        .expect("read")
        .iter()
        .flat_map(|e| &e.updates)
        .map(|u| (u.id, u.status, u.error.clone()))
        .collect();
    assert_eq!(
        updates,
        vec![
            (
                idle.id,
                TaskStatus::Cancelled,
                Some("every task of the flow succeeded".to_owned())
            ),
            (runs.id, TaskStatus::Queued, Some(why)),
        ]
    );

    // A dependency that finishes while its dependent registers: whichever of the two
    // runs first, settling the dependency again once the registration returned (as the
    // api does) queues the dependent.
    let taken = lease_for(broker, &qn, 10, Duration::from_secs(30), "w1").await;
    assert_eq!(taken.len(), 1, "{taken:?}");
    for _ in 0..50 {
        let dep = TaskId::new();
        let late = record(queue, "normal", None);
        let (waiting, finished) = ([wait(&late, vec![(dq.clone(), dep)], false)], ok(dep));
        let (registered, _) = tokio::join!(broker.flow_register(&waiting), settle(&finished));
        assert_eq!(registered.expect("register"), vec![true]);
        settle(&ok(dep)).await;
        let taken = lease_for(broker, &qn, 10, Duration::from_secs(30), "w1").await;
        let ids: Vec<TaskId> = taken.iter().map(|l| l.msg.id).collect();
        assert_eq!(
            ids,
            vec![late.id],
            "the dependent of a settled dependency waits"
        );
    }

    // A settle forgets the members it told, not one linked after its read.
    let dep = TaskId::new();
    let member = |id: TaskId| format!("{queue} {id}");
    let (told, linked) = (TaskId::new(), TaskId::new());
    broker
        .flow_link(&dq, &[(dep.to_string(), member(told))])
        .await
        .expect("link");
    let read = broker.flow_children(&dq, &[dep]).await.expect("children");
    broker
        .flow_link(&dq, &[(dep.to_string(), member(linked))])
        .await
        .expect("link");
    let read: Vec<(TaskId, &str)> = read[0].iter().map(|m| (dep, m.as_str())).collect();
    broker.flow_forget(&dq, &read).await.expect("forget");
    assert_eq!(
        broker.flow_children(&dq, &[dep]).await.expect("children"),
        vec![vec![member(linked)]]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flow_scripts_release_and_cancel_waiting_tasks_once() {
    let (_server, broker) = single().await;
    flow(&broker, "deps", "flow").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flow_scripts_work_across_queues_on_a_cluster() {
    let (_cluster, broker) = cluster().await;
    flow(&broker, "deps", "flow").await;
}

/// An undone flow submit (REMOVE of every task it registered, as the api's undo does)
/// leaves no flow set of its tasks behind: neither the waiting task's unmet set nor the
/// root's dependents set, nor their hashes.
#[tokio::test(flavor = "multi_thread")]
async fn removing_flow_tasks_removes_their_flow_sets() {
    use taskq_redis::flow::Waiting;
    let (server, broker) = single().await;
    let qn = q("undone");
    let root = record("undone", "normal", None);
    let mut dependent = record("undone", "normal", None);
    dependent.key = Some("customer-1".into());
    broker
        .flow_register(&[Waiting {
            item: EnqueueItem::from_record(&dependent, 1),
            deps: vec![(qn.clone(), root.id)],
            on_failure: false,
        }])
        .await
        .expect("register");
    broker
        .enqueue(&[EnqueueItem::from_record(&root, 1)])
        .await
        .expect("enqueue");
    let keys = |pattern: String| {
        let url = server.url();
        async move {
            let client = redis::Client::open(url.as_str()).expect("client");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            let mut found: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut c)
                .await
                .expect("keys");
            found.sort();
            found
        }
    };
    let sets = || keys("taskq:{undone}:*[dt]*:*".into());
    let before = sets().await;
    assert!(
        before.iter().any(|k| k.contains(":unmet:"))
            && before.iter().any(|k| k.contains(":dependents:")),
        "the flow's sets were not written: {before:?}"
    );
    broker
        .remove(&[(qn.clone(), root.id), (qn.clone(), dependent.id)])
        .await
        .expect("remove");
    let after = sets().await;
    assert!(
        !after.iter().any(|k| {
            [":unmet:", ":dependents:", ":t:"]
                .iter()
                .any(|p| k.contains(p))
        }),
        "left behind: {after:?}"
    );
    assert_eq!(keys("taskq:{undone}:k*".into()).await, Vec::<String>::new());
}

/// REMOVE takes out queued tasks but leaves one a worker already took, and says so: its
/// enqueue did land, and the attempt under way finishes normally. A task that already
/// finished is absent; REMOVE reports it as unknown while the outbox still holds its
/// updates (MongoDB does not know yet that it ran), and not once they were applied.
#[tokio::test(flavor = "multi_thread")]
async fn remove_leaves_tasks_a_worker_took_and_reports_them() {
    let (_server, broker) = single().await;
    let qn = q("undo");
    broker.outbox_join(&qn).await.expect("join");
    let mut reader = broker.outbox_reader(&qn, "w").await.expect("reader");
    let recs: Vec<TaskRecord> = (0..3).map(|_| record("undo", "normal", None)).collect();
    broker.enqueue(&items(&recs)).await.expect("enqueue");
    let taken = lease_for(&broker, &qn, 2, Duration::from_secs(30), "w1").await;
    assert_eq!(taken.len(), 2);
    let running = taken[0].msg.id;
    // The other one ran and failed: it waits in the retry set, not running.
    let retrying = taken[1].msg.id;
    retry_later(&broker, &qn, &taken[1], "boom").await;
    let queued = recs
        .iter()
        .map(|r| r.id)
        .find(|id| *id != running && *id != retrying)
        .expect("other");
    let left = broker
        .remove(&[
            (qn.clone(), queued),
            (qn.clone(), running),
            (qn.clone(), retrying),
        ])
        .await
        .expect("remove");
    assert_eq!(
        left,
        taskq_redis::Removed {
            taken: vec![running, retrying],
            unknown: Vec::new()
        }
    );
    let (_, present) = broker
        .present(&qn, &[queued, running, retrying])
        .await
        .expect("present");
    assert_eq!(present, vec![false, true, true]);
    ack(&broker, &qn, &taken[0]).await;

    // Finished, its updates still in the outbox: the absence proves nothing.
    let never = record("undo", "normal", None).id;
    let left = broker
        .remove(&[(qn.clone(), running), (qn.clone(), never)])
        .await
        .expect("remove");
    assert_eq!(left.taken, Vec::<TaskId>::new());
    let mut unknown = left.unknown;
    unknown.sort();
    let mut both = vec![running, never];
    both.sort();
    assert_eq!(unknown, both);

    // Once the outbox is applied, an absent task is one that never arrived (or whose
    // record MongoDB already has as run).
    let entries = reader.read(100, false).await.expect("read");
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    broker.outbox_ack(&qn, &refs(&ids)).await.expect("ack");
    assert_eq!(broker.outbox_len(&qn).await.expect("len"), 0);
    assert_eq!(
        broker
            .remove(&[(qn.clone(), running), (qn.clone(), never)])
            .await
            .expect("remove"),
        taskq_redis::Removed::default()
    );
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Writers acknowledge their batches in any order: acknowledging an older batch after a
/// newer one still trims both, so the outbox is empty once every entry was applied, and
/// an entry not yet delivered stays.
#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_is_empty_after_batches_are_acknowledged_out_of_order() {
    let (_server, broker) = single().await;
    let qn = q("acks");
    broker.outbox_join(&qn).await.expect("join");
    let mut reader = broker.outbox_reader(&qn, "w").await.expect("reader");
    let batch = || {
        let rec = record("acks", "normal", None);
        let broker = &broker;
        let qn = &qn;
        async move {
            broker
                .enqueue(&[EnqueueItem::from_record(&rec, 1)])
                .await
                .expect("enqueue");
            let leased = lease_for(broker, qn, 1, Duration::from_secs(30), "w").await;
            assert_eq!(leased.len(), 1);
        }
    };
    batch().await;
    let older = reader.read(10, false).await.expect("read");
    batch().await;
    let newer = reader.read(10, false).await.expect("read");
    assert_eq!((older.len(), newer.len()), (1, 1));
    batch().await; // delivered to nobody yet
    let ids = |es: &[OutboxEntry]| es.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let (older, newer) = (ids(&older), ids(&newer));
    // Acknowledges `entries`; returns the outbox's length after.
    let ack = async |entries: &[String], what: &str| {
        broker.outbox_ack(&qn, &refs(entries)).await.expect(what);
        broker.outbox_len(&qn).await.expect("len")
    };
    assert_eq!(ack(&newer, "ack newer").await, 3, "older still pending");
    assert_eq!(
        ack(&older, "ack older").await,
        1,
        "only the undelivered entry stays"
    );
    let last = reader.read(10, false).await.expect("read");
    assert_eq!(last.len(), 1);
    assert_eq!(ack(&ids(&last), "ack last").await, 0);
}

// ---- Task keys: ordered and fair work per key ----

/// A task of `queue` with key `key` and `priority`.
fn keyed(queue: &str, key: &str, priority: &str) -> TaskRecord {
    let mut r = record(queue, priority, None);
    r.key = Some(key.to_owned());
    r
}

/// Sets the queue's `max_running_per_key` (and no other limit).
async fn key_limit(broker: &Broker, queue: &QueueName, n: Option<u32>) {
    let limits = QueueLimits {
        max_running_per_key: n,
        ..QueueLimits::default()
    };
    broker.set_limits(queue, &limits).await.expect("limits");
}

/// Leases as many runnable tasks of `queue` as it may (up to 100) to `w1` for a minute;
/// the whole answer, limits included.
async fn dequeue_all(broker: &Broker, queue: &QueueName) -> taskq_redis::Dequeued {
    broker
        .dequeue(
            &mut CallId::new(),
            queue,
            100,
            Duration::from_secs(60),
            "w1",
            0,
        )
        .await
        .expect("dequeue")
}

/// Leases up to `n` tasks of `queue` to `worker` for `lease`.
async fn lease_for(
    broker: &Broker,
    queue: &QueueName,
    n: usize,
    lease: Duration,
    worker: &str,
) -> Vec<Leased> {
    broker
        .dequeue(&mut CallId::new(), queue, n, lease, worker, 0)
        .await
        .expect("dequeue")
        .tasks
}

/// Leases up to `n` tasks of `queue` to `w1` for a minute.
async fn take(broker: &Broker, queue: &QueueName, n: usize) -> Vec<Leased> {
    lease_for(broker, queue, n, Duration::from_secs(60), "w1").await
}

async fn ack(broker: &Broker, queue: &QueueName, l: &Leased) {
    let done = broker
        .ack(queue, "w1", &[(l.msg.id, l.token.as_str(), None)])
        .await
        .expect("ack");
    assert!(done[0].is_some(), "ack of {} refused", l.msg.id);
}

fn ids(ls: &[Leased]) -> Vec<TaskId> {
    ls.iter().map(|l| l.msg.id).collect()
}

/// The per-key structures of `queue` left in Redis (`kh:`, `kb<p>:`, the active keys
/// and the backlog counter), on every node of `urls`.
async fn key_leftovers(urls: &[String], queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("taskq:{{{queue}}}:k*"))
            .query_async(&mut c)
            .await
            .expect("keys");
        out.extend(found);
    }
    out
}

/// Runs every key scenario on `queue` (one `{queue}` slot, so on a cluster the per-key
/// structures share the node of the queue's other keys).
async fn task_keys(broker: &Broker, queue: &str, urls: &[String]) {
    let qn = q(queue);
    key_limit(broker, &qn, Some(1)).await;
    limit_one_runs_one_per_key_in_order(broker, &qn).await;
    a_busy_key_does_not_hold_back_another(broker, &qn).await;
    a_retry_returns_to_the_front_of_its_key(broker, &qn).await;
    release_reap_cancel_and_remove_free_the_key(broker, &qn).await;
    key_limit(broker, &qn, None).await;
    order_per_priority_without_a_running_limit(broker, &qn).await;
    a_busy_key_does_not_hold_back_another(broker, &qn).await;
    the_rate_per_key_holds(broker, &qn).await;
    let c = broker.counts(&qn).await.expect("counts");
    assert_eq!(
        (c.queued, c.running, c.scheduled, c.retrying, c.active_keys),
        (0, 0, 0, 0, 0),
        "{c:?}"
    );
    let left = key_leftovers(urls, queue).await;
    assert!(left.is_empty(), "a key with no tasks left {left:?}");
}

/// Limit 1: of a key's tasks one is leased at a time, in submit order; other keys and
/// tasks without a key are taken meanwhile; the key's next task moves on at its ack.
async fn limit_one_runs_one_per_key_in_order(broker: &Broker, qn: &QueueName) {
    let a: Vec<TaskRecord> = (0..5).map(|_| keyed(qn.as_str(), "a", "normal")).collect();
    let b: Vec<TaskRecord> = (0..2).map(|_| keyed(qn.as_str(), "b", "normal")).collect();
    let plain = record(qn.as_str(), "normal", None);
    let all: Vec<TaskRecord> = a.iter().chain(&b).chain([&plain]).cloned().collect();
    broker.enqueue(&items(&all)).await.expect("enqueue");
    let c = broker.counts(qn).await.expect("counts");
    assert_eq!((c.queued, c.active_keys), (8, 2), "{c:?}");
    let busiest = broker.busiest_keys(qn, 10).await.expect("busiest");
    assert_eq!(busiest[0].key, "a");
    assert_eq!((busiest[0].tasks, busiest[1].tasks), (5, 2));

    let d = dequeue_all(broker, qn).await;
    let got: HashSet<TaskId> = ids(&d.tasks).into_iter().collect();
    assert_eq!(got, HashSet::from([a[0].id, b[0].id, plain.id]));
    assert_eq!(d.key_held, 2, "both keys' next tasks wait for their limit");
    assert!(
        take(broker, qn, 100).await.is_empty(),
        "a second task of a key"
    );
    let running = broker.busiest_keys(qn, 10).await.expect("busiest");
    assert!(running.iter().all(|k| k.running == 1), "{running:?}");

    let (first, others): (Vec<Leased>, Vec<Leased>) =
        d.tasks.into_iter().partition(|l| l.msg.id == a[0].id);
    let mut order = vec![a[0].id];
    let mut current = first.into_iter().next();
    while let Some(l) = current {
        ack(broker, qn, &l).await;
        let next = take(broker, qn, 100).await;
        assert!(next.len() <= 1, "two of key a at once: {:?}", ids(&next));
        current = next.into_iter().next();
        if let Some(l) = &current {
            order.push(l.msg.id);
        }
    }
    let submitted: Vec<TaskId> = a.iter().map(|r| r.id).collect();
    assert_eq!(order, submitted, "key a in submit order");
    // b's second task moves on when its first is acknowledged.
    for l in &others {
        ack(broker, qn, l).await;
    }
    let last = take(broker, qn, 100).await;
    assert_eq!(ids(&last), vec![b[1].id]);
    ack(broker, qn, &last[0]).await;
}

/// A key with 1,000 queued tasks delays a task of another key by at most one round:
/// heads of keys are taken round robin.
async fn a_busy_key_does_not_hold_back_another(broker: &Broker, qn: &QueueName) {
    let busy: Vec<TaskRecord> = (0..1000)
        .map(|_| keyed(qn.as_str(), "busy", "normal"))
        .collect();
    broker.enqueue(&items(&busy)).await.expect("enqueue");
    let other = keyed(qn.as_str(), "other", "normal");
    broker
        .enqueue(&[EnqueueItem::from_record(&other, 1)])
        .await
        .expect("enqueue");
    // One at a time, acknowledging each: `other` is among the first two taken.
    let mut taken = Vec::new();
    for _ in 0..2 {
        let l = take(broker, qn, 1).await;
        assert_eq!(l.len(), 1);
        taken.push(l[0].msg.id);
        ack(broker, qn, &l[0]).await;
    }
    assert!(taken.contains(&other.id), "other waited behind busy");
    // Drain the busy key (in batches: one per key per call with limit 1, more without).
    let mut left = 999;
    while left > 0 {
        let ls = take(broker, qn, 64).await;
        assert!(!ls.is_empty(), "busy key stuck with {left} left");
        for l in &ls {
            ack(broker, qn, l).await;
        }
        left -= ls.len();
    }
}

/// Limit 1: a failed attempt frees the key (its next task becomes the head), and when
/// its retry is due it goes to the front of the key's backlog: before later tasks.
async fn a_retry_returns_to_the_front_of_its_key(broker: &Broker, qn: &QueueName) {
    let t: Vec<TaskRecord> = (0..3).map(|_| keyed(qn.as_str(), "r", "normal")).collect();
    broker.enqueue(&items(&t)).await.expect("enqueue");
    let first = take(broker, qn, 10).await;
    assert_eq!(ids(&first), vec![t[0].id]);
    let now = taskq_core::now_ms();
    broker
        .fail(
            qn,
            "w1",
            &[(
                t[0].id,
                first[0].token.as_str(),
                FailOutcome::RetryAt(now),
                "boom",
            )],
        )
        .await
        .expect("fail");
    let promoted = broker.promote(qn, now + 1, 100).await.expect("promote");
    assert_eq!(promoted.len(), 1);
    let mut order = Vec::new();
    loop {
        let l = take(broker, qn, 10).await;
        assert!(l.len() <= 1, "two of one key at once");
        let Some(l) = l.into_iter().next() else { break };
        order.push(l.msg.id);
        ack(broker, qn, &l).await;
    }
    // t1 had become the head when t0 failed; the retry of t0 runs before t2.
    assert_eq!(order, vec![t[1].id, t[0].id, t[2].id]);
}

/// Limit 1: a released or reaped task runs again first; cancelling or removing a
/// waiting task (the key's head or one in its backlog) lets the next one on.
async fn release_reap_cancel_and_remove_free_the_key(broker: &Broker, qn: &QueueName) {
    let t: Vec<TaskRecord> = (0..6).map(|_| keyed(qn.as_str(), "f", "normal")).collect();
    broker.enqueue(&items(&t[..3])).await.expect("enqueue");
    let l = take(broker, qn, 10).await;
    assert_eq!(ids(&l), vec![t[0].id]);
    release(broker, qn, &l[0]).await;
    let l = lease_for(broker, qn, 10, Duration::from_millis(1), "w1").await;
    assert_eq!(ids(&l), vec![t[0].id], "the released task runs first");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let reaped = broker
        .reap(qn, taskq_core::now_ms(), 100)
        .await
        .expect("reap");
    assert_eq!(reaped.len(), 1);
    assert!(reaped[0].requeued);
    let l = take(broker, qn, 10).await;
    assert_eq!(ids(&l), vec![t[0].id], "the reaped task runs first");
    // t1 is the key's next (held), t2 in its backlog: cancel t2, add t3 and t4.
    assert!(matches!(
        broker.cancel(qn, t[2].id).await.expect("cancel"),
        taskq_redis::CancelOutcome::Cancelled { .. }
    ));
    broker.enqueue(&items(&t[3..5])).await.expect("enqueue");
    ack(broker, qn, &l[0]).await;
    // t1 is now the head in the pending list: cancel it; t3 moves on.
    assert!(matches!(
        broker.cancel(qn, t[1].id).await.expect("cancel"),
        taskq_redis::CancelOutcome::Cancelled { .. }
    ));
    // Remove (a failed submit's undo) t3, the new head: t4 moves on.
    broker
        .remove(&[(qn.clone(), t[3].id)])
        .await
        .expect("remove");
    let l = take(broker, qn, 10).await;
    assert_eq!(ids(&l), vec![t[4].id]);
    // A running task is not removed (its attempt is under way): it keeps its key until
    // it finishes.
    broker.enqueue(&items(&t[5..])).await.expect("enqueue");
    let left = broker
        .remove(&[(qn.clone(), t[4].id)])
        .await
        .expect("remove");
    assert_eq!(left.taken, vec![t[4].id]);
    assert!(take(broker, qn, 10).await.is_empty());
    ack(broker, qn, &l[0]).await;
    let l = take(broker, qn, 10).await;
    assert_eq!(ids(&l), vec![t[5].id]);
    ack(broker, qn, &l[0]).await;
    // A scheduled keyed task joins its key's backlog when promoted.
    let mut later = keyed(qn.as_str(), "f", "normal");
    later.scheduled_at = later.created_at + chrono::Duration::milliseconds(60_000);
    broker
        .enqueue(&[EnqueueItem::from_record(&later, 1)])
        .await
        .expect("enqueue");
    assert!(take(broker, qn, 10).await.is_empty());
    let promoted = broker
        .promote(qn, later.scheduled_at.timestamp_millis(), 10)
        .await
        .expect("promote");
    assert_eq!(promoted.len(), 1);
    let l = take(broker, qn, 10).await;
    assert_eq!(ids(&l), vec![later.id]);
    ack(broker, qn, &l[0]).await;
}

/// Without a running limit a key still has one head in the pending lists; its tasks are
/// taken highest priority first and in submit order within a priority.
async fn order_per_priority_without_a_running_limit(broker: &Broker, qn: &QueueName) {
    let prios = ["normal", "high", "normal", "high", "low", "low", "normal"];
    let t: Vec<TaskRecord> = prios.iter().map(|p| keyed(qn.as_str(), "p", p)).collect();
    broker.enqueue(&items(&t)).await.expect("enqueue");
    let mut taken = Vec::new();
    loop {
        let l = take(broker, qn, 1).await;
        let Some(l) = l.into_iter().next() else { break };
        taken.push(l);
    }
    assert_eq!(taken.len(), t.len(), "no running limit: all run at once");
    for p in ["high", "normal", "low"] {
        let submitted: Vec<TaskId> = t
            .iter()
            .filter(|r| r.priority.as_str() == p)
            .map(|r| r.id)
            .collect();
        let run: Vec<TaskId> = taken
            .iter()
            .filter(|l| l.msg.priority.as_str() == p)
            .map(|l| l.msg.id)
            .collect();
        assert_eq!(run, submitted, "{p} tasks of the key in submit order");
    }
    // The first head was taken before the high ones arrived; after it, high first.
    let after_first: Vec<&str> = taken[1..].iter().map(|l| l.msg.priority.as_str()).collect();
    assert_eq!(
        after_first,
        ["high", "high", "normal", "normal", "low", "low"]
    );
    for l in &taken {
        ack(broker, qn, l).await;
    }
}

/// A rate of 5 dispatches per second per key with a bucket of 1: each key's tasks start
/// at least ~200 ms apart (its bucket empty, the key is parked until PROMOTE releases
/// it), while another key goes on with its own bucket.
async fn the_rate_per_key_holds(broker: &Broker, qn: &QueueName) {
    let limits = QueueLimits {
        max_dispatches_per_second_per_key: Some(5.0),
        burst_per_key: Some(1),
        ..QueueLimits::default()
    };
    broker.set_limits(qn, &limits).await.expect("limits");
    assert_eq!(broker.limits(qn).await.expect("limits"), limits);
    let recs: Vec<TaskRecord> = (0..4)
        .flat_map(|_| {
            [
                keyed(qn.as_str(), "slow", "normal"),
                keyed(qn.as_str(), "other", "normal"),
            ]
        })
        .collect();
    broker.enqueue(&items(&recs)).await.expect("enqueue");
    let d = dequeue_all(broker, qn).await;
    assert_eq!(
        d.tasks.len(),
        2,
        "one task per key: each bucket held one token"
    );
    assert_eq!(d.key_held, 2, "both keys parked");
    let mut started: Vec<(String, std::time::Instant)> = d
        .tasks
        .iter()
        .map(|l| {
            (
                l.msg.key.clone().unwrap_or_default(),
                std::time::Instant::now(),
            )
        })
        .collect();
    for l in &d.tasks {
        ack(broker, qn, l).await;
    }
    // Not due yet: nothing is released.
    broker
        .promote(qn, taskq_core::now_ms(), 100)
        .await
        .expect("promote");
    assert!(
        take(broker, qn, 100).await.is_empty(),
        "a parked key was taken"
    );
    while started.len() < recs.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        broker
            .promote(qn, taskq_core::now_ms(), 100)
            .await
            .expect("promote");
        for l in take(broker, qn, 100).await {
            started.push((
                l.msg.key.clone().unwrap_or_default(),
                std::time::Instant::now(),
            ));
            ack(broker, qn, &l).await;
        }
    }
    for key in ["slow", "other"] {
        let times: Vec<std::time::Instant> = started
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(times.len(), 4);
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            // 200 ms a token; a start is seen up to one loop pass (20 ms and a few
            // round trips) after its token was taken.
            assert!(
                gap >= Duration::from_millis(160),
                "{key}: {gap:?} between starts"
            );
        }
    }
    broker
        .set_limits(qn, &QueueLimits::default())
        .await
        .expect("limits");
}

/// A key's head whose hash Redis lost (deleted behind the scripts' back) does not hold
/// the key back: the next pump of the key lets its next task through.
async fn a_lost_head_does_not_block_its_key(broker: &Broker, url: &str) {
    let qn = q("lost");
    key_limit(broker, &qn, Some(1)).await;
    let t: Vec<TaskRecord> = (0..2).map(|_| keyed("lost", "k", "normal")).collect();
    broker.enqueue(&items(&t[..1])).await.expect("enqueue");
    let client = redis::Client::open(url).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: i64 = redis::cmd("DEL")
        .arg(QueueKeys::new(&qn).task(&t[0].id))
        .query_async(&mut c)
        .await
        .expect("del");
    broker.enqueue(&items(&t[1..])).await.expect("enqueue");
    let l = take(broker, &qn, 10).await;
    assert_eq!(ids(&l), vec![t[1].id]);
}

/// A key's backlog sizes (kept in its hash) that Redis lost or that went wrong never
/// reorder or lose its tasks: a lost hash has them read from the lists again, a size
/// above the truth is corrected when its list turns out empty, and a size of 0 while
/// the key holds more tasks than it runs (as a script that does not keep the sizes
/// would leave it) is read again from the lists.
async fn a_key_with_lost_or_wrong_backlog_sizes_keeps_its_order(broker: &Broker, url: &str) {
    let qn = q("sizes");
    key_limit(broker, &qn, Some(1)).await;
    let t: Vec<TaskRecord> = (0..6).map(|_| keyed("sizes", "k", "normal")).collect();
    broker.enqueue(&items(&t)).await.expect("enqueue");
    let client = redis::Client::open(url).expect("client");
    let c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let state = QueueKeys::new(&qn).key_state("k");
    // Changes the key's hash behind the scripts' back.
    let damage = |cmd: &mut redis::Cmd| {
        let (cmd, mut c) = (cmd.clone(), c.clone());
        async move {
            let _: i64 = cmd.query_async(&mut c).await.expect("damage");
        }
    };
    let next = |l: Vec<Leased>| {
        assert_eq!(l.len(), 1, "one task of the key at a time: {:?}", ids(&l));
        l.into_iter().next().expect("one")
    };

    let first = next(take(broker, &qn, 10).await);
    assert_eq!(first.msg.id, t[0].id);
    damage(redis::cmd("DEL").arg(&state)).await;
    ack(broker, &qn, &first).await;
    let second = next(take(broker, &qn, 10).await);
    assert_eq!(second.msg.id, t[1].id, "after the key's hash was lost");

    damage(redis::cmd("HSET").arg(&state).arg("b1").arg(99)).await;
    ack(broker, &qn, &second).await;
    let third = next(take(broker, &qn, 10).await);
    assert_eq!(third.msg.id, t[2].id, "with a backlog size too high");

    damage(redis::cmd("HSET").arg(&state).arg("b1").arg(0)).await;
    ack(broker, &qn, &third).await;
    let mut order = Vec::new();
    let mut current = Some(next(take(broker, &qn, 10).await));
    while let Some(l) = current {
        order.push(l.msg.id);
        ack(broker, &qn, &l).await;
        let more = take(broker, &qn, 10).await;
        current = (!more.is_empty()).then(|| next(more));
    }
    assert_eq!(
        order,
        vec![t[3].id, t[4].id, t[5].id],
        "with a backlog size too low"
    );
    let left = key_leftovers(&[url.to_owned()], "sizes").await;
    assert!(left.is_empty(), "a key with no tasks left {left:?}");
}

/// The finished-task subscription on a cluster outlives its seed: given one seed (a
/// proxy in front of one node), it learns the other nodes when it subscribes, and when
/// the seed goes away it subscribes on another node and hears what is published there.
#[tokio::test(flavor = "multi_thread")]
async fn the_finished_subscription_moves_to_another_cluster_node_when_its_seed_goes() {
    use taskq_redis::notify::Finished;
    let cluster = RedisCluster::start();
    let seed = taskq_testkit::ChaosProxy::start(cluster.addrs()[0]);
    let broker = Broker::connect(&RedisConfig::from_urls(
        &format!("redis://{}", seed.addr()),
        true,
    ))
    .await
    .expect("connect");
    let mut sub = broker.finished_subscription();
    assert_eq!(next(&mut sub).await, Finished::Subscribed);
    seed.cut();
    // The lost connection is noticed (end of stream or a failed keepalive), then the
    // subscription is made again on a node it learnt.
    assert_eq!(next(&mut sub).await, Finished::Subscribed);
    let other = Broker::connect(&RedisConfig::from_urls(&cluster.urls()[1], true))
        .await
        .expect("connect");
    let id = TaskId::new();
    other.publish_finished(&[id]).await.expect("publish");
    assert_eq!(next(&mut sub).await, Finished::Tasks(vec![id]));
}

async fn next(
    sub: &mut taskq_redis::notify::FinishedSubscription,
) -> taskq_redis::notify::Finished {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("the subscription answered within 30 s")
}
