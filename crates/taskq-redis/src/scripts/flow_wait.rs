//! FLOW_WAIT: registers `waiting` tasks of a flow (see [`crate::flow`]): per task its
//! hash (state `waiting`, the message and counters an enqueue would write) and the set
//! of its unmet dependencies. A task whose hash exists already is left alone (so
//! recovery never duplicates one). Sets the queue's epoch unless it exists, like ENQUEUE.
//! A task with a key joins its key (it counts among the key's tasks in Redis) as ENQUEUE
//! has it join; FLOW_RELEASE later queues it into the key's backlog, or lets it leave.
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:epoch
//! KEYS[2]    -> taskq:{<queue>}:keys     (active task keys)
//! ARGV[1]    -> task hash prefix
//! ARGV[2]    -> unmet set prefix
//! ARGV[3]    -> now (ms)
//! then per task, 7 values: id, prio index, seq, max attempts, message JSON,
//!                          unmet dependency ids joined by `,` (at least one),
//!                          mode: `all` (runs when all succeeded) or `fail` (the flow's
//!                          failure handler: runs when one died), key (empty: none)
//! reply      -> per task, 1 (registered) or 0 (already present)
//! ```

use std::collections::BTreeMap;

use taskq_core::QueueName;

use super::{invocation, lua_fns, script};
use crate::keys::{self, QueueKeys};
use crate::{Broker, BrokerError, EnqueueItem, Result};

script!(
    lua_fns!(),
    r"
local upfx, now = ARGV[2], ARGV[3]
redis.call('SET', KEYS[1], now, 'NX')
local out = each_task(4, 8, function(i, id, k)
  if redis.call('EXISTS', k) == 1 then return 0 end
  redis.call('HSET', k, 'msg', ARGV[i + 4], 'state', 'waiting', 'prio', ARGV[i + 1],
    'seq', ARGV[i + 2], 'attempts', 0, 'max', ARGV[i + 3], 'qat', now)
  if ARGV[i + 6] == 'fail' then redis.call('HSET', k, 'mode', 'fail') end
  local uk = ARGV[i + 7]
  if uk ~= '' then
    redis.call('HSET', k, 'key', uk)
    redis.call('ZINCRBY', KEYS[2], 1, uk)
  end
  local u = upfx .. id
  redis.call('DEL', u)
  for dep in string.gmatch(ARGV[i + 5], '[^,]+') do
    redis.call('SADD', u, dep)
  end
  return 1
end)
return out
"
);

/// One waiting task for [`Broker::flow_wait`].
#[derive(Clone, Debug)]
pub struct WaitItem {
    pub item: EnqueueItem,
    /// Its unmet dependencies (not empty).
    pub unmet: Vec<taskq_core::TaskId>,
    /// The flow's failure handler (see [`crate::flow`]).
    pub on_failure: bool,
}

impl Broker {
    /// Registers waiting tasks: one script call per queue, issued concurrently. Per item
    /// in order, whether it was registered (false: Redis holds a task with that id
    /// already).
    pub async fn flow_wait(&self, items: &[WaitItem]) -> Result<Vec<bool>> {
        let mut by_queue: BTreeMap<&QueueName, Vec<usize>> = BTreeMap::new();
        for (i, WaitItem { item, .. }) in items.iter().enumerate() {
            by_queue.entry(&item.msg.queue).or_default().push(i);
        }
        let now = taskq_core::now_ms();
        let calls = by_queue.iter().map(|(queue, idx)| {
            let k = QueueKeys::new(queue);
            let mut inv = invocation(&SCRIPT, &keys(&k));
            inv.arg(k.task_prefix()).arg(k.unmet_prefix()).arg(now);
            let encoded = idx.iter().try_for_each(|&i| {
                let WaitItem {
                    item: it,
                    unmet,
                    on_failure,
                } = &items[i];
                let msg = serde_json::to_string(&it.msg)
                    .map_err(|e| BrokerError::Protocol(e.to_string()))?;
                let unmet: Vec<String> = unmet.iter().map(ToString::to_string).collect();
                inv.arg(it.msg.id.to_string())
                    .arg(keys::priority_index(it.msg.priority))
                    .arg(it.seq)
                    .arg(it.msg.max_attempts)
                    .arg(msg)
                    .arg(unmet.join(","))
                    .arg(if *on_failure { "fail" } else { "all" })
                    .arg(it.msg.key.as_deref().unwrap_or(""));
                Ok::<_, BrokerError>(())
            });
            async move {
                encoded?;
                self.run::<Vec<i64>>(inv).await
            }
        });
        let results = futures::future::try_join_all(calls).await?;
        let mut out = vec![false; items.len()];
        for ((_, idx), added) in by_queue.iter().zip(results) {
            for (&i, a) in idx.iter().zip(added) {
                out[i] = a == 1;
            }
        }
        Ok(out)
    }
}

/// The KEYS of [`LUA`].
pub(crate) fn keys(k: &QueueKeys) -> [String; 2] {
    [k.epoch(), k.active_keys()]
}
