//! A minimal blocking RESP client, just enough to probe the servers the testkit starts
//! (`PING`, `INFO`, `CLUSTER INFO`) without depending on a Redis client crate.
//!
//! Each call opens a fresh connection with short timeouts, so a probe against a server
//! that is still starting fails fast instead of hanging.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connect, read and write timeout of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A reply to one command. Arrays are not needed by the probes and are rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`-style status reply.
    Simple(String),
    /// `-ERR ...` error reply.
    Error(String),
    /// `:n` integer reply.
    Integer(i64),
    /// `$n` bulk string reply (`None` for the null bulk string).
    Bulk(Option<String>),
}

/// Sends one command to the server at `addr` and reads its reply.
pub(crate) fn command(addr: SocketAddr, args: &[&str]) -> io::Result<Reply> {
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    (&stream).write_all(request.as_bytes())?;
    read_reply(&mut BufReader::new(stream))
}

/// Whether the server at `addr` answers `PING` with `+PONG`.
pub(crate) fn ping(addr: SocketAddr) -> bool {
    matches!(command(addr, &["PING"]), Ok(Reply::Simple(s)) if s == "PONG")
}

/// Sends a command whose reply is a bulk string (e.g. `INFO`) and returns the text.
pub(crate) fn bulk(addr: SocketAddr, args: &[&str]) -> io::Result<String> {
    match command(addr, args)? {
        Reply::Bulk(Some(text)) => Ok(text),
        other => Err(io::Error::other(format!(
            "unexpected reply to {args:?}: {other:?}"
        ))),
    }
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|e| invalid(format!("bad integer reply {line:?}: {e}"))),
        "$" => {
            let len: i64 = rest
                .parse()
                .map_err(|e| invalid(format!("bad bulk length {line:?}: {e}")))?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Bulk(None));
            };
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            Ok(Reply::Bulk(Some(
                String::from_utf8_lossy(&body).into_owned(),
            )))
        }
        _ => Err(invalid(format!("unsupported reply {line:?}"))),
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> io::Result<Reply> {
        read_reply(&mut input.as_bytes())
    }

    #[test]
    fn parses_the_reply_kinds_the_probes_use() {
        assert_eq!(parse("+PONG\r\n").ok(), Some(Reply::Simple("PONG".into())));
        assert_eq!(
            parse("-LOADING busy\r\n").ok(),
            Some(Reply::Error("LOADING busy".into()))
        );
        assert_eq!(parse(":42\r\n").ok(), Some(Reply::Integer(42)));
        assert_eq!(
            parse("$5\r\na\r\nbc\r\n").ok(),
            Some(Reply::Bulk(Some("a\r\nbc".into())))
        );
        assert_eq!(parse("$-1\r\n").ok(), Some(Reply::Bulk(None)));
        assert!(parse("*1\r\n").is_err());
        assert!(parse("").is_err());
        assert!(parse("$9\r\nshort\r\n").is_err());
    }
}
