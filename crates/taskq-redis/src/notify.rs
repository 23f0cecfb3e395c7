//! Finished-task notifications over Redis pub/sub ([`keys::FINISHED`]).
//!
//! Whoever writes a task's final status to MongoDB (the workers' outbox writers, the
//! api's cancel) publishes the task's id afterwards with [`Broker::publish_finished`];
//! every api process holds one [`FinishedSubscription`] and wakes its waiters. Pub/sub
//! delivers at most once and only to connected subscribers, so a subscriber that was
//! disconnected reports [`Finished::Subscribed`] after each (re)subscription: whatever
//! was published meanwhile is lost, and its waiters must read their records again.
//!
//! On a cluster one node is enough (`PUBLISH` reaches every node). The subscription
//! starts from the seed nodes and, each time it subscribes, learns the cluster's other
//! nodes (`CLUSTER NODES`), so it moves to any live node when its own goes away, even
//! when no seed is left.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use taskq_core::TaskId;

use crate::{Broker, Result, keys};

/// Pause after a failed (re)connection, so an unreachable Redis is not a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// A silent subscription is checked with a `PING` this often; a connection that does not
/// answer within [`PING_TIMEOUT`] is replaced (a half-open TCP connection never ends).
const KEEPALIVE: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Broker {
    /// Publishes that `ids` reached a final status (call it after their records say so).
    pub async fn publish_finished(&self, ids: &[TaskId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let message = ids
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = self.conn.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(keys::FINISHED)
            .arg(message)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// A subscription to finished tasks; it connects on its first [`FinishedSubscription::next`].
    pub fn finished_subscription(&self) -> FinishedSubscription {
        FinishedSubscription {
            clients: self.source.pubsub_clients(),
            cluster: matches!(*self.source, crate::conn::Source::Cluster(..)),
            next_client: 0,
            conn: None,
        }
    }
}

/// What a [`FinishedSubscription`] heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The subscription is (again) in place; anything published before was missed.
    Subscribed,
    /// These tasks reached a final status.
    Tasks(Vec<TaskId>),
}

/// One dedicated pub/sub connection listening on [`keys::FINISHED`], reconnecting (to
/// the next known node of a cluster) whenever it is lost.
pub struct FinishedSubscription {
    /// The nodes to try, in turn: the seeds, then the cluster's nodes learnt since.
    clients: Vec<redis::Client>,
    cluster: bool,
    next_client: usize,
    conn: Option<(PubSubSink, PubSubStream)>,
}

impl std::fmt::Debug for FinishedSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinishedSubscription")
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl FinishedSubscription {
    /// The next event, connecting and reconnecting as needed (it never fails: while Redis
    /// is unreachable it keeps trying).
    pub async fn next(&mut self) -> Finished {
        loop {
            let Some((sink, stream)) = &mut self.conn else {
                match self.connect().await {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        return Finished::Subscribed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "subscribing to finished tasks failed; retrying");
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                }
            };
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let ids = parse(&msg);
                        if !ids.is_empty() {
                            return Finished::Tasks(ids);
                        }
                    }
                    None => {
                        tracing::warn!("the finished-task subscription was lost; reconnecting");
                        self.conn = None;
                    }
                },
                () = tokio::time::sleep(KEEPALIVE) => {
                    let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("the finished-task subscription does not answer; reconnecting");
                        self.conn = None;
                    }
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<(PubSubSink, PubSubStream)> {
        let Some(client) = self
            .clients
            .get(self.next_client % self.clients.len().max(1))
        else {
            return Err(crate::BrokerError::Config("no redis url given".into()));
        };
        self.next_client = self.next_client.wrapping_add(1);
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(keys::FINISHED).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        })
        .await;
        match connected {
            Ok(Ok(conn)) => {
                // The node that answers stays first choice.
                self.next_client = self.next_client.wrapping_sub(1);
                if self.cluster {
                    let client = client.clone();
                    self.learn_nodes(&client).await;
                }
                Ok(conn)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(crate::BrokerError::Protocol(
                "no answer to SUBSCRIBE within 5 s".into(),
            )),
        }
    }
}

impl FinishedSubscription {
    /// Adds the cluster's nodes that `client` (a node that answered) knows and that are
    /// not in the list yet, with the same credentials and TLS settings. Best effort: a
    /// failure leaves the list as it is.
    async fn learn_nodes(&mut self, client: &redis::Client) {
        let nodes = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c)
                .await
        })
        .await;
        let nodes = match nodes {
            Ok(Ok(text)) => node_addrs(&text),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading the cluster's nodes failed");
                return;
            }
            Err(_) => return,
        };
        let seed = client.get_connection_info().clone();
        for (host, port) in nodes {
            let addr = match seed.addr() {
                redis::ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => redis::ConnectionAddr::Tcp(host, port),
            };
            let known = self
                .clients
                .iter()
                .any(|c| c.get_connection_info().addr() == &addr);
            if known {
                continue;
            }
            match redis::Client::open(seed.clone().set_addr(addr)) {
                Ok(c) => self.clients.push(c),
                Err(e) => tracing::debug!(error = %e, "a cluster node's address was refused"),
            }
        }
    }
}

/// `(host, port)` of the reachable nodes in a `CLUSTER NODES` reply: per line
/// `<id> <ip:port@cport[,hostname]> <flags> ...`; nodes flagged `fail`, `noaddr` or
/// `handshake` are left out.
fn node_addrs(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags
                .split(',')
                .any(|f| matches!(f, "fail" | "noaddr" | "handshake"))
            {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
        })
        .collect()
}

/// The task ids of one message; anything else in it is ignored.
fn parse(msg: &redis::Msg) -> Vec<TaskId> {
    let Ok(text) = msg.get_payload::<String>() else {
        return Vec::new();
    };
    text.split_ascii_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::node_addrs;

    #[test]
    fn cluster_nodes_lines_give_the_reachable_addresses() {
        let text = "\
07c37dfe 127.0.0.1:30004@31004 slave e7d1eecc 0 1426238317239 4 connected
67ed2db8 127.0.0.1:30002@31002,node-b master - 0 1426238316232 2 connected 5461-10922
292f8b36 :0@0 master,noaddr - 0 0 0 disconnected
e7d1eecc 10.0.0.7:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec2392b 127.0.0.1:30005@31005 master,fail - 1 1 5 disconnected
";
        assert_eq!(
            node_addrs(text),
            vec![
                ("127.0.0.1".to_owned(), 30004),
                ("127.0.0.1".to_owned(), 30002),
                ("10.0.0.7".to_owned(), 30001),
            ]
        );
    }
}
