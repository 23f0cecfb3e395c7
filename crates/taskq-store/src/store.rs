//! [`Store`]: every read and write of the `tasks` collection.
//!
//! No operation uses transactions or the MongoDB 8 `bulkWrite` command, so the same code
//! runs against MongoDB 7, FerretDB and mongo-java-server. Atomicity comes from
//! single-document operations: `findAndModify` for a manual retry, and order-independent
//! `$max` updates by `_id` (see [`crate::update`]) for status changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::raw::{RawArrayBuf, RawDocumentBuf};
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use taskq_core::{QueueName, TaskId, TaskRecord, TaskStatus};

use crate::doc::{date, event_doc, f, record_doc, stored_task};
use crate::{Error, Rejection, Result, StatusUpdate};

/// The collection holding one document per task.
pub const TASKS: &str = "tasks";

/// Largest page [`Store::list`] returns; larger limits are lowered to it.
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// Most statements sent in one `update` command.
const MAX_STATEMENTS: usize = 10_000;

/// Budget for the statements of one `update` command: the server accepts a command of
/// up to 16 MiB + 16 KiB; the rest of the command (name, flags, session, cluster time)
/// fits comfortably in what is left.
const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024 - 16 * 1024;

/// How long MongoDB keeps the records of finished tasks (succeeded, dead, cancelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Records stay until deleted (e.g. by a dead-letter purge).
    Forever,
    /// A TTL index on `finished_at` lets the server delete a record this long after its
    /// task finished (MongoDB's TTL monitor runs about once a minute).
    For(Duration),
}

/// Name of the TTL index that implements [`Retention::For`].
pub const RETENTION_INDEX: &str = "retention";

/// Connection settings that are not part of the URI. Values given in the URI
/// (`appName`, `serverSelectionTimeoutMS`, `connectTimeoutMS`) take precedence, so
/// operators can tune them without a rebuild.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Reported to the server (shows up in its logs and `currentOp`).
    pub app_name: String,
    /// How long an operation waits for a usable server before failing.
    pub server_selection_timeout: Duration,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            app_name: "taskq".to_owned(),
            server_selection_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A record together with its transition counter.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTask {
    pub record: TaskRecord,
    /// The `seq` of the last update applied to the record (1 for a fresh insert).
    pub seq: u64,
    /// The record's submit-pending mark, when the api wrote the record and nothing has
    /// shown yet that its task reached Redis (no status update applied, no submit check
    /// done; see [`Store::pending_submits`]): the time the submit that owns the record
    /// began, its `created_at` unless a repeat took the submit over
    /// ([`Store::take_over_submit`]).
    pub submit_pending: Option<DateTime<Utc>>,
}

impl StoredTask {
    /// Whether the record is that of a failed submit: cancelled as [`SUBMIT_FAILED`] by
    /// [`Store::settle_submits`] and not moved on since by a status update of its task
    /// (it is still at `seq` 1).
    pub fn is_failed_submit(&self) -> bool {
        self.seq == 1
            && self.submit_pending.is_none()
            && self.record.status == TaskStatus::Cancelled
            && self.record.last_error.as_deref() == Some(SUBMIT_FAILED_ERROR)
    }
}

/// A record still marked submit-pending (see [`Store::pending_submits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSubmit {
    pub id: TaskId,
    pub queue: QueueName,
    pub created_at: DateTime<Utc>,
}

/// The reason a record whose task never reached Redis ends `cancelled` with: its
/// `last_error` starts with it, and its `cancelled` event carries it as error.
pub const SUBMIT_FAILED: &str = "submit_failed";

/// The `last_error` of such a record.
const SUBMIT_FAILED_ERROR: &str = "submit_failed: the record was written but the task never \
     reached Redis (the api stopped or failed mid-submit); it never ran";

/// Which tasks [`Store::list`] returns; `None` fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<TaskStatus>,
    /// The task type.
    pub kind: Option<String>,
    pub queue: Option<QueueName>,
    /// The task's key.
    pub key: Option<String>,
}

/// One page of [`Store::list`], newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub tasks: Vec<TaskRecord>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<TaskId>,
}

/// What [`Store::requeue_dead`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum RequeueOutcome {
    /// The task was dead and is now queued; the record after the change.
    Requeued(Box<StoredTask>),
    /// The task exists but is not dead; its current status.
    NotDead(TaskStatus),
    NotFound,
}

/// Handle to the task store. Cheap to clone; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    tasks: Collection<Document>,
}

