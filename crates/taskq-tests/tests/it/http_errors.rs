//! Every answer is JSON with a stable `code`, including the ones the HTTP layer gives
//! before routing (oversized or malformed request heads). Raw TCP requests against the
//! api served as `taskq-api` serves it ([`taskq_api::serve`]).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Env;

/// Sends `request` as raw bytes (from a task of its own, so a server that answers before
/// reading everything is not blocked on) and reads the answer until the server closes
/// or the `content-length` is in. Returns the status and the body as JSON (`Null` if it
/// is not JSON).
async fn raw(env: &Env, request: Vec<u8>) -> (u16, Value, String) {
    let addr = env.api.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut answer = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let read_all = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if let Some((head, body)) = split(&answer)
                && content_length(head).is_some_and(|len| body.len() >= len)
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the api answers");
    drop(writer);
    let (head, body) = split(&answer)
        .unwrap_or_else(|| panic!("no complete answer: {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_slice(body).unwrap_or(Value::Null),
        head,
    )
}

fn split(answer: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((&answer[..at], &answer[at..]))
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

#[track_caller]
fn assert_json_error(what: &str, got: &(u16, Value, String), status: u16, code: &str) {
    let (got_status, body, head) = got;
    assert_eq!(
        *got_status, status,
        "{what}: status; head {head} body {body}"
    );
    assert_eq!(
        body["error"]["code"], code,
        "{what}: code; head {head} body {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "{what}: message; body {body}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{what}: content type; head {head}"
    );
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: taskq\r\n{extra}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_of_the_http_layer_are_json() {
    let env = Env::start().await;

    let big = format!("x-big: {}\r\n", "a".repeat(1024 * 1024));
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cursor = "c".repeat(100 * 1024);
    let body = "x".repeat(17 * 1024 * 1024);
    let over_limit = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let cases: [(&str, Vec<u8>, u16, &str); 11] = [
        // Answered by hyper before routing.
        (
            "a 1 MB header",
            get("/v1/tasks", &big),
            431,
            "headers_too_large",
        ),
        (
            "101 header fields",
            get("/v1/tasks", &many),
            431,
            "headers_too_large",
        ),
        (
            "a 100 kB URI",
            get(&format!("/v1/tasks?cursor={cursor}"), ""),
            414,
            "uri_too_long",
        ),
        (
            "a NUL byte in a header",
            get("/v1/tasks", "x-nul: a\0b\r\n"),
            400,
            "malformed_request",
        ),
        (
            "an unknown version",
            b"GET /livez HTTP/9.9\r\nhost: taskq\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a bad method token",
            b"GE(T /livez HTTP/1.1\r\nhost: taskq\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a malformed content-length",
            b"POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\ncontent-length: 12x\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        // Answered by the router.
        ("an unknown route", get("/nowhere", ""), 404, "not_found"),
        (
            "a wrong method",
            b"DELETE /v1/tasks HTTP/1.1\r\nhost: taskq\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "a body over the limit",
            over_limit.into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "a body that is not JSON",
            b"POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\ncontent-type: text/plain\r\n\
              content-length: 2\r\n\r\n{}"
                .to_vec(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, request, status, code) in cases {
        let got = raw(&env, request).await;
        assert_json_error(what, &got, status, code);
    }

    // The api still serves normally afterwards.
    let got = raw(&env, get("/livez", "")).await;
    assert_eq!(got.0, 200, "{got:?}");
    assert_eq!(env.total_records().await, 0);
}
