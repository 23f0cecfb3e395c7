//! [`Store`], the handle to the `tasks` collection: connecting, the indexes and the
//! retention TTL index. Its operations are in one module per concern: `submits` (records
//! before their task's first transition), `apply` (status updates), `read`, `dead`
//! (dead letters), `progress`, `flows` and `browse` (the dashboard's queries).
//!
//! No operation uses transactions or the MongoDB 8 `bulkWrite` command, so the same code
//! runs against MongoDB 7, FerretDB and mongo-java-server. Atomicity comes from
//! single-document operations: `findAndModify` for a manual retry, and order-independent
//! `$max` updates by `_id` (see [`crate::update`]) for status changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use taskq_core::TaskRecord;

use crate::Result;
use crate::doc::f;

/// The collection holding one document per task.
pub const TASKS: &str = "tasks";

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

/// Handle to the task store. Cheap to clone; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: Database,
    /// The `tasks` collection of `db`.
    pub(crate) tasks: Collection<Document>,
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

/// Whole seconds of `d`, as MongoDB takes `expireAfterSeconds`.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
