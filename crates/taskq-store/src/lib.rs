//! taskq's MongoDB store: the system of record for tasks.
//!
//! - [`Store`] owns the `tasks` collection: inserting and deleting records, reading one
//!   or a page of them, counting them by status, a manual retry of a dead task, and
//!   [`Store::apply`], which records status updates that may arrive out of order.
//! - [`UpdateWriter`] batches status updates of one process and writes them with one
//!   round trip per batch, retrying (never dropping) while the server is unreachable;
//!   [`apply_batch`] is its flush on its own (the worker's outbox writers use it).
//!
//! The document layout is described in `doc.rs`; the ordering rule for status updates
//! (a per-task `seq`) in [`StatusUpdate`].

mod apply;
mod browse;
#[cfg(feature = "cli")]
mod cli;
mod dead;
mod doc;
mod error;
mod flows;
mod progress;
mod read;
mod store;
mod submits;
mod update;
mod writer;

pub use browse::Search;
#[cfg(feature = "cli")]
pub use cli::MongoArgs;
pub use dead::RequeueOutcome;
pub use error::{Error, Rejection, Result};
pub use progress::ProgressReport;
pub use read::{ListFilter, MAX_LIST_LIMIT, Page};
pub use store::{
    RETENTION_INDEX, Retention, Store, StoreOptions, StoredTask, TASKS, ensure_indexes_with_retry,
};
pub use submits::{PendingSubmit, SUBMIT_FAILED};
pub use update::StatusUpdate;
pub use writer::{
    FlushObserver, Unflushed, UpdateWriter, WriterClosed, WriterOptions, WriterStats, WriterTask,
    apply_batch,
};
