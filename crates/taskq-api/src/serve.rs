//! Serving the router over TCP with hyper's HTTP/1 server, so that every answer, including
//! the ones hyper gives by itself, is the api's JSON error format.
//!
//! hyper answers some requests before the router sees them: a request head it cannot
//! parse. It then writes a bodiless head (`400` for a malformed request line, header or
//! version — a raw NUL byte in a header value, say —, `414` for a URI over 65,534 bytes,
//! `431` for a head over [`MAX_HEAD_BYTES`] or with more than 100 header fields) and closes
//! the connection, and offers no hook to change that answer. [`JsonErrors`] sits between
//! hyper and the socket and replaces exactly those heads with the same status carrying
//! `{"error": {"code", "message"}}`. It recognises them by what only they are: a `400`,
//! `414` or `431` head without a body and without a `content-type` (every error answer
//! of the router is JSON and says so).
//!
//! Invariants: the router's own answers pass through byte for byte; a replaced answer is
//! written completely before the connection is flushed or shut down.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets
/// every connection finish its request in flight, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEAD_BYTES);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. EMFILE: wait for connections to close instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: Request<Incoming>| req.map(Body::new)),
        );
        let conn = http
            .serve_connection(TokioIo::new(JsonErrors::new(stream)), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
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

/// A connection's socket, with hyper's automatic error answers replaced by JSON ones
/// (see the module documentation).
#[derive(Debug)]
pub(crate) struct JsonErrors {
    io: TcpStream,
    /// A replacement answer and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
    /// An answer was replaced: hyper closes the connection next, with the rest of the
    /// request possibly unread.
    replaced: bool,
}

impl JsonErrors {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            pending: None,
            replaced: false,
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

impl Drop for JsonErrors {
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

impl AsyncRead for JsonErrors {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonErrors {
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
