//! taskq's worker library.
//!
//! A [`Worker`] leases tasks from the queues it serves, runs each with the handler
//! registered for its type, and acknowledges the outcome in Redis. Every state change is
//! recorded by the Redis script that makes it in the queue's outbox stream, and the
//! outbox writers take it to MongoDB in batches, so the store is never on a task's hot
//! path and no status change is lost when a process dies. Custom workers build a
//! [`Registry`] and call [`run`] (see `examples/`).
//!
//! Background loops, one file each: [`fetcher`](crate::fetcher) (lease work into free
//! slots), `executor` (run one attempt: timeout, panic containment, cancellation),
//! `completer` (acknowledge outcomes in batches), `heartbeat` (extend leases),
//! `maintenance` (promote due tasks, reap expired leases), `outbox` (apply the queues'
//! status updates to MongoDB; `notify` then publishes the tasks that finished), `submits` (settle records whose submit never reached
//! Redis), `registration` (the worker registry the dashboard lists) and `health` (probes).
//!
//! Shutdown order: stop fetching; let running attempts finish within the grace period;
//! cancel and release the rest back to their queues; acknowledge everything (the
//! heartbeat keeps every lease until its attempt is acknowledged), then stop the other
//! loops; apply what the outbox holds for this worker (bounded; the rest stays for the
//! other writers).

mod builtin;
mod completer;
mod config;
mod executor;
mod fetcher;
mod flows;
mod handler;
mod health;
mod heartbeat;
mod maintenance;
mod notify;
mod outbox;
mod progress;
mod registration;
mod submits;
mod worker;

pub use builtin::{HttpHandler, UrlAllowList, register_builtins};
pub use config::{Settings, WorkerArgs, default_worker_id};
pub use handler::{
    Handler, HandlerError, HandlerFuture, HandlerResult, ProgressError, Registry, TaskContext,
};
pub use health::router as health_router;
pub use worker::{Worker, run};
