//! Connections to a single Redis or to a Redis Cluster behind one type.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::{BrokerError, Result};

/// Where Redis is and how to talk to it.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` of a single server, or the seed nodes of a cluster.
    pub urls: Vec<String>,
    /// Talk the cluster protocol (implied when more than one URL is given).
    pub cluster: bool,
    /// How long one command may take before it fails.
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// A config from a comma-separated URL list.
    pub fn from_urls(urls: &str, cluster: bool) -> Self {
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        let cluster = cluster || urls.len() > 1;
        Self {
            urls,
            cluster,
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// A multiplexed connection to either deployment kind.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(Single),
    Cluster(ClusterConnection),
}

/// A reconnecting connection to one server, shared by its clones.
///
/// `ConnectionManager` reconnects when a command fails on a dropped or desynchronised
/// connection, but not when the connection attempt itself failed with anything other than
/// an I/O error: a peer that is not Redis (an address not yet routed to the server, answered
/// by something speaking HTTP) or a refused `AUTH` leaves it answering every later command
/// with that same error. So such an error replaces the manager with a fresh one, which
/// connects again on its next command; commands never wait for a replacement.
#[derive(Clone)]
pub(crate) struct Single(Arc<SingleInner>);

struct SingleInner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: ArcSwap<ConnectionManager>,
}

impl Single {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> redis::RedisResult<Self> {
        let manager = client.get_connection_manager_lazy(config.clone())?;
        Ok(Self(Arc::new(SingleInner {
            client,
            config,
            current: ArcSwap::from_pointee(manager),
        })))
    }

