//! End-to-end tests, in one binary so they link once. Each test gets its own Redis
//! server and its own MongoDB database.

mod harness;

mod auth;
mod bad_input;
mod cluster;
mod crash;
mod env_names;
mod execute;
mod flows;
mod group;
mod http_errors;
mod keys;
mod lifecycle;
mod observability;
mod operations;
mod outage;
mod periodic;
mod query;
mod slow_clients;
mod submit_faults;
mod ui;
mod wait;
mod worker_faults;
