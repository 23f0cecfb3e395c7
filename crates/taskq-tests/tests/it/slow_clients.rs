//! Slow clients cannot starve the api: thousands of connections that send nothing, send
//! their head a byte at a time or their body a byte at a time hold connections, not the
//! request-concurrency slots well-behaved requests need; and each kind is closed or
//! answered once it falls behind its limit.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use taskq_api::{AppState, BodyLimits, ConnectionLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::harness::Env;

/// One slow client: connects, sends `start`, then one byte of `drip` every 200 ms until
/// `stop`. Returns what the server answered (empty if it only closed).
async fn slow_client(addr: String, start: Vec<u8>, drip: u8, stop: CancellationToken) -> Vec<u8> {
    let Ok(stream) = TcpStream::connect(&addr).await else {
        return Vec::new();
    };
    let (mut read, mut write) = stream.into_split();
    let _ = write.write_all(&start).await;
    let dripping = async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if drip != 0 && write.write_all(&[drip]).await.is_err() {
                break;
            }
        }
    };
    let mut answer = Vec::new();
    tokio::select! {
        () = stop.cancelled() => {}
        () = dripping => {}
        _ = read.read_to_end(&mut answer) => {}
    }
    answer
}

fn addr(env: &Env) -> String {
    env.api.trim_start_matches("http://").to_owned()
}

const IDLE: &[u8] = b"";
const SLOW_HEAD: &[u8] = b"POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\nx-slow: ";
const SLOW_BODY: &[u8] =
    b"POST /v1/tasks HTTP/1.1\r\nhost: taskq\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"type\": \"x\", \"payload\": \"";

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_do_not_starve_well_behaved_submits() {
    const HELD: usize = 2_000;
    // Few request slots and limits far beyond the test's length: only where the slow
    // clients wait decides whether the submits get through. (Were the slow bodies read
    // inside the concurrency limit, they would hold every slot for the whole request
    // timeout and the submits could not finish within their client timeout.)
    let env = Env::start_with(|s| AppState {
        max_concurrent_requests: 32,
        request_timeout: Duration::from_secs(600),
        body: BodyLimits {
            read_timeout: Duration::from_secs(600),
            ..s.body
        },
        connections: ConnectionLimits {
            max_connections: 4 * HELD,
            header_read_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
        },
        ..s
    })
    .await;
    let stop = CancellationToken::new();
    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let (start, drip) = match i % 3 {
            0 => (IDLE, 0),
            1 => (SLOW_HEAD, b'a'),
            _ => (SLOW_BODY, b'a'),
        };
        held.push(tokio::spawn(slow_client(
            addr(&env),
            start.to_vec(),
            drip,
            stop.clone(),
        )));
    }
    // Let every slow client connect and start.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let submits = (0..64).map(|i| {
        let http = env.http.clone();
        let url = format!("{}/v1/tasks", env.api);
        async move {
            let resp = http
                .post(url)
                .timeout(Duration::from_secs(60))
                .json(&json!({"type": "noop", "payload": {"i": i}}))
                .send()
                .await
                .expect("submit");
            resp.status()
        }
    });
    let statuses = futures::future::join_all(submits).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    assert_eq!(env.total_records().await, 64);
    let (status, _) = env.get("/livez").await;
    assert_eq!(status, StatusCode::OK);

    stop.cancel();
    for h in held {
        let _ = h.await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_connections_are_closed_or_answered() {
    let env = Env::start_with(|s| AppState {
        body: BodyLimits {
            read_timeout: Duration::from_millis(500),
            min_bytes_per_second: 1024,
            ..s.body
        },
        connections: ConnectionLimits {
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(500),
            ..s.connections
        },
        ..s
    })
    .await;
    let stop = CancellationToken::new();
    // Each returns on its own once the server closes; `stop` only bounds a failure.
    let guard = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop.cancel();
        })
    };
    let (idle, head, body) = tokio::join!(
        slow_client(addr(&env), IDLE.to_vec(), 0, stop.clone()),
        slow_client(addr(&env), SLOW_HEAD.to_vec(), b'a', stop.clone()),
        slow_client(addr(&env), SLOW_BODY.to_vec(), b'a', stop.clone()),
    );
    assert!(!stop.is_cancelled(), "a slow connection was never closed");
    guard.abort();
    assert!(idle.is_empty(), "{}", String::from_utf8_lossy(&idle));
    assert!(head.is_empty(), "{}", String::from_utf8_lossy(&head));
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("HTTP/1.1 408 "), "{body}");
    assert!(body.contains(r#""code":"body_timeout""#), "{body}");

    // A kept-alive connection is closed once it has been idle after its answer.
    let mut stream = TcpStream::connect(addr(&env)).await.expect("connect");
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nhost: taskq\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
