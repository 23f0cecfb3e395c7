//! A TCP proxy that can cut the network on demand, to simulate a backing service (usually
//! MongoDB) going away mid-run and coming back.
//!
//! The proxy runs on its own small tokio runtime rather than the test's, so it keeps
//! forwarding while the test blocks (e.g. in a synchronous helper on a current-thread
//! runtime), and it works from synchronous tests too. Invariants:
//!
//! - after [`ChaosProxy::cut`] returns, every connection that went through the proxy is
//!   shut down and the port no longer listens, so new connections are refused;
//! - while cut, the port stays bound (but not listening) to a placeholder socket, so
//!   another test asking the kernel for a free port cannot be handed it, and nothing can
//!   connect to itself through it;
//! - after [`ChaosProxy::restore`] returns, the same port accepts and forwards again;
//! - after [`ChaosProxy::freeze`] returns, no byte passes either way (connections stay
//!   open and new ones are accepted, as with a server that is stopped with SIGSTOP or a
//!   network that drops packets) until [`ChaosProxy::thaw`]; bytes read meanwhile are
//!   held and delivered in order afterwards;
//! - after [`ChaosProxy::hold_replies`] returns, bytes from the clients still reach the
//!   upstream but nothing comes back (a request lands, its reply is lost in transit)
//!   until [`ChaosProxy::thaw`]; [`ChaosProxy::hold_replies_after`] does the same from
//!   the first client read that contains a given byte string on;
//! - after [`ChaosProxy::sever`] returns, every proxied connection is shut down (bytes
//!   held for it are dropped) while the port keeps accepting new ones;
//! - dropping the proxy cuts it, then stops every task it spawned.
//!
//! Sockets are shut down (`shutdown(2)`) before they are closed. Closing alone is not
//! enough: a test that spawns a process at the same moment briefly shares every file
//! descriptor with the child (between fork and exec), and a socket lives as long as any
//! descriptor for it, so a merely closed listener could still accept a connection.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long `cut` and `restore` wait for the proxy task to acknowledge.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `restore` keeps retrying to re-bind the port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests from the [`ChaosProxy`] handle to its accept loop, each acknowledged once done.
#[derive(Debug)]
enum Request {
    Cut(std_mpsc::Sender<()>),
    Restore(std_mpsc::Sender<io::Result<()>>),
    Sever(std_mpsc::Sender<()>),
}

/// Which bytes the proxy holds back.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hold {
    Nothing,
    /// Nothing yet; the replies once a client sent these bytes (within one read).
    RepliesAfter(Vec<u8>),
    /// Those from the upstream to the clients.
    Replies,
    /// Both ways.
    All,
}

/// A direction bytes travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

impl Hold {
    fn holds(&self, direction: Direction) -> bool {
        match self {
            Hold::Nothing | Hold::RepliesAfter(_) => false,
            Hold::Replies => direction == Direction::ToClient,
            Hold::All => true,
        }
    }
}

/// A TCP proxy on a free loopback port that forwards to `upstream` until told to cut.
#[derive(Debug)]
pub struct ChaosProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    requests: mpsc::UnboundedSender<Request>,
    /// What is held back now.
    frozen: Arc<watch::Sender<Hold>>,
    /// The proxy's own runtime; `None` only during drop.
    runtime: Option<Runtime>,
}

