//! The TASKQ_* variables of the api and the worker, as their clap parsers declare them,
//! against the lists the chart's template tests use (scripts/chart/env/): the chart may
//! set no variable a binary does not read. Regenerate the lists with
//! `TASKQ_WRITE_ENV_LISTS=1 cargo test -p taskq-tests env_names`.

use clap::CommandFactory;
use taskq_testkit::assert_env_list;

#[test]
fn env_names_api() {
    assert_env_list("taskq-api", &taskq_api::ApiArgs::command());
}

#[test]
fn env_names_worker() {
    assert_env_list("taskq-worker", &taskq_worker::WorkerArgs::command());
}
