//! Test helpers: a fresh database per test and task records to put in it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use taskq_core::task::NewTask;
use taskq_core::{Limits, TaskRecord, TaskStatus};
use taskq_store::{Store, StoreOptions};

/// The server under test.
pub fn uri() -> String {
    std::env::var("TASKQ_TEST_MONGODB_URI").unwrap_or_else(|_| {
        panic!(
            "TASKQ_TEST_MONGODB_URI is not set. Start a MongoDB-compatible server and point \
             the variable at it, e.g. from the repository root\n  \
             java -cp '<dir of the mongo-java-server jars>/*' scripts/mongo-test-server/MongoTestServer.java 27017 &\n  \
             export TASKQ_TEST_MONGODB_URI=mongodb://127.0.0.1:27017\n\
             or `docker run -d -p 27017:27017 mongo:7`."
        )
    })
}

/// A database of its own for one test.
pub struct TestDb {
    pub store: Store,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!(
            "t_store_{}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let uri = uri();
        let store = Store::connect_with(
            &uri,
            &name,
            &StoreOptions {
                server_selection_timeout: std::time::Duration::from_secs(10),
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("bad TASKQ_TEST_MONGODB_URI `{uri}`: {e}"));
        if let Err(e) = store.ping().await {
            panic!(
                "cannot use the MongoDB server at TASKQ_TEST_MONGODB_URI=`{uri}`: {e}\n\
                 (mongo-java-server must advertise wire version >= 9, which the Rust driver \
                 requires: pass `new MemoryBackend().version(v)` a MongoVersion whose \
                 getWireVersion() returns 9 or more)"
            );
        }
        TestDb { store, name }
    }

    /// Drops the database (best effort).
    /// Two queued records; the server refuses any status update of the second, whose
    /// history is not an array that can be appended to.
    pub async fn good_and_poisoned(&self) -> (TaskRecord, TaskRecord) {
        let good = task("q", "t", json!({}));
        let bad = task("q", "t", json!({}));
        self.store
            .insert_many(&[good.clone(), bad.clone()])
            .await
            .must();
        self.store
            .database()
            .collection::<mongodb::bson::Document>(taskq_store::TASKS)
            .update_one(
                mongodb::bson::doc! { "_id": bad.id.to_string() },
                mongodb::bson::doc! { "$set": { "events": "broken" } },
            )
            .await
            .must();
        (good, bad)
    }

    pub async fn drop(self) {
        let _ = self.store.database().drop().await;
    }
}

/// Now, at the millisecond precision the store keeps.
pub fn now() -> DateTime<Utc> {
    let ms = Utc::now().timestamp_millis();
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A fresh queued task.
pub fn task(queue: &str, kind: &str, payload: Value) -> TaskRecord {
    let req: NewTask = serde_json::from_value(json!({
        "type": kind,
        "queue": queue,
        "payload": payload,
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Limits::default()
        .admit(
            req,
            now(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A task with the given status.
pub fn task_in(queue: &str, kind: &str, status: TaskStatus) -> TaskRecord {
    let mut t = task(queue, kind, json!({}));
    t.status = status;
    t
}

/// Unwraps, panicking with the error's text.
pub trait Must<T> {
    fn must(self) -> T;
}

impl<T, E: std::fmt::Display> Must<T> for Result<T, E> {
    #[track_caller]
    fn must(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<T> Must<T> for Option<T> {
    #[track_caller]
    fn must(self) -> T {
        self.unwrap_or_else(|| panic!("unexpected None"))
    }
}
