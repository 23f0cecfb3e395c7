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

    // Answered by hyper before routing.
    let big = format!("x-big: {}\r\n", "a".repeat(1024 * 1024));
    let got = raw(&env, get("/v1/tasks", &big)).await;
    assert_json_error("a 1 MB header", &got, 431, "headers_too_large");

    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let got = raw(&env, get("/v1/tasks", &many)).await;
    assert_json_error("101 header fields", &got, 431, "headers_too_large");

    let cursor = "c".repeat(100 * 1024);
    let got = raw(&env, get(&format!("/v1/tasks?cursor={cursor}"), "")).await;
    assert_json_error("a 100 kB URI", &got, 414, "uri_too_long");

    let got = raw(&env, get("/v1/tasks", "x-nul: a\0b\r\n")).await;
    assert_json_error("a NUL byte in a header", &got, 400, "malformed_request");

    let got = raw(&env, b"GET /livez HTTP/9.9\r\nhost: taskq\r\n\r\n".to_vec()).await;
    assert_json_error("an unknown version", &got, 400, "malformed_request");

    let got = raw(
        &env,
        b"GE(T /livez HTTP/1.1\r\nhost: taskq\r\n\r\n".to_vec(),
    )
    .await;
    assert_json_error("a bad method token", &got, 400, "malformed_request");

    let got = raw(
        &env,
        b"POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\ncontent-length: 12x\r\n\r\n".to_vec(),
    )
    .await;
    assert_json_error("a malformed content-length", &got, 400, "malformed_request");

    // Answered by the router.
    let got = raw(&env, get("/nowhere", "")).await;
    assert_json_error("an unknown route", &got, 404, "not_found");

    let got = raw(
        &env,
        b"DELETE /v1/tasks HTTP/1.1\r\nhost: taskq\r\n\r\n".to_vec(),
    )
    .await;
    assert_json_error("a wrong method", &got, 405, "method_not_allowed");

    let body = "x".repeat(17 * 1024 * 1024);
    let got = raw(
        &env,
        format!(
            "POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
    .await;
    assert_json_error("a body over the limit", &got, 413, "payload_too_large");

    let got = raw(
        &env,
        b"POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\ncontent-type: text/plain\r\n\
          content-length: 2\r\n\r\n{}"
            .to_vec(),
    )
    .await;
    assert_json_error(
        "a body that is not JSON",
        &got,
        415,
        "unsupported_media_type",
    );

    // The api still serves normally afterwards.
    let got = raw(&env, get("/livez", "")).await;
    assert_eq!(got.0, 200, "{got:?}");
    assert_eq!(env.total_records().await, 0);
}