impl Store {
    /// Builds a store for `database` on the deployment at `uri` with default
    /// [`StoreOptions`]. Connecting is lazy: this fails only for a malformed URI (or an
    /// SRV record that does not resolve); use [`Store::ping`] to check reachability.
    pub async fn connect(uri: &str, database: &str) -> Result<Store> {
        Self::connect_with(uri, database, &StoreOptions::default()).await
    }

    /// Like [`Store::connect`] with explicit options.
    pub async fn connect_with(uri: &str, database: &str, opts: &StoreOptions) -> Result<Store> {
        let mut co = ClientOptions::parse(uri).await?;
        co.app_name.get_or_insert_with(|| opts.app_name.clone());
        co.server_selection_timeout
            .get_or_insert(opts.server_selection_timeout);
        co.connect_timeout.get_or_insert(opts.connect_timeout);
        let client = Client::with_options(co)?;
        Ok(Self::from_database(client.database(database)))
    }

    /// A store over an existing database handle.
    pub fn from_database(db: Database) -> Store {
        let tasks = db.collection(TASKS);
        Store { db, tasks }
    }

    /// The underlying database (for tests and administrative tools).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the indexes the queries need. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let index = |name: &str, keys: Document| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        self.tasks
            .create_indexes([
                index("status_id", doc! { f::ST_STATUS: 1, f::ID: -1 }),
                index("queue_id", doc! { f::QUEUE: 1, f::ID: -1 }),
                index("type_id", doc! { f::TYPE: 1, f::ID: -1 }),
                // Sparse: only keyed tasks carry `key`.
                IndexModel::builder()
                    .keys(doc! { f::KEY: 1, f::ID: -1 })
                    .options(
                        IndexOptions::builder()
                            .name("key_id".to_owned())
                            .sparse(true)
                            .build(),
                    )
                    .build(),
                index(
                    "queue_status_id",
                    doc! { f::QUEUE: 1, f::ST_STATUS: 1, f::ID: -1 },
                ),
                IndexModel::builder()
                    .keys(doc! { f::SUBMIT_PENDING: 1 })
                    .options(
                        IndexOptions::builder()
                            .name("submit_pending".to_owned())
                            .sparse(true)
                            .build(),
                    )
                    .build(),
                IndexModel::builder()
                    .keys(doc! { f::IDEM: 1 })
                    .options(
                        IndexOptions::builder()
                            .name("idempotency".to_owned())
                            .unique(true)
                            .sparse(true)
                            .build(),
                    )
                    .build(),
            ])
            .await?;
        self.ensure_flow_indexes().await?;
        self.ensure_browse_indexes().await
    }

    /// Makes the retention TTL index match `retention`: creates it, changes its lifetime
    /// (`collMod`, or a drop and re-create on servers without it) or drops it. Idempotent;
    /// run by the api, which owns the setting.
    pub async fn ensure_retention(&self, retention: Retention) -> Result<()> {
        let want = match retention {
            Retention::Forever => None,
            Retention::For(d) => Some(Duration::from_secs(d.as_secs().max(1))),
        };
        let have = self.retention().await?;
        match (have, want) {
            (None, None) => {}
            (Some(a), Some(b)) if a == Some(b) => {}
            (Some(_), None) => self.tasks.drop_index(RETENTION_INDEX).await?,
            (Some(_), Some(b)) => {
                let changed = self
                    .db
                    .run_command(doc! {
                        "collMod": TASKS,
                        "index": { "name": RETENTION_INDEX, "expireAfterSeconds": secs(b) },
                    })
                    .await;
                if let Err(e) = changed {
                    tracing::info!(error = %e, "collMod refused; re-creating the retention index");
                    self.tasks.drop_index(RETENTION_INDEX).await?;
                    self.create_retention(b).await?;
                }
            }
            (None, Some(b)) => self.create_retention(b).await?,
        }
        Ok(())
    }

    /// The retention index's lifetime: `None` without the index, `Some(None)` for an index
    /// of that name without a lifetime.
    pub async fn retention(&self) -> Result<Option<Option<Duration>>> {
        let mut indexes = self.tasks.list_indexes().await?;
        while let Some(ix) = indexes.try_next().await? {
            let Some(opts) = ix.options else { continue };
            if opts.name.as_deref() == Some(RETENTION_INDEX) {
                return Ok(Some(opts.expire_after));
            }
        }
        Ok(None)
    }

    async fn create_retention(&self, ttl: Duration) -> Result<()> {
        self.tasks
            .create_index(
                IndexModel::builder()
                    .keys(doc! { f::FINISHED_AT: 1 })
                    .options(
                        IndexOptions::builder()
                            .name(RETENTION_INDEX.to_owned())
                            .expire_after(ttl)
                            .build(),
                    )
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Round trip to the server (for readiness probes).
    pub async fn ping(&self) -> Result<()> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    /// Writes a new record with `seq` 1, marked submit-pending until its first status
    /// update (or a submit check) shows that its task reached Redis.
    pub async fn insert(&self, rec: &TaskRecord) -> Result<()> {
        self.tasks.insert_one(new_record_doc(rec)?).await?;
        Ok(())
    }

    /// Writes new records with `seq` 1 in one unordered `insert_many`. On error some
    /// records may have been written; [`Store::delete`] removes them.
    pub async fn insert_many(&self, recs: &[TaskRecord]) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let docs = recs
            .iter()
            .map(new_record_doc)
            .collect::<Result<Vec<_>>>()?;
        self.tasks.insert_many(docs).ordered(false).await?;
        Ok(())
    }

    /// Removes records (to undo a submit whose enqueue failed). Returns how many existed.
    pub async fn delete(&self, ids: &[TaskId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let res = self
            .tasks
            .delete_many(doc! { f::ID: { "$in": ids } })
            .await?;
        Ok(res.deleted_count)
    }

    /// Removes the records of a submit whose enqueue did not happen: each only while it
    /// still carries the mark `mark` (the submit's own), so a record another api has
    /// taken over meanwhile ([`Store::take_over_submit`]) stays. Returns how many were
    /// removed.
    pub async fn delete_unsubmitted(&self, ids: &[TaskId], mark: DateTime<Utc>) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let res = self
            .tasks
            .delete_many(doc! { f::ID: { "$in": ids }, f::SUBMIT_PENDING: date(mark) })
            .await?;
        Ok(res.deleted_count)
    }

    /// Takes over the submit of a record still marked `old` (its submit can no longer
    /// enqueue it: the api that wrote it died or gave up): the mark becomes `now`, so the
    /// submit check gives the new owner a full grace period and the old owner's undo
    /// ([`Store::delete_unsubmitted`]) no longer matches. Returns whether this caller won
    /// the record (exactly one of concurrent callers does).
    pub async fn take_over_submit(
        &self,
        id: TaskId,
        old: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let res = self
            .tasks
            .update_one(
                doc! { f::ID: id.to_string(), f::SUBMIT_PENDING: date(old) },
                doc! { "$set": { f::SUBMIT_PENDING: date(now) } },
            )
            .await?;
        Ok(res.modified_count == 1)
    }

    /// Deletes every record of `queue` in `status` (e.g. purging the dead letters).
    pub async fn delete_by_status(&self, queue: &QueueName, status: TaskStatus) -> Result<u64> {
        let res = self
            .tasks
            .delete_many(doc! { f::QUEUE: queue.as_str(), f::ST_STATUS: status.as_str() })
            .await?;
        Ok(res.deleted_count)
    }

    /// Up to `limit` unfinished tasks (scheduled, queued, running or retrying) with ids
    /// above `after`, oldest first: what recovery re-enqueues after Redis was lost.
    pub async fn unfinished(&self, after: Option<TaskId>, limit: u32) -> Result<Vec<StoredTask>> {
        let live: Vec<&str> = [
            TaskStatus::Scheduled,
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Retrying,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        self.by_status_after(doc! { "$in": live }, after, limit)
            .await
    }

    /// Up to `limit` tasks whose status matches `status` (a value or a query on it) with
    /// ids above `after`, oldest first.
    pub(crate) async fn by_status_after(
        &self,
        status: impl Into<Bson>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<StoredTask>> {
        let mut q = doc! { f::ST_STATUS: status.into() };
        if let Some(a) = after {
            q.insert(f::ID, doc! { "$gt": a.to_string() });
        }
        let docs: Vec<Document> = self
            .tasks
            .find(q)
            .sort(doc! { f::ID: 1 })
            .limit(i64::from(limit.clamp(1, MAX_LIST_LIMIT)))
            .await?
            .try_collect()
            .await?;
        docs.iter().map(stored_task).collect()
    }

    /// The task submitted to `queue` with idempotency key `key`, if any.
    pub async fn find_by_idempotency_key(
        &self,
        queue: &QueueName,
        key: &str,
    ) -> Result<Option<StoredTask>> {
        let doc = self
            .tasks
            .find_one(doc! { f::IDEM: crate::doc::idem(queue.as_str(), key) })
            .await?;
        doc.as_ref().map(stored_task).transpose()
    }

    /// Frees `key` in `queue` when the task holding it was created before `before` (its
    /// retention is over), so a new submit may use it. Returns whether it was freed.
    pub async fn release_idempotency_key(
        &self,
        queue: &QueueName,
        key: &str,
        before: DateTime<Utc>,
    ) -> Result<bool> {
        let res = self
            .tasks
            .update_one(
                doc! {
                    f::IDEM: crate::doc::idem(queue.as_str(), key),
                    f::CREATED_AT: { "$lt": date(before) },
                },
                doc! { "$unset": { f::IDEM: "" } },
            )
            .await?;
        Ok(res.modified_count > 0)
    }

    /// Frees idempotency key `key` of `queue` from record `id` if that record is a failed
    /// submit ([`StoredTask::is_failed_submit`]) whose task the caller found to have never
    /// reached Redis, so a repeat of the key can submit the task anew. Conditional on the
    /// record still being such a record and still holding the key (the unique index on the
    /// key is sparse: a record without it is not indexed). Returns whether it was freed.
    pub async fn release_failed_submit_key(
        &self,
        id: TaskId,
        queue: &QueueName,
        key: &str,
    ) -> Result<bool> {
        let res = self
            .tasks
            .update_one(
                doc! {
                    f::ID: id.to_string(),
                    f::IDEM: crate::doc::idem(queue.as_str(), key),
                    f::SUBMIT_PENDING: { "$exists": false },
                    f::ST_SEQ: 1_i64,
                    f::ST_STATUS: TaskStatus::Cancelled.as_str(),
                    f::LAST_ERROR: SUBMIT_FAILED_ERROR,
                },
                doc! { "$unset": { f::IDEM: "" } },
            )
            .await?;
        Ok(res.modified_count > 0)
    }

    /// Up to `limit` records still marked submit-pending that were created before
    /// `before`: tasks whose status never changed since the api wrote them, and of which
    /// no submit check has yet seen in Redis. Served by a sparse index on the mark, which
    /// only holds such records (each is cleared by the task's first status update).
    pub async fn pending_submits(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingSubmit>> {
        let docs: Vec<Document> = self
            .tasks
            .find(doc! { f::SUBMIT_PENDING: { "$lt": date(before) } })
            .projection(doc! { f::ID: 1, f::QUEUE: 1, f::SUBMIT_PENDING: 1 })
            .limit(i64::from(limit.clamp(1, MAX_LIST_LIMIT)))
            .await?
            .try_collect()
            .await?;
        docs.iter()
            .map(|d| {
                let corrupt = |what: &str| Error::Corrupt {
                    id: d.get_str(f::ID).unwrap_or("<no _id>").to_owned(),
                    reason: format!("pending submit: {what}"),
                };
                Ok(PendingSubmit {
                    id: d
                        .get_str(f::ID)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| corrupt("bad _id"))?,
                    queue: d
                        .get_str(f::QUEUE)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| corrupt("bad queue"))?,
                    created_at: d
                        .get_datetime(f::SUBMIT_PENDING)
                        .ok()
                        .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis()))
                        .ok_or_else(|| corrupt("bad mark"))?,
                })
            })
            .collect()
    }

    /// Settles submit-pending records after a look at Redis: `never_enqueued` (Redis does
    /// not hold them) end `cancelled` with reason [`SUBMIT_FAILED`] — unless their status
    /// changed meanwhile, i.e. their task did reach Redis — and every record of both
    /// lists loses its mark. Each write is conditional on the mark, so any number of
    /// callers may settle the same records at once. The cancellation keeps `seq` 1, so a
    /// status update from Redis (a task that did run after all) still overrides it. A
    /// cancelled record keeps its idempotency key until a repeat of the key has made sure
    /// its task never reached Redis ([`Store::release_failed_submit_key`]).
    /// Returns how many records were cancelled.
    pub async fn settle_submits(
        &self,
        never_enqueued: &[TaskId],
        in_redis: &[TaskId],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let strings = |ids: &[TaskId]| ids.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut cancelled = 0;
        if !never_enqueued.is_empty() {
            let waiting: Vec<&str> = [TaskStatus::Queued, TaskStatus::Scheduled]
                .iter()
                .map(|s| s.as_str())
                .collect();
            let event = event_doc(&taskq_core::TaskEvent {
                status: TaskStatus::Cancelled,
                at: now,
                attempt: 0,
                error: Some(SUBMIT_FAILED.to_owned()),
                worker: None,
            });
            let res = self
                .tasks
                .update_many(
                    doc! {
                        f::ID: { "$in": strings(never_enqueued) },
                        f::SUBMIT_PENDING: { "$exists": true },
                        f::ST_SEQ: 1_i64,
                        f::ST_STATUS: { "$in": waiting },
                    },
                    doc! {
                        "$set": {
                            f::ST: crate::doc::state_doc_unchecked(1, TaskStatus::Cancelled, 0),
                            f::FINISHED_AT: date(now),
                            f::UPDATED_AT: date(now),
                            f::LAST_ERROR: SUBMIT_FAILED_ERROR,
                        },
                        "$unset": { f::SUBMIT_PENDING: "" },
                        "$push": { f::EVENTS: event },
                    },
                )
                .await?;
            cancelled = res.modified_count;
        }
        let all: Vec<TaskId> = never_enqueued.iter().chain(in_redis).copied().collect();
        if !all.is_empty() {
            self.tasks
                .update_many(
                    doc! {
                        f::ID: { "$in": strings(&all) },
                        f::SUBMIT_PENDING: { "$exists": true },
                    },
                    doc! { "$unset": { f::SUBMIT_PENDING: "" } },
                )
                .await?;
        }
        Ok(cancelled)
    }

    /// The record of one task.
    pub async fn get(&self, id: TaskId) -> Result<Option<StoredTask>> {
        let doc = self.tasks.find_one(doc! { f::ID: id.to_string() }).await?;
        doc.as_ref().map(stored_task).transpose()
    }

    /// Tasks matching `filter`, newest first, at most `limit` (clamped to
    /// 1..=[`MAX_LIST_LIMIT`]). `cursor` is the `next_cursor` of the previous page; the
    /// next page holds the tasks older than it, so tasks created meanwhile (which have
    /// larger ids) never shift or repeat entries of later pages.
    pub async fn list(
        &self,
        filter: &ListFilter,
        limit: u32,
        cursor: Option<TaskId>,
    ) -> Result<Page> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let mut q = Document::new();
        if let Some(s) = filter.status {
            q.insert(f::ST_STATUS, s.as_str());
        }
        if let Some(k) = &filter.kind {
            q.insert(f::TYPE, k.as_str());
        }
        if let Some(queue) = &filter.queue {
            q.insert(f::QUEUE, queue.as_str());
        }
        if let Some(k) = &filter.key {
            q.insert(f::KEY, k.as_str());
        }
        if let Some(c) = cursor {
            q.insert(f::ID, doc! { "$lt": c.to_string() });
        }
        self.page(q, doc! { f::ID: -1 }, limit).await
    }

    /// Up to `limit` records matching `filter` in `sort` order (`limit` already clamped),
    /// with the cursor of the next page when there is one: the last id of this page.
    pub(crate) async fn page(&self, filter: Document, sort: Document, limit: u32) -> Result<Page> {
        // One extra document tells whether another page exists.
        let docs: Vec<Document> = self
            .tasks
            .find(filter)
            .sort(sort)
            .limit(i64::from(limit) + 1)
            .await?
            .try_collect()
            .await?;
        let more = docs.len() > limit as usize;
        let tasks = docs
            .iter()
            .take(limit as usize)
            .map(|d| stored_task(d).map(|s| s.record))
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = if more {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok(Page { tasks, next_cursor })
    }

    /// Records status updates in one round trip (more only beyond 10,000 updates or
    /// 16 MiB), one statement per update, each addressing its record by `_id` alone.
    /// Updates may come in any order: the record keeps the status and attempts of the
    /// update with the largest `seq`, each date moves forward to the latest one seen,
    /// and events are always appended (see [`crate::update`]). Applying the same slice
    /// twice has the effect of applying it once.
    ///
    /// Updates for tasks that do not exist are ignored. [`Error::Rejected`] lists the
    /// updates the server refused; all others were applied. Any other error means some
    /// unknown part was applied, and the whole slice may simply be retried.
    pub async fn apply(&self, updates: &[StatusUpdate]) -> Result<()> {
        let mut rejected = Vec::new();
        // Updates with identical documents (one transition of several tasks) become one
        // multi-document statement; the groups keep the order of their first update.
        let mut groups: Vec<(Vec<TaskId>, Document, usize)> = Vec::new();
        let mut slot: HashMap<Vec<u8>, usize> = HashMap::new();
        for u in updates {
            let encoded = u.update_doc().and_then(|d| {
                RawDocumentBuf::from_document(&d)
                    .map(|raw| (d, raw.into_bytes()))
                    .map_err(|e| encode(u, e))
            });
            let (document, bytes) = match encoded {
                Ok(x) => x,
                Err(e) => {
                    rejected.push(Rejection {
                        id: u.id,
                        code: None,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let size = bytes.len();
            if size > MAX_STATEMENT_BYTES - 256 {
                rejected.push(Rejection {
                    id: u.id,
                    code: None,
                    message: format!(
                        "the update is {size} bytes; one update may be at most {MAX_STATEMENT_BYTES}"
                    ),
                });
                continue;
            }
            match slot.get(&bytes) {
                // A group's statement grows by one id (about 45 bytes) per update; a
                // group never outgrows what one command can carry.
                Some(&i) if groups[i].0.len() < MAX_GROUP => groups[i].0.push(u.id),
                _ => {
                    slot.insert(bytes, groups.len());
                    groups.push((vec![u.id], document, size));
                }
            }
        }
        let mut chunk = Chunk::default();
        for (ids, u, size) in groups {
            let size = size + ids.len() * 48 + 64;
            let statement = crate::update::statement(&ids, u.clone());
            let statement = match RawDocumentBuf::from_document(&statement) {
                Ok(st) => st,
                Err(e) => {
                    for id in ids {
                        rejected.push(Rejection {
                            id,
                            code: None,
                            message: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            if chunk.len() == MAX_STATEMENTS || chunk.bytes + size > MAX_STATEMENT_BYTES {
                self.send_updates(std::mem::take(&mut chunk), &mut rejected)
                    .await?;
            }
            chunk.push(ids, u, statement, size);
        }
        if chunk.len() > 0 {
            self.send_updates(chunk, &mut rejected).await?;
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(Error::Rejected(rejected))
        }
    }

    /// Sends one `update` command and collects its per-statement errors.
    /// A multi-document statement the server refused may have updated some of its
    /// records; its records are sent again one statement each, so only the records the
    /// server really refuses are reported (one poisoned record never holds back the
    /// others of its group).
    async fn send_updates(&self, chunk: Chunk, rejected: &mut Vec<Rejection>) -> Result<()> {
        let mut cmd = RawDocumentBuf::new();
        cmd.append("update", TASKS);
        cmd.append("updates", chunk.statements);
        cmd.append("ordered", false);
        let reply = self.db.run_raw_command(cmd).await?;
        let mut refused = Vec::new();
        check_write_reply(&reply, &chunk.ids, &mut refused)?;
        let mut singles = Chunk::default();
        for (index, r) in refused {
            let ids = &chunk.ids[index];
            if ids.len() == 1 {
                rejected.push(r);
                continue;
            }
            for id in ids {
                let u = chunk.docs[index].clone();
                let statement = crate::update::statement(&[*id], u.clone());
                let statement =
                    RawDocumentBuf::from_document(&statement).map_err(|e| encode_id(*id, e))?;
                let size = statement.as_bytes().len();
                if singles.len() == MAX_STATEMENTS || singles.bytes + size > MAX_STATEMENT_BYTES {
                    Box::pin(self.send_updates(std::mem::take(&mut singles), rejected)).await?;
                }
                singles.push(vec![*id], u, statement, size);
            }
        }
        if singles.len() > 0 {
            Box::pin(self.send_updates(singles, rejected)).await?;
        }
        Ok(())
    }

    /// Puts a dead task back in the queued state, atomically: status `queued`, attempts
    /// 0, `finished_at` cleared, `scheduled_at` and `updated_at` set to `now`, `seq`
    /// incremented, and a `queued` event appended. (The dates are `$set`, not `$max`ed:
    /// this is the one write that may move them back.) The caller re-enqueues the task in
    /// the broker and must continue its transition counter above the returned `seq`.
    pub async fn requeue_dead(&self, id: TaskId, now: DateTime<Utc>) -> Result<RequeueOutcome> {
        let event = event_doc(&taskq_core::TaskEvent {
            status: TaskStatus::Queued,
            at: now,
            attempt: 0,
            error: None,
            worker: None,
        });
        let updated = self
            .tasks
            .find_one_and_update(
                doc! { f::ID: id.to_string(), f::ST_STATUS: TaskStatus::Dead.as_str() },
                // Dotted paths change the values of `st` in place, keeping its field
                // order; `$inc` keeps `seq` an Int64.
                doc! {
                    "$set": {
                        f::ST_STATUS: TaskStatus::Queued.as_str(),
                        f::ST_ATTEMPTS: 0_i64,
                        f::FINISHED_AT: Bson::Null,
                        f::SCHEDULED_AT: date(now),
                        f::UPDATED_AT: date(now),
                    },
                    "$inc": { f::ST_SEQ: 1_i64 },
                    "$push": { f::EVENTS: event },
                },
            )
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(doc) = updated {
            return Ok(RequeueOutcome::Requeued(Box::new(stored_task(&doc)?)));
        }
        let current = self
            .tasks
            .find_one(doc! { f::ID: id.to_string() })
            .projection(doc! { f::ST_STATUS: 1 })
            .await?;
        match current {
            None => Ok(RequeueOutcome::NotFound),
            Some(doc) => {
                let status = doc
                    .get_document(f::ST)
                    .ok()
                    .and_then(|st| st.get_str(f::STATUS).ok())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::Corrupt {
                        id: id.to_string(),
                        reason: format!("field `{}` is missing or unknown", f::ST_STATUS),
                    })?;
                Ok(RequeueOutcome::NotDead(status))
            }
        }
    }

    /// How many tasks are in each status, optionally in one queue. Every status is
    /// present in the map, with 0 when no task has it.
    pub async fn count_by_status(
        &self,
        queue: Option<&QueueName>,
    ) -> Result<HashMap<TaskStatus, u64>> {
        let mut pipeline = Vec::new();
        if let Some(q) = queue {
            pipeline.push(doc! { "$match": { f::QUEUE: q.as_str() } });
        }
        pipeline
            .push(doc! { "$group": { "_id": format!("${}", f::ST_STATUS), "n": { "$sum": 1 } } });
        let groups: Vec<Document> = self.tasks.aggregate(pipeline).await?.try_collect().await?;
        let mut counts: HashMap<TaskStatus, u64> =
            TaskStatus::ALL.into_iter().map(|s| (s, 0)).collect();
        for g in groups {
            let status = match g.get("_id") {
                Some(Bson::String(s)) => s.parse::<TaskStatus>().map_err(|e| Error::Corrupt {
                    id: "<some task>".to_owned(),
                    reason: format!("field `{}`: {e}", f::ST_STATUS),
                })?,
                other => {
                    return Err(Error::Corrupt {
                        id: "<some task>".to_owned(),
                        reason: format!("field `{}` is {other:?}", f::ST_STATUS),
                    });
                }
            };
            let n = match g.get("n") {
                Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
                Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
                Some(Bson::Double(n)) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
                _ => None,
            }
            .ok_or_else(|| Error::Reply {
                command: "aggregate",
                reason: format!("count is not a non-negative integer: {g}"),
            })?;
            *counts.entry(status).or_default() += n;
        }
        Ok(counts)
    }
}

/// Runs [`Store::ensure_indexes`] (and [`Store::ensure_retention`] when `retention` is
/// given) until it succeeds, then sets `ready`. Meant to be
/// spawned at start-up so that a process whose database is not reachable yet still
/// starts (and reports not-ready) instead of crashing. Retries back off from 200 ms to
/// 10 s; each failure is logged.
pub async fn ensure_indexes_with_retry(
    store: Store,
    retention: Option<Retention>,
    ready: Arc<AtomicBool>,
) {
    let mut delay = Duration::from_millis(200);
    let mut failures = 0_u32;
    loop {
        let ensured = match store.ensure_indexes().await {
            Ok(()) => match retention {
                Some(r) => store.ensure_retention(r).await,
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        match ensured {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!(failures, "task store indexes are in place");
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(
                    error = %e,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "creating the task store indexes failed; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn encode(u: &StatusUpdate, e: impl std::fmt::Display) -> Error {
    encode_id(u.id, e)
}

fn encode_id(id: TaskId, e: impl std::fmt::Display) -> Error {
    Error::Encode {
        id,
        reason: e.to_string(),
    }
}

/// Most records one multi-document statement addresses. Kept small: a server may match
/// each record it finds through the `_id` index against the whole `$in` list again
/// (mongo-java-server does, with a linear scan of the list), so a statement's cost can
/// grow with the square of its size; the release of thousands of flow dependents at
/// once made single statements of thousands of ids that took most of a flow's MongoDB
/// time. A hundred ids keep that small while still saving most statements.
const MAX_GROUP: usize = 100;

/// Statements of one `update` command, the tasks each addresses and its update document.
#[derive(Default)]
struct Chunk {
    statements: RawArrayBuf,
    ids: Vec<Vec<TaskId>>,
    docs: Vec<Document>,
    bytes: usize,
}

impl Chunk {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn push(&mut self, ids: Vec<TaskId>, u: Document, statement: RawDocumentBuf, size: usize) {
        self.statements.push(statement);
        self.ids.push(ids);
        self.docs.push(u);
        // Element overhead in the array: type byte, decimal index, NUL.
        self.bytes += size + 8;
    }
}

/// The document of a record the api inserts: `seq` 1, marked submit-pending.
fn new_record_doc(rec: &TaskRecord) -> Result<Document> {
    let mut d = record_doc(rec, 1)?;
    d.insert(f::SUBMIT_PENDING, date(rec.created_at));
    Ok(d)
}

/// Checks the reply of an `update` command: `ok` must be 1; each entry of
/// `writeErrors` becomes a [`Rejection`] (of the first task its statement addresses),
/// with the statement's index; a `writeConcernError` fails the whole command
/// (retryable).
pub(crate) fn check_write_reply(
    reply: &Document,
    ids: &[Vec<TaskId>],
    rejected: &mut Vec<(usize, Rejection)>,
) -> Result<()> {
    let bad = |reason: String| Error::Reply {
        command: "update",
        reason,
    };
    let ok = match reply.get("ok") {
        Some(Bson::Double(x)) => *x == 1.0,
        Some(Bson::Int32(n)) => *n == 1,
        Some(Bson::Int64(n)) => *n == 1,
        Some(Bson::Boolean(b)) => *b,
        _ => false,
    };
    if !ok {
        return Err(bad(format!("not ok: {reply}")));
    }
    if let Some(wce) = reply.get("writeConcernError") {
        return Err(bad(format!("write concern error: {wce}")));
    }
    let errors = match reply.get("writeErrors") {
        None | Some(Bson::Null) => return Ok(()),
        Some(Bson::Array(a)) => a,
        Some(other) => return Err(bad(format!("`writeErrors` is {other}"))),
    };
    for e in errors {
        let Bson::Document(e) = e else {
            return Err(bad(format!("write error {e} is not a document")));
        };
        let index = match e.get("index") {
            Some(Bson::Int32(i)) => usize::try_from(*i).ok(),
            Some(Bson::Int64(i)) => usize::try_from(*i).ok(),
            _ => None,
        };
        let Some((index, id)) = index.and_then(|i| Some((i, ids.get(i)?.first()?))) else {
            return Err(bad(format!("write error without a valid index: {e}")));
        };
        let code = match e.get("code") {
            Some(Bson::Int32(c)) => Some(i64::from(*c)),
            Some(Bson::Int64(c)) => Some(*c),
            _ => None,
        };
        let message = e.get_str("errmsg").unwrap_or("no message").to_owned();
        rejected.push((
            index,
            Rejection {
                id: *id,
                code,
                message,
            },
        ));
    }
    Ok(())
}

/// Whole seconds of `d`, as MongoDB takes `expireAfterSeconds`.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_errors_name_their_task() {
        let ids = [
            vec![TaskId::new()],
            vec![TaskId::new()],
            vec![TaskId::new()],
        ];
        let mut rejected = Vec::new();
        let reply = doc! {
            "n": 2, "nModified": 2, "ok": 1.0,
            "writeErrors": [ { "index": 2, "code": 17419, "errmsg": "too large" } ],
        };
        assert!(check_write_reply(&reply, &ids, &mut rejected).is_ok());
        assert_eq!(
            rejected,
            vec![(
                2,
                Rejection {
                    id: ids[2][0],
                    code: Some(17419),
                    message: "too large".into()
                }
            )]
        );
        assert!(check_write_reply(&doc! { "ok": 0.0 }, &ids, &mut rejected).is_err());
        assert!(
            check_write_reply(
                &doc! { "ok": 1, "writeConcernError": { "code": 64 } },
                &ids,
                &mut rejected
            )
            .is_err()
        );
        let bad_index = doc! { "ok": 1, "writeErrors": [ { "index": 9, "code": 1 } ] };
        assert!(check_write_reply(&bad_index, &ids, &mut rejected).is_err());
    }
}
