//! Black-box tests of the `taskq` binary: one test binary, two kinds of server.
//!
//! - `fake_api`: a tiny axum server that imitates every endpoint's contract (status
//!   codes and bodies), including the endpoints the api does not have yet. It tests the
//!   CLI's HTTP handling — what it sends, how it renders, how it fails — not the api.
//! - `real_api`: the real api served in-process on real Redis and MongoDB, for the
//!   endpoints that exist (submit, batch, get, list, retry).

#[path = "cli/fake_api.rs"]
mod fake_api;
#[path = "cli/real_api.rs"]
mod real_api;
#[path = "cli/support.rs"]
mod support;
