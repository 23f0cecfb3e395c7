//! FLOW_RELEASE: tells waiting tasks of one queue that a dependency finished (see
//! [`crate::flow`]). Idempotent: a task that is no longer `waiting` is left alone.
//!
//! - The dependency succeeded: it leaves the task's unmet set; when the set is empty the
//!   task becomes `queued` (`seq` + 1, pushed on its pending list, workers woken).
//! - It died (or was cancelled): the task is `cancelled` with the given reason and leaves
//!   Redis.
//!
//! - A flow's failure handler (hash field `mode` = `fail`) is the other way round: a
//!   dependency that died queues it (the reason as the update's error), and it is
//!   cancelled once every dependency succeeded.
//!
//! Each change's status update goes to the queue's outbox in the same step. A task with
//! a key (registered in its key by FLOW_WAIT) is queued into its key's backlog, and one
//! cancelled here leaves its key, as ENQUEUE and CANCEL do (the `key_fns` of
//! [`scripts`](super)).
//!
//! ```text
//! KEYS[1..3] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[4]    -> taskq:{<queue>}:wake
//! KEYS[5]    -> taskq:{<queue>}:outbox
//! KEYS[6]    -> taskq:{<queue>}:limits   (`key_conc`: the running limit per key)
//! KEYS[7]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[8]    -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[9]    -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV[1]    -> task hash prefix
//! ARGV[2]    -> unmet set prefix
//! ARGV[3]    -> now (ms)
//! then per task, 3 values: id, dependency id, reason (empty: the dependency succeeded)
//! reply      -> per task, 0 nothing changed, 1 queued, 2 cancelled
//! ```

use std::collections::BTreeMap;

use taskq_core::{QueueName, TaskId};

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

keyed_script!(
    r"
local q = kq(1, 6)
local pfx, upfx, now = ARGV[1], ARGV[2], ARGV[3]
local ent = ob_new(now, '')
local out, woke = {}, false
-- The waiting task `id` becomes queued: on its pending list, or its key's backlog.
local function queue(id, prio, uk)
  if uk then
    kqueue(q, uk, id, prio, false)
  else
    redis.call('LPUSH', q.pend[1 + prio], id)
    woke = true
  end
end
-- The waiting task left Redis: its key (if any) counts one task less.
local function leave(uk)
  if uk then kleave(q, uk) end
end
for i = 4, #ARGV, 3 do
  local id, dep, why = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local k, u = pfx .. id, upfx .. id
  local vals = redis.call('HMGET', k, 'state', 'prio', 'mode', 'key')
  local uk = vals[4] or nil
  local r = 0
  if vals[1] ~= 'waiting' then
    redis.call('DEL', u)
  elseif vals[3] == 'fail' then
    if why == '' then
      redis.call('SREM', u, dep)
      if redis.call('SCARD', u) == 0 then
        local seq = redis.call('HINCRBY', k, 'seq', 1)
        redis.call('DEL', k, u)
        leave(uk)
        ob_add(ent, id, seq, 'cancelled', 0, cjson.encode({e = 'every task of the flow succeeded'}))
        r = 2
      end
    else
      local seq = redis.call('HINCRBY', k, 'seq', 1)
      redis.call('HSET', k, 'state', 'queued', 'qat', now)
      redis.call('HDEL', k, 'mode')
      redis.call('DEL', u)
      queue(id, tonumber(vals[2]), uk)
      ob_add(ent, id, seq, 'queued', 0, cjson.encode({e = why}))
      r = 1
    end
  elseif why == '' then
    redis.call('SREM', u, dep)
    if redis.call('SCARD', u) == 0 then
      local seq = redis.call('HINCRBY', k, 'seq', 1)
      redis.call('HSET', k, 'state', 'queued', 'qat', now)
      queue(id, tonumber(vals[2]), uk)
      ob_add(ent, id, seq, 'queued', 0, '')
      r = 1
    end
  else
    local seq = redis.call('HINCRBY', k, 'seq', 1)
    redis.call('DEL', k, u)
    leave(uk)
    ob_add(ent, id, seq, 'cancelled', 0, cjson.encode({e = why}))
    r = 2
  end
  out[#out + 1] = r
end
ob_flush(KEYS[5], ent, nil)
if woke or q.woke then wake(KEYS[4]) end
return out
"
);

/// One dependent to tell about one finished dependency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub queue: QueueName,
    pub id: TaskId,
    pub dependency: TaskId,
    /// `None`: the dependency succeeded; otherwise why the dependent is cancelled.
    pub died: Option<String>,
}

impl Broker {
    /// Tells dependents their dependency finished: one script call per queue, issued
    /// concurrently. Returns how many were queued and how many cancelled.
    pub async fn flow_release(&self, releases: &[Release]) -> Result<(usize, usize)> {
        let mut by_queue: BTreeMap<&QueueName, Vec<&Release>> = BTreeMap::new();
        for r in releases {
            by_queue.entry(&r.queue).or_default().push(r);
        }
        let now = taskq_core::now_ms();
        let calls = by_queue.into_iter().map(|(queue, rs)| {
            let k = QueueKeys::new(queue);
            let mut inv = invocation(&SCRIPT, &keys(&k));
            inv.arg(k.task_prefix()).arg(k.unmet_prefix()).arg(now);
            for r in rs {
                inv.arg(r.id.to_string())
                    .arg(r.dependency.to_string())
                    .arg(r.died.as_deref().unwrap_or(""));
            }
            async move { self.run::<Vec<i64>>(inv).await }
        });
        let results = futures::future::try_join_all(calls).await?;
        let all = results.iter().flatten();
        let queued = all.clone().filter(|r| **r == 1).count();
        let cancelled = all.filter(|r| **r == 2).count();
        Ok((queued, cancelled))
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![k.pending_all(), [k.wake(), k.outbox()], key_keys(k)]
}
