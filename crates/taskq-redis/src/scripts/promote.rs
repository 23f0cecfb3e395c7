//! PROMOTE: moves due scheduled and retrying tasks to their pending lists; the `queued`
//! updates go to the outbox. A task with a key goes to its key's backlog instead (a
//! scheduled one at the back, a retry at the front, so it keeps its place in its key's
//! order; see the `key_fns` of [`scripts`](super)). Then it pumps the keys parked by their rate
//! whose next token is due (by Redis's clock).
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:scheduled
//! KEYS[2]    -> taskq:{<queue>}:retry
//! KEYS[3..5] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[6]    -> taskq:{<queue>}:wake
//! KEYS[7]    -> taskq:{<queue>}:outbox
//! KEYS[8]    -> taskq:{<queue>}:limits
//! KEYS[9]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[10]   -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[11]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV       -> task hash prefix, now (ms), limit
//! reply      -> per promoted task, 4 values: id, seq, source (1 scheduled, 2 retry), attempts
//! ```

use redis::Value;
use taskq_core::{QueueName, TaskId};

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::QueueKeys;
use crate::reply::{int, per_task};
use crate::{Broker, Result};

keyed_script!(
    r"
local q = kq(3, 8)
local out = {}
local ent = ob_new(ARGV[2], '')
for z = 1, 2 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[z], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[z], id)
    local k = ARGV[1] .. id
    local vals = redis.call('HMGET', k, 'prio', 'attempts', 'key')
    if vals[1] then
      local seq = redis.call('HINCRBY', k, 'seq', 1)
      redis.call('HSET', k, 'state', 'queued', 'qat', ARGV[2])
      if vals[3] then
        kqueue(q, vals[3], id, tonumber(vals[1]), z == 2)
      else
        redis.call('LPUSH', KEYS[3 + tonumber(vals[1])], id)
      end
      out[#out + 1] = id
      out[#out + 1] = seq
      out[#out + 1] = z
      out[#out + 1] = tonumber(vals[2])
      ob_add(ent, id, seq, 'queued', vals[2], '')
    end
  end
end
ob_flush(KEYS[7], ent)
local parked = redis.call('ZRANGEBYSCORE', q.park, '-inf', rnow(), 'LIMIT', 0, tonumber(ARGV[3]))
for _, uk in ipairs(parked) do
  redis.call('ZREM', q.park, uk)
  kpump(q, uk)
end
if #out > 0 or q.woke then wake(KEYS[6]) end
return out
"
);

/// A task the promoter made runnable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    pub id: TaskId,
    pub seq: u64,
    /// True when it came from the retry set, false when from the scheduled set.
    pub from_retry: bool,
    pub attempts: u32,
}

fn parse(reply: &[Value]) -> Result<Vec<Promoted>> {
    per_task(reply, |id, seq, source, attempts| {
        Ok(Promoted {
            id,
            seq,
            from_retry: int(source)? == 2,
            // A hash without `attempts` (removed meanwhile) reads as 0.
            attempts: int(attempts).unwrap_or(0) as u32,
        })
    })
}

impl Broker {
    /// Makes up to `limit` due scheduled and retrying tasks of `queue` runnable.
    pub async fn promote(
        &self,
        queue: &QueueName,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Promoted>> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix()).arg(now_ms).arg(limit);
        let reply: Vec<Value> = self.run(inv).await?;
        parse(&reply)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![
        [k.scheduled(), k.retry()],
        k.pending_all(),
        [k.wake(), k.outbox()],
        key_keys(k)
    ]
}
