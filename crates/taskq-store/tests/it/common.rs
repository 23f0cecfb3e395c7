//! Test helpers: a fresh database per test and task records to put in it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Collection, IndexModel};
use serde_json::{Value, json};
use taskq_core::task::NewTask;
use taskq_core::{Limits, TaskId, TaskRecord, TaskStatus};
use taskq_store::{Store, StoreOptions, TASKS};
use taskq_testkit::{
    ChaosProxy, MONGODB_URI_ENV, mongo_addr, mongo_uri, mongo_uri_via, unique_db_name,
};

/// A database of its own for one test.
pub struct TestDb {
    pub store: Store,
    pub name: String,
}

impl TestDb {
    /// Connects to a fresh database on the server under test.
    pub async fn new() -> TestDb {
        let name = unique_db_name("store");
        let store = Self::connect(
            &mongo_uri(),
            &name,
            StoreOptions {
                server_selection_timeout: Duration::from_secs(10),
                ..StoreOptions::default()
            },
        )
        .await;
        if let Err(e) = store.ping().await {
            panic!(
                "cannot use the MongoDB server at {MONGODB_URI_ENV}=`{}`: {e}\n\
                 (mongo-java-server must advertise wire version >= 9, which the Rust driver \
                 requires: pass `new MemoryBackend().version(v)` a MongoVersion whose \
                 getWireVersion() returns 9 or more)",
                mongo_uri()
            );
        }
        TestDb { store, name }
    }

    /// A proxy in front of the server under test, and a second connection to this
    /// database through it that gives up selecting a server or connecting after
    /// `timeout`.
    pub async fn proxied(&self, timeout: Duration) -> (ChaosProxy, Store) {
        let options = StoreOptions {
            server_selection_timeout: timeout,
            connect_timeout: timeout,
            ..StoreOptions::default()
        };
        let proxy = ChaosProxy::start(mongo_addr());
        let store = Self::connect(&mongo_uri_via(proxy.addr()), &self.name, options).await;
        (proxy, store)
    }

    async fn connect(uri: &str, name: &str, options: StoreOptions) -> Store {
        Store::connect_with(uri, name, &options)
            .await
            .unwrap_or_else(|e| panic!("bad MongoDB URI `{uri}`: {e}"))
    }

    /// The tasks collection, untyped.
    pub fn tasks(&self) -> Collection<Document> {
        self.store.database().collection::<Document>(TASKS)
    }

    /// Sets `fields` in the stored document of task `id`, bypassing the store.
    pub async fn set_raw(&self, id: TaskId, fields: Document) {
        self.tasks()
            .update_one(doc! { "_id": id.to_string() }, doc! { "$set": fields })
            .await
            .must();
    }

    /// Inserts `n` fresh queued tasks of queue `q`; returns them.
    pub async fn insert_queued(&self, n: usize) -> Vec<TaskRecord> {
        let recs: Vec<TaskRecord> = (0..n).map(|_| task("q", "t", json!({}))).collect();
        self.store.insert_many(&recs).await.must();
        recs
    }

    /// The stored document of task `id`.
    pub async fn raw(&self, id: TaskId) -> Document {
        self.tasks()
            .find_one(doc! { "_id": id.to_string() })
            .await
            .must()
            .must()
    }

    /// The indexes of the tasks collection.
    pub async fn indexes(&self) -> Vec<IndexModel> {
        self.tasks()
            .list_indexes()
            .await
            .must()
            .try_collect()
            .await
            .must()
    }

    /// Two queued records; the server refuses any status update of the second, whose
    /// history is not an array that can be appended to.
    pub async fn good_and_poisoned(&self) -> (TaskRecord, TaskRecord) {
        let recs = self.insert_queued(2).await;
        let (good, bad) = (recs[0].clone(), recs[1].clone());
        self.set_raw(bad.id, doc! { "events": "broken" }).await;
        (good, bad)
    }

    /// Drops the database (best effort).
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

/// The statuses of `r`'s history, oldest first.
pub fn history(r: &TaskRecord) -> Vec<TaskStatus> {
    r.events.iter().map(|e| e.status).collect()
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