    /// After `error` on `used`: when the error says the connection cannot be used again and
    /// the manager would not replace it by itself (anything but an I/O error), put a new
    /// manager in its place, unless another clone already did.
    fn recover(&self, used: &Arc<ConnectionManager>, error: &redis::RedisError) {
        if error.is_io_error() || !error.is_unrecoverable_error() {
            return;
        }
        let Ok(fresh) = self
            .0
            .client
            .get_connection_manager_lazy(self.0.config.clone())
        else {
            return;
        };
        let previous = self.0.current.compare_and_swap(used, Arc::new(fresh));
        if Arc::ptr_eq(&previous, used) {
            tracing::warn!(%error, "redis connection unusable; reconnecting");
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => Box::pin(async move {
                let used = c.0.current.load_full();
                let result = (*used).clone().req_packed_command(cmd).await;
                if let Err(e) = &result {
                    c.recover(&used, e);
                }
                result
            }),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => Box::pin(async move {
                let used = c.0.current.load_full();
                let result = (*used)
                    .clone()
                    .req_packed_commands(cmd, offset, count)
                    .await;
                if let Err(e) = &result {
                    c.recover(&used, e);
                }
                result
            }),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.0.current.load().get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What dedicated connections (for blocking commands) are opened from.
#[derive(Clone)]
pub(crate) enum Source {
    /// Boxed: with TLS support a client holds its certificate settings.
    Single(Box<redis::Client>),
    /// A client whose response timeout leaves room for blocking commands, and a plain
    /// client per seed node (for the pub/sub subscriber, which needs one node only:
    /// `PUBLISH` reaches every node of a cluster).
    Cluster(Box<ClusterClient>, Vec<redis::Client>),
}

/// Longest blocking wait issued on a dedicated connection, in seconds.
pub(crate) const BLOCK_SECONDS: f64 = 1.0;

pub(crate) async fn open(config: &RedisConfig) -> Result<(Conn, Source)> {
    if config.urls.is_empty() {
        return Err(BrokerError::Config("no redis url given".into()));
    }
    if config.urls.iter().any(|u| u.starts_with("rediss://")) {
        // rustls needs one process-wide crypto provider; without this it picks one only
        // when exactly one is compiled in, and panics otherwise. An error means a provider
        // is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if config.cluster {
        let client = ClusterClient::builder(config.urls.clone())
            .response_timeout(config.response_timeout)
            .connection_timeout(Duration::from_secs(5))
            .build()?;
        let conn = client.get_async_connection().await?;
        let blocking = ClusterClient::builder(config.urls.clone())
            .response_timeout(config.response_timeout + Duration::from_secs_f64(BLOCK_SECONDS))
            .connection_timeout(Duration::from_secs(5))
            .build()?;
        let nodes = config
            .urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok((
            Conn::Cluster(conn),
            Source::Cluster(Box::new(blocking), nodes),
        ))
    } else {
        let [url] = config.urls.as_slice() else {
            return Err(BrokerError::Config(
                "several urls given without cluster mode".into(),
            ));
        };
        let client = redis::Client::open(url.as_str())?;
        let conn = Single::new(
            client.clone(),
            manager_config(Some(config.response_timeout)),
        )?;
        Ok((Conn::Single(conn), Source::Single(Box::new(client))))
    }
}

pub(crate) fn manager_config(response_timeout: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(response_timeout)
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

impl Source {
    /// A new connection of its own, for one blocking command at a time.
    pub(crate) async fn dedicated(&self) -> Result<Conn> {
        match self {
            Source::Single(client) => {
                let timeout = Duration::from_secs_f64(BLOCK_SECONDS) + Duration::from_secs(5);
                Ok(Conn::Single(Single::new(
                    (**client).clone(),
                    manager_config(Some(timeout)),
                )?))
            }
            Source::Cluster(client, _) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }

    /// Clients a pub/sub subscriber may connect to, in the order to try them.
    pub(crate) fn pubsub_clients(&self) -> Vec<redis::Client> {
        match self {
            Source::Single(client) => vec![(**client).clone()],
            Source::Cluster(_, nodes) => nodes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    /// `rediss://` (TLS) is compiled in: a build without redis's rustls features refuses
    /// the URL before connecting.
    #[tokio::test]
    async fn tls_urls_are_supported() {
        let config = RedisConfig::from_urls("rediss://taskq:secret@redis.example:6380/", false);
        match open(&config).await {
            Ok((Conn::Single(_), Source::Single(client))) => {
                assert!(matches!(
                    client.get_connection_info().addr(),
                    redis::ConnectionAddr::TcpTls { .. }
                ));
            }
            Ok(_) => panic!("a single URL opened a cluster connection"),
            Err(e) => panic!("rediss:// refused: {e}"),
        }
    }

    /// A server address answered first by something that is not Redis (as a Service
    /// address is before its routing rules exist) and only later by Redis: the connection
    /// reconnects instead of failing every later command with the first answer's error.
    #[tokio::test]
    async fn a_connection_first_answered_by_a_non_redis_peer_recovers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let redis = taskq_testkit::RedisServer::start();
        let upstream = redis.addr();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let answered_http = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = answered_http.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 6 {
                    // The first six connections (the manager retries a failed attempt twice) reach an HTTP server that stays connected.
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = socket.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let reply = "HTTP/1.1 404 Not Found\r\nserver: test\r\ncontent-length: 0\r\n\r\n";
                            if socket.write_all(reply.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    });
                } else {
                    tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut socket, &mut server).await;
                        }
                    });
                }
            }
        });

        let config = RedisConfig::from_urls(&format!("redis://{addr}/"), false);
        let (conn, _) = open(&config).await.expect("open");
        let mut first_error = None;
        let mut pong = None;
        for _ in 0..50 {
            let mut c = conn.clone();
            match redis::cmd("PING").query_async::<String>(&mut c).await {
                Ok(p) => {
                    pong = Some(p);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let first_error = first_error.expect("the HTTP peer's answer was refused");
        assert_eq!(
            pong.as_deref(),
            Some("PONG"),
            "never recovered after: {first_error}"
        );
        assert!(answered_http.load(std::sync::atomic::Ordering::SeqCst) >= 7);
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (Debian package openssl) runs");
        assert!(status.success(), "openssl {args:?} failed");
    }

    /// A CA (`<name>-ca.pem`) and, when `server`, a certificate for 127.0.0.1 signed by it.
    fn make_ca(dir: &Path, name: &str, server: bool) {
        let (key, ca) = (format!("{name}-ca.key"), format!("{name}-ca.pem"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} test CA"),
                "-keyout",
                &key,
                "-out",
                &ca,
            ],
        );
        if server {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                ],
            );
            std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n")
                .expect("write san.cnf");
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    &ca,
                    "-CAkey",
                    &key,
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "san.cnf",
                    "-out",
                    "server.pem",
                ],
            );
        }
    }

    /// Over `rediss://`, taskq verifies the server against the system's roots, which
    /// `SSL_CERT_FILE` can replace (a private CA), and authenticates as the URL's user: a
    /// real `redis-server` with TLS, a CA made here. The connection with the right CA
    /// answers PING; with another CA it is refused. Each side runs in a child process of
    /// this test binary (`tls_child`), since the variable is read from the environment.
    #[test]
    fn tls_connections_verify_the_server_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        make_ca(dir.path(), "good", true);
        make_ca(dir.path(), "other", false);
        let port = taskq_testkit::free_port();
        let mut server = taskq_testkit::ChildGuard::spawn_logged(
            "redis-server (TLS)",
            Command::new("redis-server")
                .current_dir(dir.path())
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .args([
                    "--tls-cert-file",
                    "server.pem",
                    "--tls-key-file",
                    "server.key",
                ])
                .args([
                    "--tls-ca-cert-file",
                    "good-ca.pem",
                    "--tls-auth-clients",
                    "no",
                ])
                .args([
                    "--save",
                    "",
                    "--user",
                    "taskq",
                    "on",
                    ">tls-test-password",
                    "~*",
                    "&*",
                    "+@all",
                ])
                .args(["--requirepass", "admin-password"]),
        );
        let url = format!("rediss://taskq:tls-test-password@127.0.0.1:{port}/");
        let exe = std::env::current_exe().expect("test binary");
        let child = |ca: &str| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "conn::tests::tls_child",
                    "--nocapture",
                ])
                .env("SSL_CERT_FILE", dir.path().join(ca))
                .env("TASKQ_TLS_TEST_URL", &url)
                .output()
                .expect("run the child test")
        };
        let mut trusted = child("good-ca.pem");
        for _ in 0..50 {
            if trusted.status.success() {
                break;
            }
            assert!(
                server.is_running(),
                "redis-server exited:\n{}",
                server.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
            trusted = child("good-ca.pem");
        }
        assert!(
            trusted.status.success(),
            "with the server's CA: {}{}\n{}",
            String::from_utf8_lossy(&trusted.stdout),
            String::from_utf8_lossy(&trusted.stderr),
            server.log()
        );
        let untrusted = child("other-ca.pem");
        assert!(
            !untrusted.status.success(),
            "a server whose CA is not trusted was accepted"
        );
    }

    #[tokio::test]
    #[ignore = "run by tls_connections_verify_the_server_certificate with SSL_CERT_FILE set"]
    async fn tls_child() {
        let url = std::env::var("TASKQ_TLS_TEST_URL").expect("TASKQ_TLS_TEST_URL");
        let config = RedisConfig::from_urls(&url, false);
        let (mut conn, _) = open(&config).await.expect("open");
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("PING over TLS");
        assert_eq!(pong, "PONG");
    }
}
