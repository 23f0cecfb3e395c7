//! Child processes of the bench: `taskq-api` and `taskq-worker` (its own `redis-server` is
//! taskq-testkit's [`RedisServer`](taskq_testkit::RedisServer)).
//!
//! Every child writes stdout and stderr to a log file in the run's directory and is
//! killed (SIGKILL) if its [`Proc`] is dropped; [`Proc::stop`] is the graceful way
//! (SIGTERM, then SIGKILL after a grace period). Figures about a child (peak RSS, CPU
//! time) come from `/proc/<pid>`, so they are only available while it runs.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How long a child may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Fresh ports tried when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Lines of a child's log quoted in an error.
const LOG_TAIL: usize = 30;

/// A running child process with its log.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails, quoting the log, if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// The last lines of the child's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Number of lines the child has logged.
    pub fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |t| t.lines().count())
    }

    /// Peak resident set size (`VmHWM`) in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmHWM:")
    }

    /// SIGTERM, then SIGKILL if the child is still running after `grace`.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        // The pid is ours and not reaped yet, so it cannot name another process.
        let pid = Pid::from_raw(i32::try_from(self.pid).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).with_context(|| format!("signalling {}", self.name))?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for {}", self.name)),
            Err(_) => {
                self.child.kill().await.ok();
                bail!(
                    "{} did not stop within {grace:?} of SIGTERM; killed it",
                    self.name
                )
            }
        }
    }
}

/// A `KiB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of `/proc/<pid>/stat` (`pid` may be `self`).
pub fn pid_cpu_ticks(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields follow the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3 of the man page, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The pid of the MongoDB server named by `uri` when it runs on this machine (a loopback
/// host), found through its listening socket; `None` when it is remote or not visible.
pub fn local_mongodb_pid(uri: &str) -> Option<u32> {
    let rest = uri.strip_prefix("mongodb://")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = authority[authority.rfind('@').map_or(0, |i| i + 1)..]
        .split(',')
        .next()?;
    let (name, port) = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], host[i + 1..].parse().ok()?),
        _ => (host, 27017),
    };
    if !matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
        return None;
    }
    listener_pid(port)
}

/// The pid of the process holding a listening TCP socket on `port`, from
/// `/proc/net/tcp{,6}` (the socket's inode) and `/proc/<pid>/fd` (who holds it).
fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port) && cols.get(3) == Some(&"0A") {
                inodes.extend(cols.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding a probe socket on 127.0.0.1")?;
    Ok(l.local_addr()
        .context("reading the probe socket's address")?
        .port())
}

/// What the api and worker processes are pointed at.
#[derive(Debug, Clone)]
pub struct ServiceEnv {
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub redis_url: String,
    pub mongodb_uri: String,
    pub database: String,
    pub queue: String,
    pub slots: usize,
    pub max_batch: usize,
    /// The api's `submit` token (`TASKQ_TOKENS`); requests carry it as a bearer token.
    pub api_token: String,
    /// Remove every inherited `OTEL_*` variable from the children (before the extra
    /// environment is applied), so an arm without an exporter has none.
    pub clear_otel: bool,
    /// Extra environment, applied last.
    pub worker_env: Vec<(String, String)>,
    pub api_env: Vec<(String, String)>,
}

impl ServiceEnv {
    fn command(&self, bin: &str, port: u16) -> anyhow::Result<Command> {
        let path = self.bin_dir.join(bin);
        if !path.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p taskq-api -p taskq-worker` \
                 (and run the bench with --release), or pass --bin-dir",
                path.display()
            );
        }
        let mut cmd = Command::new(path);
        cmd.env("TASKQ_LISTEN", format!("127.0.0.1:{port}"))
            .env("TASKQ_REDIS_URL", &self.redis_url)
            .env("TASKQ_REDIS_CLUSTER", "false")
            .env("TASKQ_MONGODB_URI", &self.mongodb_uri)
            .env("TASKQ_MONGODB_DATABASE", &self.database)
            .env("TASKQ_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            // Errors stay short; backtraces would push the cause out of the quoted log tail.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        if self.clear_otel {
            for (k, _) in std::env::vars_os() {
                if k.to_str().is_some_and(|k| k.starts_with("OTEL_")) {
                    cmd.env_remove(k);
                }
            }
        }
        Ok(cmd)
    }

    /// Starts `taskq-api` and waits until `/readyz` answers 200.
    pub async fn start_api(&self, http: &reqwest::Client) -> anyhow::Result<(Proc, SocketAddr)> {
        self.start("taskq-api", http, |cmd| {
            cmd.env("TASKQ_MAX_BATCH", self.max_batch.max(1000).to_string())
                .env("TASKQ_AUTH", "on")
                .env("TASKQ_TOKENS", format!("submit:{}", self.api_token))
                .envs(self.api_env.iter().map(|(k, v)| (k, v)));
        })
        .await
    }

    /// Spawns `taskq-worker` serving the bench queue with `slots` slots, without waiting
    /// for readiness: the caller times the worker from its spawn and watches it run.
    pub fn spawn_worker(&self) -> anyhow::Result<(Proc, SocketAddr)> {
        let port = free_port()?;
        let mut cmd = self.command("taskq-worker", port)?;
        cmd.env("TASKQ_QUEUES", &self.queue)
            .env("TASKQ_CONCURRENCY", self.slots.to_string())
            .envs(self.worker_env.iter().map(|(k, v)| (k, v)));
        let log = self.log_dir.join(format!("taskq-worker-{port}.log"));
        let proc = Proc::spawn("taskq-worker", cmd, log)?;
        Ok((proc, SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
    }

    async fn start(
        &self,
        bin: &str,
        http: &reqwest::Client,
        extra: impl Fn(&mut Command),
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut cmd = self.command(bin, port)?;
            extra(&mut cmd);
            let log = self.log_dir.join(format!("{bin}-{port}.log"));
            let mut proc = Proc::spawn(bin, cmd, log)?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            match wait_ready(&mut proc, addr, http).await {
                Ok(()) => return Ok((proc, addr)),
                Err(e)
                    if proc.log_tail().contains("Address already in use")
                        && attempt + 1 < PORT_ATTEMPTS =>
                {
                    drop(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("{bin} found {PORT_ATTEMPTS} chosen ports taken")
    }
}

/// Waits until the child's `/readyz` answers 200 (both its stores up).
pub async fn wait_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        proc.check_alive()?;
        let last = match http.get(&url).timeout(Duration::from_secs(3)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "{} was not ready within {READY_TIMEOUT:?} (last answer: {last}); its log:\n{}",
                proc.name(),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_listening_on_a_port() -> anyhow::Result<()> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = l.local_addr()?.port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        let uri = format!("mongodb://u:p@127.0.0.1:{port}/db?w=1");
        assert_eq!(local_mongodb_pid(&uri), Some(std::process::id()));
        assert_eq!(local_mongodb_pid("mongodb://db.example:27017"), None);
        Ok(())
    }

    #[test]
    fn reads_own_cpu_and_memory() {
        assert!(pid_cpu_ticks("self").is_some());
        assert!(status_kib(std::process::id(), "VmHWM:").is_some_and(|k| k > 0));
    }
}
