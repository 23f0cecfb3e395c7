//! Serving the router over TCP with hyper's HTTP/1 server, so that every answer, including
//! the ones hyper gives by itself, is the api's JSON error format.
//!
//! hyper answers some requests before the router sees them: a request head it cannot
//! parse. It then writes a bodiless head (`400` for a malformed request line, header or
//! version — a raw NUL byte in a header value, say —, `414` for a URI over 65,534 bytes,
//! `431` for a head over [`MAX_HEAD_BYTES`] or with more than 100 header fields) and closes
//! the connection, and offers no hook to change that answer. [`Socket`] sits between
//! hyper and the socket and replaces exactly those heads with the same status carrying
//! `{"error": {"code", "message"}}`. It recognises them by what only they are: a `400`,
//! `414` or `431` head without a body and without a `content-type` (every error answer
//! of the router is JSON and says so).
//!
//! Slow clients cannot hold the api (see [`ConnectionLimits`]): at most
//! `max_connections` connections are open (more wait in the listen backlog, apart from
//! the request-concurrency limit of the router); a connection with no request in flight
//! that sends nothing for `idle_timeout` is closed, a new one included; a request head
//! must be complete `header_read_timeout` after its first byte. Bodies are read before a
//! request takes a concurrency slot, under their own deadline ([`crate::body`]).
//!
//! Invariants: the router's own answers pass through byte for byte; a replaced answer is
//! written completely before the connection is flushed or shut down; no timer of this
//! module runs while a request is in flight (the request timeout bounds that).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::error::{ErrorBody, ErrorCode, ErrorDetail};

/// Largest request head (request line and header fields) hyper buffers; a larger one is
/// answered `431`. Above hyper's URI limit (65,534 bytes), so a long URI is answered `414`.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// After a replaced answer, how long and how much of the rest of the request is read and
/// dropped before the socket closes. Closing with unread input makes the kernel reset the
/// connection, and a reset can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// The connection-level limits of [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight may send nothing.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets
/// every connection finish its request in flight, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEAD_BYTES);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. EMFILE: wait for connections to close instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let service = {
            let (on_request, on_response) = (activity.clone(), activity.clone());
            TowerToHyperService::new(
                app.clone()
                    .map_request(move |req: Request<Incoming>| {
                        on_request.started.fetch_add(1, Ordering::Relaxed);
                        req.map(Body::new)
                    })
                    .map_response(move |res: Response| {
                        // The request counts as in flight until hyper drops its answer's
                        // body, which it does once the body is written.
                        let done = Finished(on_response.clone());
                        res.map(|body| {
                            Body::new(body.map_frame(move |frame| {
                                let _ = &done;
                                frame
                            }))
                        })
                    }),
            )
        };
        let conn = http
            .serve_connection(TokioIo::new(Socket::new(stream, activity, limits)), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Requests of one connection that started and finished (their answer written). The
/// connection is busy while they differ.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

/// Counts a request finished when dropped.
#[derive(Debug)]
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a connection's timer waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request is in flight: no timer.
    Busy,
    /// Between requests: closed after `idle_timeout` without a byte.
    Idle,
    /// A request head has begun: closed unless a request starts by `header_read_timeout`.
    Head,
}

/// A connection's socket: replaces hyper's automatic error answers by JSON ones and
/// closes idle and slow connections (see the module documentation).
#[derive(Debug)]
pub(crate) struct Socket {
    io: TcpStream,
    /// A replacement answer and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
    /// An answer was replaced: hyper closes the connection next, with the rest of the
    /// request possibly unread.
    replaced: bool,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    phase: Phase,
    /// Requests started when `phase` was last set.
    seen: u64,
    timer: Pin<Box<Sleep>>,
}

impl Socket {
    fn new(io: TcpStream, activity: Arc<Activity>, limits: ConnectionLimits) -> Self {
        Self {
            io,
            pending: None,
            replaced: false,
            activity,
            limits,
            phase: Phase::Idle,
            seen: 0,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        }
    }

