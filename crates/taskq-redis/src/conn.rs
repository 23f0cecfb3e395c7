//! Connections to a single Redis or to a Redis Cluster behind one type.

use std::time::Duration;

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
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
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
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What dedicated connections (for blocking commands) are opened from.
#[derive(Clone)]
pub(crate) enum Source {
    /// Boxed: with TLS support a client holds its certificate settings.
    Single(Box<redis::Client>),
    /// A client whose response timeout leaves room for blocking commands.
    Cluster(Box<ClusterClient>),
}

/// Longest blocking wait issued on a dedicated connection, in seconds.
pub(crate) const BLOCK_SECONDS: f64 = 1.0;

pub(crate) async fn open(config: &RedisConfig) -> Result<(Conn, Source)> {
    if config.urls.is_empty() {
        return Err(BrokerError::Config("no redis url given".into()));
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
        Ok((Conn::Cluster(conn), Source::Cluster(Box::new(blocking))))
    } else {
        let [url] = config.urls.as_slice() else {
            return Err(BrokerError::Config(
                "several urls given without cluster mode".into(),
            ));
        };
        let client = redis::Client::open(url.as_str())?;
        let conn =
            client.get_connection_manager_lazy(manager_config(Some(config.response_timeout)))?;
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
                Ok(Conn::Single(client.get_connection_manager_lazy(
                    manager_config(Some(timeout)),
                )?))
            }
            Source::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rediss://` (TLS, verified against the bundled Mozilla roots) is compiled in: a
    /// build without redis's rustls features refuses the URL before connecting.
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
}
