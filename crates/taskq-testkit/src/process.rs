//! Child processes owned by a test.
//!
//! [`ChildGuard`] kills its process (SIGKILL) and reaps it when dropped, so a failing or
//! panicking test never leaves a server or binary running. A guard can send SIGTERM or
//! SIGINT to exercise graceful shutdown, and can capture the child's stdout and stderr in
//! a log file whose tail is printed when the guard is dropped during a panic, so the
//! failing test's output shows what the child said. [`workspace_bin`] finds the binaries
//! that `cargo build --workspace --bins` put next to the test executable.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How many trailing log lines a guard prints when it is dropped during a panic.
const LOG_TAIL_LINES: usize = 200;

/// A spawned child process that is killed with SIGKILL and reaped when the guard is
/// dropped (unless it has already exited).
#[derive(Debug)]
pub struct ChildGuard {
    /// Human-readable name used in messages, e.g. `taskq-worker` or `redis-server:6379`.
    name: String,
    child: Child,
    /// Exit status once the child has been reaped; `Child` forgets it otherwise.
    status: Option<ExitStatus>,
    /// File holding the child's stdout and stderr, when captured.
    log_path: Option<PathBuf>,
    /// Owns the directory of `log_path` when the guard created it.
    _log_dir: Option<TempDir>,
}

impl ChildGuard {
    /// Wraps an already spawned child.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
            status: None,
            log_path: None,
            _log_dir: None,
        }
    }

    /// Spawns `command` as it is configured (stdio included) and guards the child.
    ///
    /// # Panics
    ///
    /// Panics with the program name and the OS error if the process cannot be started.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Self {
        let name = name.into();
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {name} ({}): {e}",
                command.get_program().to_string_lossy()
            )
        });
        Self::new(name, child)
    }

    /// Spawns `command` with stdin closed and stdout and stderr appended to a log file in
    /// a fresh temporary directory (see [`ChildGuard::log`]). If the guard is dropped
    /// while the thread panics, the last lines of the log are printed to stderr.
    ///
    /// # Panics
    ///
    /// Panics if the log file cannot be created or the process cannot be started.
    pub fn spawn_logged(name: impl Into<String>, command: &mut Command) -> Self {
        let name = name.into();
        let dir = tempfile::Builder::new()
            .prefix("taskq-child-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a log directory for {name}: {e}"));
        let log_path = dir.path().join("output.log");
        let (stdout, stderr) = log_stdio(&log_path);
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let mut guard = Self::spawn(name, command);
        guard.log_path = Some(log_path);
        guard._log_dir = Some(dir);
        guard
    }

    /// Records that the child writes its output to `path` (owned by the caller).
    pub(crate) fn with_log_path(mut self, path: PathBuf) -> Self {
        self.log_path = Some(path);
        self
    }

    /// The name given when the guard was created.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The wrapped child, e.g. to take a piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Path of the captured output, if the guard captures it.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// Everything the child has written to its captured output so far (empty if the
    /// output is not captured or unreadable).
    pub fn log(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the child has exited, without blocking.
    ///
    /// # Panics
    ///
    /// Panics if the OS refuses to report the child's state.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot query the state of {}: {e}", self.name));
        }
        self.status
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM (graceful shutdown request) without waiting. No-op if the child has
    /// already exited.
    pub fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGINT (Ctrl-C) without waiting. No-op if the child has already exited.
    pub fn interrupt(&mut self) {
        self.signal(Signal::SIGINT);
    }

    /// Kills the child with SIGKILL, as a crash or an OOM kill would, and reaps it.
    /// No-op if the child has already exited.
    ///
    /// # Panics
    ///
    /// Panics if the killed child cannot be reaped.
    pub fn kill_9(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        // `Child::kill` sends SIGKILL on Unix. It fails only if the child was already
        // reaped, which `try_wait` above rules out.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {} after SIGKILL: {e}", self.name));
        self.status = Some(status);
        status
    }

    fn signal(&mut self, signal: Signal) {
        // Checking (and thereby reaping) first guarantees the pid still belongs to our
        // child: an unreaped child's pid cannot be reused.
        if self.try_wait().is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            panic!("pid of {} does not fit in pid_t", self.name);
        };
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => panic!("cannot send {signal} to {} (pid {pid}): {e}", self.name),
        }
    }

    /// The last [`LOG_TAIL_LINES`] lines of the captured output.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
        if std::thread::panicking() && self.log_path.is_some() {
            eprintln!(
                "----- last output of {} (pid {}) -----\n{}\n----- end of {} -----",
                self.name,
                self.child.id(),
                self.log_tail(),
                self.name
            );
        }
    }
}

