//! ENQUEUE: adds tasks unless their hash exists already (so recovery never duplicates a
//! task), and sets the queue's epoch unless it exists (see
//! [`QueueKeys::epoch`](crate::keys::QueueKeys::epoch)).
//!
//! A task due now goes to its pending list, or, when it has a key, to the back of its
//! key's backlog, from which the key's head moves to the pending list when the key has
//! none there and its running limit allows (see the `key_fns` of [`scripts`](super)). Tasks of
//! one call are added in the order given, so one key's tasks keep that order.
//!
//! ```text
//! KEYS[1..3] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[4]    -> taskq:{<queue>}:scheduled
//! KEYS[5]    -> taskq:{<queue>}:wake
//! KEYS[6]    -> taskq:{<queue>}:epoch
//! KEYS[7]    -> taskq:{<queue>}:limits   (`key_conc`: the running limit per key)
//! KEYS[8]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[9]    -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[10]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV[1]    -> task hash prefix
//! ARGV[2]    -> now (ms)
//! then per task, 8 values: id, prio index, due (ms), seq, attempts, max attempts,
//!              message JSON, key (empty: none)
//! reply      -> per task, 1 (added) or 0 (already present)
//! ```

use std::collections::BTreeMap;

use redis::AsyncCommands;
use taskq_core::QueueName;

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::{self, QueueKeys};
use crate::{Broker, BrokerError, EnqueueItem, Result};

keyed_script!(
    r"
local now = tonumber(ARGV[2])
local q = kq(1, 7)
local now_due = {{}, {}, {}}
redis.call('SET', KEYS[6], ARGV[2], 'NX')
local out = each_task(3, 8, function(i, id, k)
  if redis.call('EXISTS', k) == 1 then return 0 end
  local prio, due = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local state = 'queued'
  if due > now then state = 'scheduled' end
  local uk = ARGV[i + 7]
  if uk ~= '' then
    redis.call('HSET', k, 'msg', ARGV[i + 6], 'state', state, 'prio', prio,
      'seq', ARGV[i + 3], 'attempts', ARGV[i + 4], 'max', ARGV[i + 5], 'qat', now, 'key', uk)
    kjoin(q, uk)
  else
    redis.call('HSET', k, 'msg', ARGV[i + 6], 'state', state, 'prio', prio,
      'seq', ARGV[i + 3], 'attempts', ARGV[i + 4], 'max', ARGV[i + 5], 'qat', now)
  end
  if due > now then
    redis.call('ZADD', KEYS[4], due, id)
  elseif uk ~= '' then
    kqueue(q, uk, id, prio, false)
  else
    local ids = now_due[1 + prio]
    ids[#ids + 1] = id
  end
  return 1
end)
-- One LPUSH per pending list, in the order given (as one LPUSH per task would).
local woke = q.woke
for p = 1, 3 do
  local ids = now_due[p]
  for j = 1, #ids, 1000 do
    redis.call('LPUSH', KEYS[p], unpack(ids, j, math.min(j + 999, #ids)))
    woke = true
  end
end
if woke then wake(KEYS[5]) end
return out
"
);

/// The 8 per-task arguments of one item.
fn push_item(inv: &mut redis::ScriptInvocation<'_>, it: &EnqueueItem) -> Result<()> {
    let msg = serde_json::to_string(&it.msg).map_err(|e| BrokerError::Protocol(e.to_string()))?;
    inv.arg(it.msg.id.to_string())
        .arg(keys::priority_index(it.msg.priority))
        .arg(it.due_ms)
        .arg(it.seq)
        .arg(it.attempts)
        .arg(it.msg.max_attempts)
        .arg(msg)
        .arg(it.msg.key.as_deref().unwrap_or(""));
    Ok(())
}

/// Per task in order, whether it was added.
fn parse(reply: Vec<i64>) -> Vec<bool> {
    reply.into_iter().map(|a| a == 1).collect()
}

impl Broker {
    /// Adds tasks: one script call per queue, issued concurrently. Returns, per item in
    /// order, whether it was added (false: a task with that id is already in Redis).
    pub async fn enqueue(&self, items: &[EnqueueItem]) -> Result<Vec<bool>> {
        let mut by_queue: BTreeMap<&QueueName, Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            by_queue.entry(&item.msg.queue).or_default().push(i);
        }
        // Registered first: if this fails nothing has been enqueued yet.
        let names: Vec<&str> = by_queue.keys().map(|q| q.as_str()).collect();
        if !names.is_empty() {
            let mut c = self.conn.clone();
            let _: i64 = c.sadd(keys::QUEUES, names).await?;
        }
        let now = taskq_core::now_ms();
        let calls = by_queue.iter().map(|(queue, idx)| {
            let k = QueueKeys::new(queue);
            let mut inv = invocation(&SCRIPT, &keys(&k));
            inv.arg(k.task_prefix()).arg(now);
            let encoded = idx.iter().try_for_each(|&i| push_item(&mut inv, &items[i]));
            async move {
                encoded?;
                self.run::<Vec<i64>>(inv).await.map(parse)
            }
        });
        let results = futures::future::try_join_all(calls).await?;
        let mut out = vec![false; items.len()];
        for ((_, idx), added) in by_queue.iter().zip(results) {
            for (&i, a) in idx.iter().zip(added) {
                out[i] = a;
            }
        }
        Ok(out)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![
        k.pending_all(),
        [k.scheduled(), k.wake(), k.epoch()],
        key_keys(k)
    ]
}