    /// Moves `phase` along with the requests hyper started and finished, and with
    /// whether bytes just arrived; (re)arms the timer on each change.
    fn track(&mut self, got_bytes: bool) {
        let started = self.activity.started.load(Ordering::Relaxed);
        let finished = self.activity.finished.load(Ordering::Relaxed);
        let now = Instant::now();
        if started != finished {
            self.phase = Phase::Busy;
            self.seen = started;
        } else if self.phase == Phase::Busy || started != self.seen {
            self.phase = Phase::Idle;
            self.seen = started;
            self.timer.as_mut().reset(now + self.limits.idle_timeout);
        }
        if got_bytes && self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.timer
                .as_mut()
                .reset(now + self.limits.header_read_timeout);
        }
    }

    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if !self.replaced {
            return;
        }
        // Keep the socket open on a second descriptor while the rest of the request is
        // read and dropped (see [`LINGER`]).
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(fd) = std::os::fd::AsFd::as_fd(&self.io).try_clone_to_owned() else {
            return;
        };
        let socket = std::net::TcpStream::from(fd);
        if socket.set_nonblocking(true).is_err() {
            return;
        }
        let _guard = handle.enter();
        if let Ok(socket) = TcpStream::from_std(socket) {
            handle.spawn(linger(socket));
        }
    }
}

/// Reads and drops what the client still sends, for at most [`LINGER`].
async fn linger(mut socket: TcpStream) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = vec![0; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.track(buf.filled().len() > before);
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.track(false);
                if this.phase != Phase::Busy && this.timer.as_mut().poll(cx).is_ready() {
                    // As if the client had closed: hyper ends the connection (a partial
                    // head is dropped unanswered).
                    tracing::debug!(phase = ?this.phase, "closing a slow or idle connection");
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = json_answer_for(buf) {
            this.pending = Some((answer, 0));
            this.replaced = true;
            // Written now as far as the socket takes it; flush and shutdown finish it.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's automatic answers are a head alone: one buffer.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            return self.poll_write(cx, only);
        }
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The JSON answer that replaces `written`, if `written` is one of hyper's automatic
/// answers to an unparsable request: a whole `400`, `414` or `431` head, nothing after
/// it, and no `content-type`.
fn json_answer_for(written: &[u8]) -> Option<Vec<u8>> {
    let head_len = written.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_len != written.len() {
        return None;
    }
    let rest = written
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| written.strip_prefix(b"HTTP/1.0 "))?;
    let (code, message) = match rest.get(..4)? {
        b"400 " => (
            ErrorCode::MalformedRequest,
            "the request is not valid HTTP/1.1 (request line, a header field or a \
             control character in it)",
        ),
        b"414 " => (
            ErrorCode::UriTooLong,
            "the request URI is longer than the api accepts (65534 bytes)",
        ),
        b"431 " => (
            ErrorCode::HeadersTooLarge,
            "the request's header fields are larger than the api accepts (128 KiB, at \
             most 100 fields)",
        ),
        _ => return None,
    };
    let head = String::from_utf8_lossy(written).to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") {
        return None;
    }
    let status = match code {
        ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
        ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
        },
    })
    .ok()?;
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(answer: &[u8]) -> serde_json::Value {
        let at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        serde_json::from_slice(&answer[at..]).unwrap_or(serde_json::Value::Null)
    }

    #[test]
    fn replaces_only_hyper_s_bodiless_parse_error_heads() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
            content-length: 0\r\ndate: Mon, 01 Jan 2029 00:00:00 GMT\r\n\r\n";
        let answer = json_answer_for(hyper_431).unwrap_or_default();
        assert!(answer.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert_eq!(body_of(&answer)["error"]["code"], "headers_too_large");
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let answer = json_answer_for(hyper_400).unwrap_or_default();
        assert_eq!(body_of(&answer)["error"]["code"], "malformed_request");
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
        let answer = json_answer_for(hyper_414).unwrap_or_default();
        assert_eq!(body_of(&answer)["error"]["code"], "uri_too_long");

        // The router's answers pass.
        let ours = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
            content-length: 2\r\n\r\n";
        assert_eq!(json_answer_for(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(json_answer_for(with_body), None);
        assert_eq!(json_answer_for(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(json_answer_for(b"{\"a\": 1}"), None);
        assert_eq!(json_answer_for(b"HTTP/1.1 400 Bad Request\r\n"), None);
    }
}
