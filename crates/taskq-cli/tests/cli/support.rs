//! Running the real `taskq` binary with a clean environment.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// Variables the CLI reads; removed so the caller's environment cannot leak in.
const CLI_ENV: &[&str] = &[
    "TASKQ_API",
    "TASKQ_OUTPUT",
    "TASKQ_TOKEN",
    "TASKQ_BATCH_SIZE",
    "TASKQ_CLI_REQUEST_TIMEOUT_MS",
];

/// The outcome of one run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(out).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out}"))
    }

    /// Asserts exit 1 with exactly one `error: …` line on stderr; returns the line.
    #[track_caller]
    pub fn error_line(&self) -> &str {
        assert_eq!(self.code, Some(1), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0]
    }
}

/// Runs `taskq --api <api> <args…>`.
pub async fn taskq(api: &str, args: &[&str]) -> Run {
    taskq_with(Some(api), args, &[], None).await
}

/// Runs `taskq --api <api> <line>`, `line` split at whitespace (no quoting: for
/// arguments that hold no spaces).
pub async fn taskq_line(api: &str, line: &str) -> Run {
    taskq(api, &line.split_whitespace().collect::<Vec<_>>()).await
}

/// Runs `taskq --api <api> <line>` as [`taskq_line`] does, asserts it succeeded and
/// returns its stdout.
pub async fn taskq_out(api: &str, line: &str) -> String {
    taskq_line(api, line).await.ok().to_owned()
}

/// Runs `taskq --api <api> submit <line> -o json`, `line` split as by [`taskq_line`].
pub async fn submit_line(api: &str, line: &str) -> Run {
    submit_json(api, &line.split_whitespace().collect::<Vec<_>>()).await
}

/// Runs `taskq --api <api> submit <args…> -o json`.
pub async fn submit_json(api: &str, args: &[&str]) -> Run {
    let args: Vec<&str> = ["submit"]
        .iter()
        .chain(args)
        .chain(&["-o", "json"])
        .copied()
        .collect();
    taskq(api, &args).await
}

/// Runs `taskq` with `--api` when given, extra environment and optional stdin bytes
/// (stdin is otherwise empty and never a terminal).
pub async fn taskq_with(
    api: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskq"));
    for var in CLI_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    if let Some(api) = api {
        cmd.args(["--api", api]);
    }
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn taskq");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("taskq finished within 60 s")
        .expect("taskq output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A JSON-lines file in a temporary directory.
pub fn jsonl_file(content: &str) -> tempfile::TempPath {
    let file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), content).expect("write jsonl");
    file.into_temp_path()
}

/// A path as `&str`.
pub fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Asserts that `out` contains every one of `parts`.
#[track_caller]
pub fn assert_contains(out: &str, parts: &[&str]) {
    for part in parts {
        assert!(out.contains(part), "{part:?} missing from:\n{out}");
    }
}
