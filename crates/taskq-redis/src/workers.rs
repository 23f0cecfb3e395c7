//! The registry of live workers, for the dashboard.
//!
//! Each worker writes its state every few seconds into a hash with a TTL, and its id
//! into an index sorted set scored by the time of that heartbeat. A worker that stops
//! heartbeating (killed, partitioned) disappears when its hash expires; listing drops
//! index entries older than the TTL. Every key carries the hash tag `{workers}`, so the
//! registry lives in one Redis Cluster slot and each call touches that slot only.
//!
//! ```text
//! taskq:{workers}:index        ZSET  worker id -> last heartbeat (ms)
//! taskq:{workers}:w:<id>       HASH  id, host, queues, slots, busy, started, tasks, seen
//! ```

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::{Broker, Result};

/// The registry's index of worker ids.
pub const WORKERS_INDEX: &str = "taskq:{workers}:index";

/// The hash of one worker.
pub fn worker_key(id: &str) -> String {
    format!("taskq:{{workers}}:w:{id}")
}

/// One worker as it last reported itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    /// Host or pod name.
    pub host: String,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Concurrent attempts it may run.
    pub slots: u32,
    /// Attempts running now.
    pub busy: u32,
    /// Process start, ms since the epoch.
    pub started_ms: i64,
    /// Ids of the tasks it runs now.
    pub tasks: Vec<String>,
    /// Time of this report, ms since the epoch.
    pub seen_ms: i64,
}

impl Broker {
    /// Records `info` as the worker's current state, visible for `ttl` unless renewed.
    pub async fn heartbeat_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<()> {
        let key = worker_key(&info.id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("id", info.id.clone()),
                    ("host", info.host.clone()),
                    ("queues", info.queues.join(",")),
                    ("slots", info.slots.to_string()),
                    ("busy", info.busy.to_string()),
                    ("started", info.started_ms.to_string()),
                    ("tasks", info.tasks.join(",")),
                    ("seen", info.seen_ms.to_string()),
                ],
            )
            .ignore()
            .pexpire(&key, ttl_ms as i64)
            .ignore()
            .zadd(WORKERS_INDEX, &info.id, info.seen_ms)
            .ignore()
            .zrembyscore(
                WORKERS_INDEX,
                "-inf",
                info.seen_ms - i64::try_from(ttl_ms).unwrap_or(i64::MAX),
            )
            .ignore();
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Removes a worker from the registry (it stopped).
    pub async fn deregister_worker(&self, id: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(worker_key(id))
            .ignore()
            .zrem(WORKERS_INDEX, id)
            .ignore();
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Every worker whose registration has not expired, by id.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = c.zrange(WORKERS_INDEX, 0, -1).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(worker_key(id));
        }
        let hashes: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(&mut c).await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, h) in ids.into_iter().zip(hashes) {
            if h.is_empty() {
                gone.push(id);
                continue;
            }
            let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            let list = |k: &str| {
                h.get(k)
                    .map(|v| {
                        v.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            out.push(WorkerInfo {
                host: h.get("host").cloned().unwrap_or_default(),
                queues: list("queues"),
                slots: u32::try_from(num("slots")).unwrap_or(0),
                busy: u32::try_from(num("busy")).unwrap_or(0),
                started_ms: num("started"),
                tasks: list("tasks"),
                seen_ms: num("seen"),
                id,
            });
        }
        if !gone.is_empty() {
            // Expired hashes: drop their index entries too.
            let _: i64 = c.zrem(WORKERS_INDEX, gone).await?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_keys_share_one_slot() {
        for key in [WORKERS_INDEX.to_owned(), worker_key("w-1")] {
            assert!(key.starts_with("taskq:{workers}:"), "{key}");
        }
    }
}
