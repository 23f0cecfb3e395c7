//! Blocking waits for new work, so idle workers neither poll nor sleep through work.
//!
//! Every script that makes a queue runnable leaves one token in the queue's wake list.
//! Each listened queue has a `BRPOP` in flight on a dedicated connection; the futures
//! persist across calls to [`WakeListener::wait`], so a token taken while the worker was
//! busy is remembered rather than lost. The dequeue script hands the token on when work
//! remains, so a burst wakes one idle worker after another.

use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::Future;
use taskq_core::QueueName;

use crate::conn::{BLOCK_SECONDS, Conn, Source};
use crate::{QueueKeys, Result};

type Wait = Pin<Box<dyn Future<Output = (usize, Conn, bool)> + Send>>;

/// Waits for wake-up tokens on a set of queues.
pub struct WakeListener {
    keys: Vec<String>,
    waits: FuturesUnordered<Wait>,
}

impl std::fmt::Debug for WakeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeListener").field("keys", &self.keys).finish()
    }
}

impl WakeListener {
    pub(crate) async fn new(source: &Source, queues: &[QueueName]) -> Result<Self> {
        let keys: Vec<String> = queues.iter().map(|q| QueueKeys::new(q).wake()).collect();
        let waits = FuturesUnordered::new();
        for (i, key) in keys.iter().enumerate() {
            waits.push(arm(i, key.clone(), source.dedicated().await?));
        }
        Ok(Self { keys, waits })
    }

    /// Returns true as soon as any queue signals work, or false after `max`.
    pub async fn wait(&mut self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            match tokio::time::timeout_at(deadline, self.waits.next()).await {
                Err(_) | Ok(None) => return false,
                Ok(Some((i, conn, got))) => {
                    self.waits.push(arm(i, self.keys[i].clone(), conn));
                    if got {
                        return true;
                    }
                }
            }
        }
    }
}

fn arm(i: usize, key: String, mut conn: Conn) -> Wait {
    Box::pin(async move {
        let r: redis::RedisResult<Option<(String, String)>> = redis::cmd("BRPOP")
            .arg(&key)
            .arg(BLOCK_SECONDS)
            .query_async(&mut conn)
            .await;
        let got = match r {
            Ok(v) => v.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, key, "waiting for work failed; retrying");
                // Back off so an unreachable Redis does not turn this into a busy loop.
                tokio::time::sleep(Duration::from_millis(500)).await;
                false
            }
        };
        (i, conn, got)
    })
}
