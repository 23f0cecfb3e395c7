//! The TASKQ_* variables of the api and the worker, as their clap parsers declare them,
//! against the lists the chart's template tests use (scripts/chart/env/): the chart may
//! set no variable a binary does not read. Regenerate the lists with
//! `TASKQ_WRITE_ENV_LISTS=1 cargo test -p taskq-tests env_names`.

use clap::CommandFactory;

fn check(binary: &str, command: clap::Command) {
    let mut names: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    assert!(names.contains(&"TASKQ_REDIS_URL".to_owned()), "{binary}: {names:?}");
    let text = names.join("\n") + "\n";
    let path = format!(
        "{}/../../scripts/chart/env/{binary}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("TASKQ_WRITE_ENV_LISTS").is_some() {
        std::fs::write(&path, &text).expect("write the list");
    }
    let listed = std::fs::read_to_string(&path).expect("read the list");
    assert!(
        listed == text,
        "{path} is stale; regenerate it with\n  TASKQ_WRITE_ENV_LISTS=1 cargo test -p taskq-tests env_names"
    );
}

#[test]
fn env_names_api() {
    check("taskq-api", taskq_api::ApiArgs::command());
}

#[test]
fn env_names_worker() {
    check("taskq-worker", taskq_worker::WorkerArgs::command());
}
