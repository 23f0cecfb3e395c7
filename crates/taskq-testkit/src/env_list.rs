//! The chart's lists of the `TASKQ_*` variables each binary reads
//! (`scripts/chart/env/<binary>.txt`), checked against the binary's clap parser: the
//! chart's template tests allow a taskq container no other `TASKQ_*` variable.

use std::path::Path;

/// Asserts that `scripts/chart/env/<binary>.txt` lists exactly the environment variables
/// of `command`'s arguments (sorted, one per line). With `TASKQ_WRITE_ENV_LISTS` set it
/// writes the list first (how the lists are regenerated).
pub fn assert_env_list(binary: &str, command: &clap::Command) {
    let mut names: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    assert!(
        names.iter().any(|n| n == "TASKQ_REDIS_URL"),
        "{binary}: no TASKQ_REDIS_URL among {names:?}"
    );
    let text = names.join("\n") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/chart/env")
        .join(format!("{binary}.txt"));
    if std::env::var_os("TASKQ_WRITE_ENV_LISTS").is_some() {
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    let listed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        listed == text,
        "{} is stale; regenerate the lists with\n  TASKQ_WRITE_ENV_LISTS=1 cargo test -p taskq-controller env_list\n  TASKQ_WRITE_ENV_LISTS=1 cargo test -p taskq-tests env_names",
        path.display()
    );
}
