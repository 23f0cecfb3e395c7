//! Real `redis-server` processes for tests.
//!
//! [`RedisServer`] is one standalone server; [`RedisCluster`] is three cluster-enabled
//! masters that own all 16384 slots. Both listen on free loopback ports, keep nothing on
//! disk (`--save "" --appendonly no`, data directory in a temporary directory) and are
//! killed when dropped.
//!
//! A server counts as started only when it answers `PING` and its `INFO` reports the
//! process id of the child we spawned; that way a port race with another process (whose
//! server would answer on "our" port) is detected and retried on a fresh port instead of
//! silently testing against a stranger's server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::port::free_port;
use crate::process::{ChildGuard, log_stdio};
use crate::resp;

/// How long a freshly spawned server may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the cluster may take to report `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Fresh ports tried before giving up when the chosen port turns out to be taken.
const START_ATTEMPTS: usize = 8;
/// Number of masters in a [`RedisCluster`].
const CLUSTER_NODES: usize = 3;

const SETUP_HINT: &str = "run `scripts/setup.sh` (installs redis-server and redis-tools)";

/// Why one attempt to start a server failed.
#[derive(Debug)]
enum SpawnError {
    /// The port was taken between choosing it and binding it; retry on another port.
    AddrInUse,
    /// Anything else; the message includes the server log.
    Failed(String),
}

/// Spawns `redis-server` on `port` with its data and log in `dir` and waits until it
/// answers. `extra` is appended to the standard arguments.
fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Result<ChildGuard, SpawnError> {
    let log_path = dir.join(format!("redis-{port}.log"));
    let mut command = Command::new("redis-server");
    command
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra);
    let mut guard = spawn(
        &mut command,
        "redis-server",
        format!("redis-server:{port}"),
        log_path,
    );
    let addr = loopback(port);
    let expected_pid = format!("process_id:{}\r\n", guard.id());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = guard.try_wait() {
            let log = guard.log();
            if log.contains("Address already in use") {
                return Err(SpawnError::AddrInUse);
            }
            return Err(SpawnError::Failed(format!(
                "redis-server on port {port} exited ({status}) before answering PING; its log:\n{log}"
            )));
        }
        if resp::ping(addr)
            && resp::bulk(addr, &["INFO", "server"]).is_ok_and(|info| info.contains(&expected_pid))
        {
            return Ok(guard);
        }
        if Instant::now() >= deadline {
            return Err(SpawnError::Failed(format!(
                "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; its log:\n{}",
                guard.log()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server on fresh ports, retrying when a port turns out to be taken.
/// `args_for()` returns the extra arguments for each attempt (fresh cluster bus ports, say).
fn spawn_on_free_port(
    dir: &Path,
    mut args_for: impl FnMut() -> Vec<String>,
) -> (u16, Vec<String>, ChildGuard) {
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let args = args_for();
        match spawn_redis(port, dir, &args) {
            Ok(child) => return (port, args, child),
            Err(SpawnError::AddrInUse) => continue,
            Err(SpawnError::Failed(message)) => panic!("{message}"),
        }
    }
    panic!("redis-server found every chosen port taken ({START_ATTEMPTS} attempts)");
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

/// A standalone `redis-server` child process on a free loopback port.
///
/// It keeps no data across [`RedisServer::restart`] (no RDB, no AOF), which is what a
/// test of "Redis lost everything" needs. Dropping it kills the server.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Arguments passed after the standard ones; reused by `restart`.
    extra_args: Vec<String>,
    /// `None` while stopped.
    child: Option<ChildGuard>,
    /// Data directory and log; declared last so it outlives the child.
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server --port <free> --bind 127.0.0.1 --save "" --appendonly no
    /// --dir <tempdir>` and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// Panics if `redis-server` is not installed (saying to run `scripts/setup.sh`) or
    /// does not come up within 20 s (with its log).
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`RedisServer::start`], with `args` (e.g. `["--maxmemory", "10mb"]`) appended
    /// to the command line; they are reused by [`RedisServer::restart`].
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with_args(args: &[&str]) -> Self {
        let dir = temp_dir("taskq-redis-");
        let extra: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (port, extra_args, child) = spawn_on_free_port(dir.path(), || extra.clone());
        Self {
            port,
            extra_args,
            child: Some(child),
            dir,
        }
    }

    /// The port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, e.g. the upstream of a [`crate::ChaosProxy`].
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id (`None` while stopped), e.g. to read its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    /// The server's data directory (also holds its log, `redis-<port>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Clients see their connections
    /// reset and new connections refused. No-op if already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_9();
        }
    }

    /// Stops the server if it runs, then starts a new, empty one on the same port.
    ///
    /// # Panics
    ///
    /// Panics if the port stays taken for 10 s (another process grabbed it) or the new
    /// server does not come up.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn_redis(self.port, self.dir.path(), &self.extra_args) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(SpawnError::AddrInUse) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(SpawnError::AddrInUse) => {
                    panic!(
                        "cannot restart redis-server: port {} stays taken",
                        self.port
                    )
                }
                Err(SpawnError::Failed(message)) => panic!("{message}"),
            }
        }
    }
}

