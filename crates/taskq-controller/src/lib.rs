//! taskq's controller: scales worker Deployments from the depth of taskq queues.
//!
//! A `TaskQueueScaler` ([`crd`]) names a Deployment and the queues it serves. Every
//! polling interval the leader ([`leader`]) reads each queue's depth from Redis
//! ([`depth`]), decides the replica count ([`scaling`], a pure function) and sets it
//! through the Deployment's `scale` subresource ([`reconcile`]), reporting what it saw
//! and did in the scaler's status, in Events, in Prometheus [`metrics`] and in one trace
//! span per reconcile. [`runner`] wires it together; [`http`] serves `/livez`, `/readyz`
//! and `/metrics`.

pub mod config;
pub mod crd;
pub mod depth;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod runner;
pub mod scaling;

pub use config::Args;
pub use crd::{TaskQueueScaler, TaskQueueScalerSpec, TaskQueueScalerStatus};
pub use runner::{RunOptions, run, serve};
