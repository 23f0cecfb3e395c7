//! Blocking waits for new work, so idle workers neither poll nor sleep through work.
//!
//! Every script that makes a queue runnable leaves one token in the queue's wake list.
//! For each listened queue a background task keeps a `BRPOP` in flight on a dedicated
//! connection and turns each token into a signal; a signal that arrives while the worker
//! is busy is kept (one is enough), so none is lost. The dequeue script hands the token
//! on when work remains, so a burst wakes one idle worker after another.

use std::time::Duration;

use taskq_core::QueueName;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::conn::{BLOCK_SECONDS, Conn, Source};
use crate::{QueueKeys, Result};

/// Pause after a failed wait, so an unreachable Redis does not become a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Waits for wake-up tokens on a set of queues. Dropping it stops its background tasks.
#[derive(Debug)]
pub struct WakeListener {
    signals: mpsc::Receiver<()>,
    _waiters: JoinSet<()>,
}

impl WakeListener {
    pub(crate) async fn new(source: &Source, queues: &[QueueName]) -> Result<Self> {
        let (tx, signals) = mpsc::channel(1);
        let mut waiters = JoinSet::new();
        for q in queues {
            let conn = source.dedicated().await?;
            waiters.spawn(listen(QueueKeys::new(q).wake(), conn, tx.clone()));
        }
        Ok(Self {
            signals,
            _waiters: waiters,
        })
    }

    /// Returns true as soon as any queue signals work, or false after `max`.
    pub async fn wait(&mut self, max: Duration) -> bool {
        matches!(
            tokio::time::timeout(max, self.signals.recv()).await,
            Ok(Some(()))
        )
    }
}

async fn listen(key: String, mut conn: Conn, tx: mpsc::Sender<()>) {
    loop {
        let r: redis::RedisResult<Option<(String, String)>> = redis::cmd("BRPOP")
            .arg(&key)
            .arg(BLOCK_SECONDS)
            .query_async(&mut conn)
            .await;
        match r {
            // A full channel already holds a signal; one is enough.
            Ok(Some(_)) => match tx.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return,
            },
            Ok(None) => {
                if tx.is_closed() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, key, "waiting for work failed; retrying");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}