/// Opens (creating or appending) `path` twice: once for stdout, once for stderr.
pub(crate) fn log_stdio(path: &Path) -> (File, File) {
    let open = || {
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()))
    };
    (open(), open())
}

/// Path of the workspace binary `name` built for the same profile as the running test,
/// i.e. `target/<profile>/<name>`.
///
/// Test executables live in `target/<profile>/deps/`; the binaries built by
/// `cargo build --workspace --bins` live one level up.
///
/// # Panics
///
/// Panics if the binary has not been built, saying to run
/// `cargo build --workspace --bins` first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot locate the running test executable: {e}"));
    let path = bin_path_next_to(&exe, name);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}; run `cargo build --workspace --bins` first \
             (add --release when the tests run with --release); `scripts/test.sh` does both",
            path.display()
        );
    }
    path
}

/// `<profile dir>/<name>` for an executable in `<profile dir>` or `<profile dir>/deps`.
fn bin_path_next_to(exe: &Path, name: &str) -> PathBuf {
    let mut dir = exe.parent().unwrap_or_else(|| Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn sleeper() -> ChildGuard {
        ChildGuard::spawn("sleep", Command::new("sleep").arg("30"))
    }

    fn pid_exists(pid: u32) -> bool {
        let pid = i32::try_from(pid).expect("pid fits");
        kill(Pid::from_raw(pid), None).is_ok()
    }

    #[test]
    fn terminate_sends_sigterm() {
        let mut child = sleeper();
        assert!(child.is_running());
        assert!(child.wait_timeout(Duration::from_millis(50)).is_none());
        child.terminate();
        let status = child
            .wait_timeout(Duration::from_secs(5))
            .expect("child exits after SIGTERM");
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        // Signalling an exited child is a no-op.
        child.terminate();
        child.interrupt();
    }

    #[test]
    fn interrupt_sends_sigint() {
        // A child that handles SIGINT itself: `sleep` would inherit an ignored SIGINT
        // when the tests run as a background job, as taskq's binaries never do.
        let mut child = ChildGuard::spawn_logged(
            "perl",
            Command::new("perl").args([
                "-e",
                "$| = 1; $SIG{INT} = sub { exit 42 }; print qq(ready\\n); sleep 30",
            ]),
        );
        assert!(
            crate::wait_until_blocking(Duration::from_secs(5), Duration::from_millis(10), || {
                child.log().contains("ready")
            }),
            "perl did not start: {}",
            child.log()
        );
        child.interrupt();
        let status = child
            .wait_timeout(Duration::from_secs(5))
            .expect("child exits after SIGINT");
        assert_eq!(status.code(), Some(42));
    }

    #[test]
    fn kill_9_and_drop_kill_the_child() {
        let mut child = sleeper();
        let status = child.kill_9();
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
        assert!(!child.is_running());
        assert_eq!(child.kill_9().signal(), Some(Signal::SIGKILL as i32));

        let child = sleeper();
        let pid = child.id();
        assert!(pid_exists(pid));
        drop(child);
        assert!(!pid_exists(pid), "dropped child is killed and reaped");
    }

    #[test]
    fn spawn_logged_captures_stdout_and_stderr() {
        let mut child = ChildGuard::spawn_logged(
            "sh",
            Command::new("sh").args(["-c", "echo to-stdout; echo to-stderr >&2; exit 3"]),
        );
        let status = child
            .wait_timeout(Duration::from_secs(5))
            .expect("sh exits");
        assert_eq!(status.code(), Some(3));
        let log = child.log();
        assert!(log.contains("to-stdout"), "{log}");
        assert!(log.contains("to-stderr"), "{log}");
        assert!(child.log_path().is_some_and(Path::is_file));
    }

    #[test]
    fn bin_path_is_next_to_the_deps_dir() {
        for (exe, name, expected) in [
            (
                "/w/target/debug/deps/it-0123abcd",
                "taskq-api",
                "/w/target/debug/taskq-api",
            ),
            (
                "/w/target/release/examples/demo",
                "x",
                "/w/target/release/examples/x",
            ),
        ] {
            assert_eq!(
                bin_path_next_to(Path::new(exe), name),
                PathBuf::from(format!("{expected}{}", std::env::consts::EXE_SUFFIX))
            );
        }
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace --bins")]
    fn missing_workspace_bin_says_how_to_build_it() {
        workspace_bin("taskq-no-such-binary");
    }
}
