//! A TCP proxy that can cut the connection to the database on demand (the idea of
//! crates.io's chaosproxy): `cut` drops every open connection and refuses new ones
//! until `restore`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct ChaosProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl ChaosProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind proxy: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let up = Arc::clone(&up);
            let conns = Arc::clone(&conns);
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // refused: closed at once
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    let mut list = conns.lock().unwrap_or_else(|e| e.into_inner());
                    if up.load(Ordering::SeqCst) {
                        list.push(task.abort_handle());
                    } else {
                        task.abort();
                    }
                }
            })
            .abort_handle()
        };
        ChaosProxy {
            addr,
            up,
            conns,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let list = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in list {
            c.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `host:port` of the first host in a `mongodb://` URI.
pub fn upstream(uri: &str) -> String {
    let (_, hosts, _) = split(uri);
    let first = hosts.split(',').next().unwrap_or(hosts);
    if first.contains(':') {
        first.to_owned()
    } else {
        format!("{first}:27017")
    }
}

/// `uri` with its hosts replaced by `addr`, as a direct connection so that replica-set
/// discovery cannot route around the proxy.
pub fn through(uri: &str, addr: SocketAddr) -> String {
    let (userinfo, _, tail) = split(uri);
    let mut tail = tail.to_owned();
    if tail.is_empty() {
        tail.push('/');
    }
    tail.push_str(if tail.contains('?') { "&" } else { "?" });
    tail.push_str("directConnection=true");
    format!("mongodb://{userinfo}{addr}{tail}")
}

/// (`user:pass@` or "", host list, path and query) of a `mongodb://` URI.
fn split(uri: &str) -> (&str, &str, &str) {
    let rest = uri
        .strip_prefix("mongodb://")
        .unwrap_or_else(|| panic!("the proxy test needs a mongodb:// URI, got `{uri}`"));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..], tail),
        None => ("", authority, tail),
    }
}
