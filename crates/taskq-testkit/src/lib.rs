//! Test harness shared by taskq's integration tests. Every backing service a test touches
//! is the real thing over a real connection:
//!
//! - [`RedisServer`] and [`RedisCluster`] spawn `redis-server` child processes on free
//!   loopback ports (three cluster-enabled nodes joined by `redis-cli --cluster create`
//!   for the cluster) and kill them when dropped.
//! - [`mongo_uri`] returns the MongoDB wire-protocol server the test run points at
//!   (`TASKQ_TEST_MONGODB_URI`, exported by `scripts/test.sh`); [`unique_db_name`] gives
//!   every test its own database or key prefix.
//! - [`ChaosProxy`] sits between a client and a server and can cut the connection on
//!   demand, to simulate MongoDB or Redis going away mid-run.
//! - [`ChildGuard`] owns a spawned process (for example a binary located with
//!   [`workspace_bin`]) and kills it on drop; [`wait_until`] and [`wait_for`] poll for a
//!   condition with a deadline.
//!
//! This is test code: a missing tool or a service that does not come up is reported with
//! a panic whose message says how to fix it (usually "run `scripts/setup.sh`"), never by
//! silently skipping the test.

mod env_list;
mod mongo;
pub mod otlp;
mod port;
mod process;
mod proxy;
mod redis;
mod resp;
mod wait;

pub use env_list::assert_env_list;
pub use mongo::{MONGODB_URI_ENV, mongo_addr, mongo_uri, mongo_uri_via, unique_db_name};
pub use port::free_port;
pub use process::{ChildGuard, workspace_bin};
pub use proxy::ChaosProxy;
pub use redis::{RedisCluster, RedisServer};
pub use wait::{wait_for, wait_until, wait_until_blocking};
