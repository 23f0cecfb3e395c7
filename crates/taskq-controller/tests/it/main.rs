//! taskq-controller's integration tests, in one binary:
//!
//! - [`api_calls`]: the exact API calls of a reconcile, against a tower-test mock;
//! - [`envtest`]: the controller against a real kube-apiserver + etcd and a real Redis
//!   (with [`otlp`], a trace receiver for the controller processes' spans).

mod api_calls;
mod envtest;
