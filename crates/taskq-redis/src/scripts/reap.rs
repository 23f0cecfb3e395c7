//! REAP: returns tasks whose lease expired: to the head of their pending list when
//! attempts remain, otherwise out of Redis as dead. The expired attempt stays counted.
//! The updates (`queued` or `dead`, with the error of each case) go to the outbox. A task
//! with a key frees its running slot in the key; requeued, it goes to the front of its
//! key's backlog (see the `key_fns` of [`scripts`](super)).
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:lease
//! KEYS[2..4] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[5]    -> taskq:{<queue>}:wake
//! KEYS[6]    -> taskq:{<queue>}:outbox
//! KEYS[7]    -> taskq:{<queue>}:limits
//! KEYS[8]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[9]    -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[10]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV       -> task hash prefix, now (ms), limit, extras of a requeued task, extras of a dead one
//! reply      -> per reaped task, 4 values: id, seq, attempts, outcome (1 requeued, 0 dead)
//! ```

use redis::Value;
use taskq_core::{QueueName, TaskId};

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::QueueKeys;
use crate::reply::{int, per_task};
use crate::{Broker, Result, outbox};

/// The error recorded when an expired lease returns its task to the queue.
pub const LEASE_EXPIRED_REQUEUED: &str = "lease expired: the worker stopped heartbeating";
/// The error recorded when an expired lease was the task's last attempt.
pub const LEASE_EXPIRED_DEAD: &str = "lease expired on the last attempt";

keyed_script!(
    r"
local q = kq(2, 7)
local out, woke = {}, false
local ent = ob_new(ARGV[2], '')
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local k = ARGV[1] .. id
  local vals = redis.call('HMGET', k, 'prio', 'attempts', 'max', 'key')
  if vals[1] then
    local seq = redis.call('HINCRBY', k, 'seq', 1)
    local attempts = tonumber(vals[2])
    local outcome = 0
    if attempts >= tonumber(vals[3]) then
      redis.call('DEL', k)
      if vals[4] then kdone(q, vals[4]) end
      ob_add(ent, id, seq, 'dead', attempts, ARGV[5])
    else
      ob_add(ent, id, seq, 'queued', attempts, ARGV[4])
      kto_head(q, k, id, tonumber(vals[1]), vals[4], ARGV[2])
      outcome = 1
      woke = true
    end
    out[#out + 1] = id
    out[#out + 1] = seq
    out[#out + 1] = attempts
    out[#out + 1] = outcome
  end
end
ob_flush(KEYS[6], ent)
if woke or q.woke then wake(KEYS[5]) end
return out
"
);

/// A task whose lease expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub id: TaskId,
    pub seq: u64,
    pub attempts: u32,
    /// True when it went back to its queue, false when its attempts were used up.
    pub requeued: bool,
}

fn parse(reply: &[Value]) -> Result<Vec<Reaped>> {
    per_task(reply, |id, seq, attempts, outcome| {
        Ok(Reaped {
            id,
            seq,
            attempts: int(attempts)? as u32,
            requeued: int(outcome)? == 1,
        })
    })
}

impl Broker {
    /// Returns up to `limit` tasks of `queue` whose lease expired before `now_ms`.
    pub async fn reap(&self, queue: &QueueName, now_ms: i64, limit: usize) -> Result<Vec<Reaped>> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix())
            .arg(now_ms)
            .arg(limit)
            .arg(outbox::extras(Some(LEASE_EXPIRED_REQUEUED), None, None))
            .arg(outbox::extras(Some(LEASE_EXPIRED_DEAD), None, None));
        let reply: Vec<Value> = self.run(inv).await?;
        parse(&reply)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![
        [k.lease()],
        k.pending_all(),
        [k.wake(), k.outbox()],
        key_keys(k)
    ]
}