impl ChaosProxy {
    /// Starts forwarding connections on a free `127.0.0.1` port to `upstream`.
    ///
    /// Can be called from synchronous code and from inside any tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics if the proxy's runtime or listening socket cannot be created.
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("taskq-chaos-proxy")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the chaos proxy runtime: {e}"));
        let listener = {
            let _context = runtime.enter();
            listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .unwrap_or_else(|e| panic!("chaos proxy cannot listen on 127.0.0.1: {e}"))
        };
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the chaos proxy's address: {e}"));
        let (requests, inbox) = mpsc::unbounded_channel();
        let frozen = Arc::new(watch::Sender::new(Hold::Nothing));
        runtime.spawn(serve(listener, addr, upstream, inbox, frozen.clone()));
        Self {
            addr,
            upstream,
            requests,
            frozen,
            runtime: Some(runtime),
        }
    }

    /// The address clients connect to (stable across cut and restore).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Cuts the network: closes every proxied connection and the listening port, so new
    /// connections are refused until [`ChaosProxy::restore`]. Returns once all of that is
    /// done. Cutting a cut proxy is a no-op.
    ///
    /// # Panics
    ///
    /// Panics if the proxy task does not acknowledge within 10 s.
    pub fn cut(&self) {
        let (done, ack) = std_mpsc::channel();
        self.send(Request::Cut(done));
        ack.recv_timeout(ACK_TIMEOUT)
            .unwrap_or_else(|e| panic!("chaos proxy did not acknowledge cut: {e}"));
    }

    /// Restores the network: the same port accepts and forwards connections again.
    /// Restoring a working proxy is a no-op.
    ///
    /// # Panics
    ///
    /// Panics if the port cannot be bound again within 5 s or the proxy task does not
    /// acknowledge.
    pub fn restore(&self) {
        let (done, ack) = std_mpsc::channel();
        self.send(Request::Restore(done));
        match ack.recv_timeout(ACK_TIMEOUT + REBIND_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("chaos proxy cannot listen on {} again: {e}", self.addr),
            Err(e) => panic!("chaos proxy did not acknowledge restore: {e}"),
        }
    }

    /// Freezes the network: connections stay open (new ones are accepted) but no byte
    /// passes either way until [`ChaosProxy::thaw`].
    pub fn freeze(&self) {
        self.frozen.send_replace(Hold::All);
    }

    /// Holds back the upstream's replies only: requests still reach it, nothing comes
    /// back until [`ChaosProxy::thaw`].
    pub fn hold_replies(&self) {
        self.frozen.send_replace(Hold::Replies);
    }

    /// Like [`ChaosProxy::hold_replies`], from the moment a client's bytes containing
    /// `needle` pass on to the upstream (their own reply is the first held): loses the
    /// reply of one chosen request. The needle is looked for within each read, not
    /// across reads.
    pub fn hold_replies_after(&self, needle: &[u8]) {
        self.frozen
            .send_replace(Hold::RepliesAfter(needle.to_vec()));
    }

    /// Lets bytes pass again, those held during the freeze first.
    pub fn thaw(&self) {
        self.frozen.send_replace(Hold::Nothing);
    }

    /// Shuts down every proxied connection (dropping the bytes held for them) but keeps
    /// accepting new ones: the clients see their connections reset and can reconnect at
    /// once. Returns once they are closed.
    ///
    /// # Panics
    ///
    /// Panics if the proxy task does not acknowledge within 10 s.
    pub fn sever(&self) {
        let (done, ack) = std_mpsc::channel();
        self.send(Request::Sever(done));
        ack.recv_timeout(ACK_TIMEOUT)
            .unwrap_or_else(|e| panic!("chaos proxy did not acknowledge sever: {e}"));
    }

    fn send(&self, request: Request) {
        if self.requests.send(request).is_err() {
            panic!("the chaos proxy task has stopped");
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        // Cut first so that every socket is shut down by the time drop returns, then drop
        // the runtime without blocking on it (allowed inside an async test).
        let (done, ack) = std_mpsc::channel();
        if self.requests.send(Request::Cut(done)).is_ok() {
            let _ = ack.recv_timeout(ACK_TIMEOUT);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Binds a listener with `SO_REUSEADDR`, so the port can be bound again after a cut even
/// while closed connections linger in TIME_WAIT.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    bind(addr)?.listen(1024)
}

/// A socket bound to `addr` with `SO_REUSEADDR` that does not listen: it refuses every
/// connection while keeping the port reserved (the kernel never hands out a bound port
/// for `bind(0)` or as a connection's source port).
fn bind(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// The connections accepted since the last cut.
#[derive(Debug, Default)]
struct Generation {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Generation {
    /// Closes every connection of this generation and waits until they are gone.
    async fn close(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// What the proxy's port is doing.
#[derive(Debug)]
enum PortState {
    /// Accepting and forwarding connections.
    Listening(TcpListener),
    /// Cut: connections are refused. The placeholder keeps the port reserved; it is
    /// `None` only if the port could not be bound again (then nothing reserves it).
    Cut(#[expect(dead_code, reason = "held only to keep the port bound")] Option<TcpSocket>),
}

/// The accept loop: forwards connections while listening, and handles cut and restore.
/// Ends when the [`ChaosProxy`] handle is dropped.
async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut inbox: mpsc::UnboundedReceiver<Request>,
    frozen: Arc<watch::Sender<Hold>>,
) {
    let mut port = PortState::Listening(listener);
    let mut generation = Generation::default();
    loop {
        tokio::select! {
            request = inbox.recv() => match request {
                None => break,
                Some(Request::Cut(done)) => {
                    if let PortState::Listening(listener) =
                        std::mem::replace(&mut port, PortState::Cut(None))
                    {
                        // Refuse new connections now, whoever else still holds the fd.
                        let _ = shutdown(listener.as_raw_fd(), Shutdown::Read);
                        drop(listener);
                        port = PortState::Cut(bind(addr).ok());
                    }
                    std::mem::take(&mut generation).close().await;
                    let _ = done.send(());
                }
                Some(Request::Restore(done)) => {
                    let result = match port {
                        PortState::Listening(_) => Ok(()),
                        PortState::Cut(_) => {
                            // Release the placeholder before binding the listener.
                            port = PortState::Cut(None);
                            rebind(addr).await.map(|l| port = PortState::Listening(l))
                        }
                    };
                    let _ = done.send(result);
                }
                Some(Request::Sever(done)) => {
                    std::mem::take(&mut generation).close().await;
                    let _ = done.send(());
                }
            },
            accepted = accept(&port) => match accepted {
                Ok((client, _)) => {
                    let cancel = generation.cancel.clone();
                    generation.tracker.spawn(forward(client, upstream, cancel, frozen.clone()));
                }
                // E.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    generation.close().await;
}

/// Accepts the next connection while listening; never completes while cut.
async fn accept(port: &PortState) -> io::Result<(TcpStream, SocketAddr)> {
    match port {
        PortState::Listening(listener) => listener.accept().await,
        PortState::Cut(_) => std::future::pending().await,
    }
}

async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match listen(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies bytes both ways until either side closes or `cancel` fires, then shuts both
/// sockets down; while `frozen`, holds them. If the upstream refuses, the client
/// connection is simply closed, as if the service were down.
async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    cancel: CancellationToken,
    frozen: Arc<watch::Sender<Hold>>,
) {
    let server = tokio::select! {
        () = cancel.cancelled() => None,
        server = TcpStream::connect(upstream) => server.ok(),
    };
    let client_fd = client.as_raw_fd();
    if let Some(server) = server {
        let server_fd = server.as_raw_fd();
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::select! {
            () = cancel.cancelled() => {}
            _ = async {
                tokio::join!(
                    pump(client_read, server_write, frozen.clone(), Direction::ToUpstream),
                    pump(server_read, client_write, frozen, Direction::ToClient),
                )
            } => {}
        }
        let _ = shutdown(server_fd, Shutdown::Both);
    }
    let _ = shutdown(client_fd, Shutdown::Both);
}

/// Copies one direction until end of stream, waiting out every freeze before it reads
/// and before it writes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hold: Arc<watch::Sender<Hold>>,
    direction: Direction,
) -> io::Result<()> {
    let mut frozen = hold.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|h| !h.holds(direction)).await.is_err() {
            return Ok(());
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if frozen.wait_for(|h| !h.holds(direction)).await.is_err() {
            return Ok(());
        }
        if direction == Direction::ToUpstream {
            // Held before the request leaves, so that its own reply is held too.
            hold.send_if_modified(|h| match h {
                Hold::RepliesAfter(needle) if contains(&buf[..n], needle) => {
                    *h = Hold::Replies;
                    true
                }
                _ => false,
            });
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port, running on the test's runtime.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind echo server");
        let addr = listener.local_addr().expect("echo addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut buf = vec![0; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        Ok(buf)
    }

    async fn connect_and_echo(addr: SocketAddr) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr).await?;
        round_trip(&mut stream, b"hello").await
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let upstream = echo_server().await;
        let proxy = ChaosProxy::start(upstream);
        assert_eq!(proxy.upstream(), upstream);
        assert_ne!(proxy.addr(), upstream);

        let mut long_lived = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            round_trip(&mut long_lived, b"ping").await.ok(),
            Some(b"ping".to_vec())
        );

        proxy.cut();
        // The existing connection is closed: reads see EOF (or a reset).
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), long_lived.read(&mut buf))
            .await
            .expect("read after cut does not hang");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // New connections are refused.
        assert!(TcpStream::connect(proxy.addr()).await.is_err());
        proxy.cut();

        proxy.restore();
        assert_eq!(
            connect_and_echo(proxy.addr()).await.ok(),
            Some(b"hello".to_vec())
        );
        proxy.restore();

        // A second cycle works as well.
        proxy.cut();
        assert!(connect_and_echo(proxy.addr()).await.is_err());
        proxy.restore();
        assert!(connect_and_echo(proxy.addr()).await.is_ok());
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_everything() {
        let upstream = echo_server().await;
        let proxy = ChaosProxy::start(upstream);
        let addr = proxy.addr();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert!(round_trip(&mut stream, b"x").await.is_ok());
        drop(proxy);

        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("read after drop does not hang");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let refused = crate::wait_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || async move { TcpStream::connect(addr).await.is_err() },
        )
        .await;
        assert!(refused, "the proxy port still accepts after drop");
    }

    #[tokio::test]
    async fn a_frozen_proxy_holds_bytes_until_thawed() {
        let upstream = echo_server().await;
        let proxy = ChaosProxy::start(upstream);
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(round_trip(&mut stream, b"a").await.is_ok());
        proxy.freeze();
        stream.write_all(b"held").await.expect("write while frozen");
        let mut buf = [0u8; 4];
        let read =
            tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf)).await;
        assert!(read.is_err(), "bytes passed a frozen proxy: {read:?}");
        // New connections are accepted, but answer nothing.
        let mut late = TcpStream::connect(proxy.addr())
            .await
            .expect("connect while frozen");
        late.write_all(b"late").await.expect("write while frozen");
        proxy.thaw();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(_))), "{read:?}");
        assert_eq!(&buf, b"held");
        let read = tokio::time::timeout(Duration::from_secs(5), late.read_exact(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(_))), "{read:?}");
        assert_eq!(&buf, b"late");
    }

    /// Once a request with the chosen bytes passed, it reaches the upstream but its
    /// answer does not come back (one before it did); severing then closes that connection while a new one is accepted.
    #[tokio::test]
    async fn held_replies_are_lost_when_the_connection_is_severed() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind upstream");
        let upstream = listener.local_addr().expect("upstream addr");
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || seen_tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = ChaosProxy::start(upstream);
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.hold_replies_after(b"req");
        assert_eq!(
            round_trip(&mut stream, b"abc").await.expect("before"),
            b"abc"
        );
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), seen.recv())
                .await
                .ok()
                .flatten()
                .as_deref(),
            Some(&b"abc"[..])
        );
        stream.write_all(b"req").await.expect("write");
        let arrived = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
        assert_eq!(arrived.ok().flatten().as_deref(), Some(&b"req"[..]));
        let mut buf = [0u8; 3];
        let read =
            tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf)).await;
        assert!(read.is_err(), "a reply passed: {read:?}");
        proxy.sever();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the severed connection still answered: {read:?}"
        );
        proxy.thaw();
        assert_eq!(
            connect_and_echo(proxy.addr())
                .await
                .expect("a new connection"),
            b"hello"
        );
    }

    #[test]
    fn works_without_a_runtime() {
        let upstream = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let proxy = ChaosProxy::start(upstream.local_addr().expect("addr"));
        let client = std::net::TcpStream::connect(proxy.addr()).expect("connect");
        let (accepted, _) = upstream.accept().expect("proxied connection arrives");
        drop((client, accepted));
        proxy.cut();
        assert!(std::net::TcpStream::connect(proxy.addr()).is_err());
        proxy.restore();
        assert!(std::net::TcpStream::connect(proxy.addr()).is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_upstream_closes_the_client() {
        let dead = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::free_port()));
        let proxy = ChaosProxy::start(dead);
        assert!(connect_and_echo(proxy.addr()).await.is_err());
    }
}