/// One master of a [`RedisCluster`].
#[derive(Debug)]
struct ClusterNode {
    port: u16,
    _child: ChildGuard,
}

/// Three `redis-server --cluster-enabled yes` masters on free loopback ports, joined with
/// `redis-cli --cluster create ... --cluster-replicas 0`, covering all 16384 slots.
/// Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    /// Per-node data directories and logs; declared last so it outlives the nodes.
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the three nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok` and knows all three nodes.
    ///
    /// Each node's cluster bus port is chosen explicitly (`--cluster-port`) rather than
    /// the default `port + 10000`, which may be taken or exceed 65535.
    ///
    /// # Panics
    ///
    /// Panics if `redis-server` or `redis-cli` is missing (saying to run
    /// `scripts/setup.sh`), or the cluster is not healthy within 60 s (with the logs).
    pub fn start() -> Self {
        let dir = temp_dir("taskq-redis-cluster-");
        let mut nodes = Vec::with_capacity(CLUSTER_NODES);
        for i in 0..CLUSTER_NODES {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", node_dir.display()));
            let (port, _, child) = spawn_on_free_port(&node_dir, || {
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    &free_port().to_string(),
                ]
                .map(str::to_owned)
                .to_vec()
            });
            nodes.push(ClusterNode {
                port,
                _child: child,
            });
        }
        let cluster = Self { nodes, dir };
        cluster.create();
        cluster.wait_healthy();
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node (any one is a valid seed).
    pub fn urls(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The client port of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// `127.0.0.1:<port>` of every node.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.ports().into_iter().map(loopback).collect()
    }

    /// Runs `redis-cli --cluster create` and waits for it (60 s at most).
    fn create(&self) {
        let log_path = self.dir.path().join("cluster-create.log");
        let mut command = Command::new("redis-cli");
        command
            .arg("--cluster")
            .arg("create")
            .args(self.addrs().iter().map(ToString::to_string))
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        let mut guard = spawn(
            &mut command,
            "redis-cli",
            "redis-cli --cluster create".to_owned(),
            log_path,
        );
        match guard.wait_timeout(CLUSTER_TIMEOUT) {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "`redis-cli --cluster create` failed ({status}):\n{}{}",
                guard.log(),
                self.node_logs()
            ),
            None => panic!(
                "`redis-cli --cluster create` did not finish within {CLUSTER_TIMEOUT:?}:\n{}{}",
                guard.log(),
                self.node_logs()
            ),
        }
    }

    /// Polls `CLUSTER INFO` on every node until all report a healthy three-node cluster.
    fn wait_healthy(&self) {
        let expected_nodes = format!("cluster_known_nodes:{CLUSTER_NODES}\r\n");
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut last = String::new();
        loop {
            let mut healthy = true;
            for addr in self.addrs() {
                match resp::bulk(addr, &["CLUSTER", "INFO"]) {
                    Ok(info)
                        if info.contains("cluster_state:ok\r\n")
                            && info.contains("cluster_slots_assigned:16384\r\n")
                            && info.contains(&expected_nodes) => {}
                    Ok(info) => {
                        healthy = false;
                        last = format!("{addr}:\n{info}");
                    }
                    Err(e) => {
                        healthy = false;
                        last = format!("{addr}: {e}");
                    }
                }
            }
            if healthy {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "Redis Cluster not healthy within {CLUSTER_TIMEOUT:?}; last CLUSTER INFO \
                     from {last}{}",
                    self.node_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The logs of every node, for failure messages.
    fn node_logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let path: PathBuf = self
                .dir
                .path()
                .join(format!("node{i}"))
                .join(format!("redis-{}.log", node.port));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            out.push_str(&format!("\n--- node {} log ---\n{log}", node.port));
        }
        out
    }
}

/// Spawns `command`, which runs the Redis program `program`, as a child named `name`,
/// with stdin closed and its output going to `log_path`. Panics saying how to install the
/// program when it is not on PATH.
fn spawn(command: &mut Command, program: &str, name: String, log_path: PathBuf) -> ChildGuard {
    let (stdout, stderr) = log_stdio(&log_path);
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` not found on PATH: {SETUP_HINT}")
        }
        Err(e) => panic!("cannot start {program}: {e}"),
    };
    ChildGuard::new(name, child).with_log_path(log_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_starts_stops_and_restarts_empty_on_the_same_port() {
        let mut server = RedisServer::start();
        let addr = server.addr();
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
        assert!(server.is_running());
        assert!(resp::ping(addr));
        assert_eq!(
            resp::command(addr, &["SET", "k", "v"]).ok(),
            Some(resp::Reply::Simple("OK".into()))
        );

        server.stop();
        assert!(!server.is_running());
        assert!(!resp::ping(addr), "a stopped server refuses connections");
        server.stop();

        server.restart();
        assert_eq!(server.addr(), addr, "restart keeps the port");
        assert!(resp::ping(addr));
        assert_eq!(
            resp::command(addr, &["GET", "k"]).ok(),
            Some(resp::Reply::Bulk(None)),
            "nothing survives a restart"
        );

        // Restarting a running server works too.
        server.restart();
        assert!(resp::ping(addr));

        drop(server);
        assert!(!resp::ping(addr), "a dropped server is killed");
    }

    #[test]
    fn extra_args_apply_and_survive_restart() {
        let mut server = RedisServer::start_with_args(&["--databases", "3"]);
        let select_5 = |addr| resp::command(addr, &["SELECT", "5"]);
        assert!(matches!(select_5(server.addr()), Ok(resp::Reply::Error(_))));
        server.restart();
        assert!(matches!(select_5(server.addr()), Ok(resp::Reply::Error(_))));
        assert_eq!(
            resp::command(server.addr(), &["SELECT", "2"]).ok(),
            Some(resp::Reply::Simple("OK".into()))
        );
    }

    #[test]
    fn servers_in_parallel_get_distinct_ports() {
        let a = RedisServer::start();
        let b = RedisServer::start();
        assert_ne!(a.port(), b.port());
        assert!(resp::ping(a.addr()) && resp::ping(b.addr()));
    }

    #[test]
    fn cluster_starts_healthy_and_is_killed_on_drop() {
        let cluster = RedisCluster::start();
        let addrs = cluster.addrs();
        assert_eq!(addrs.len(), 3);
        assert_eq!(cluster.urls().len(), 3);
        for addr in &addrs {
            let info = resp::bulk(*addr, &["CLUSTER", "INFO"]).expect("CLUSTER INFO");
            assert!(info.contains("cluster_state:ok"), "{info}");
        }
        // A key lands on exactly one master; the others redirect.
        let answers: Vec<_> = addrs
            .iter()
            .map(|addr| resp::command(*addr, &["SET", "{default}:probe", "1"]).expect("SET"))
            .collect();
        let ok = answers
            .iter()
            .filter(|a| **a == resp::Reply::Simple("OK".into()))
            .count();
        let moved = answers
            .iter()
            .filter(|a| matches!(a, resp::Reply::Error(e) if e.starts_with("MOVED")))
            .count();
        assert_eq!((ok, moved), (1, 2), "{answers:?}");

        drop(cluster);
        for addr in addrs {
            assert!(!resp::ping(addr), "node {addr} still answers after drop");
        }
    }
}
