//! DEQUEUE: takes up to `n` runnable tasks, highest priority first, and leases them,
//! within the queue's limits: at most `concurrency` running at once (across all workers)
//! and a token bucket of `rate` dispatches per second holding up to `burst` tokens.
//!
//! A task with a key was its key's head (see the `key_fns` of [`scripts`](super)): its key counts
//! one more running, and the key's next task joins the back of its pending list unless
//! the key reached the queue's `max_running_per_key`; so keys are served round robin and
//! a busy key never holds back the others.
//!
//! Records each task's `running` update in the outbox. While the outbox holds `max
//! outbox` entries or more (MongoDB is behind), nothing is taken: the store's lag stays
//! bounded. Leaves a wake token when work remains, so the next idle worker picks it up.
//!
//! ```text
//! KEYS[1..3] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[4]    -> taskq:{<queue>}:lease
//! KEYS[5]    -> taskq:{<queue>}:wake
//! KEYS[6]    -> taskq:{<queue>}:paused   (nothing is taken while it exists)
//! KEYS[7]    -> taskq:{<queue>}:outbox
//! KEYS[8]    -> taskq:{<queue>}:limits   (hash: rate, burst, concurrency, tokens, ts,
//!                                         key_conc)
//! KEYS[9]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[10]   -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[11]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV       -> task hash prefix, n, lease deadline (ms), worker id, now (ms),
//!               max outbox entries (0: no limit)
//! reply      -> a flag (1 when a queue limit held tasks back), how many keys' next
//!               task waits for their running limit, then per task 6 values:
//!               id, message JSON, attempts, seq, lease token, queued-at (ms)
//! ```

use std::time::Duration;

use redis::Value;
use taskq_core::{QueueName, TaskMessage};

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::QueueKeys;
use crate::reply::{bytes, int, string};
use crate::{Broker, BrokerError, Result};

keyed_script!(
    r"
local pfx, n, deadline, wid, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local q = kq(1, 8)
local out, got = {0, 0}, 0
if redis.call('EXISTS', KEYS[6]) == 1 then return out end
local cap = tonumber(ARGV[6])
if cap > 0 and redis.call('XLEN', KEYS[7]) >= cap then
  out[1] = 1
  return out
end
local ent = ob_new(ARGV[5], wid)
local lim = redis.call('HMGET', KEYS[8], 'rate', 'burst', 'concurrency', 'tokens', 'ts')
local allow = n
if lim[3] then
  allow = math.min(allow, tonumber(lim[3]) - redis.call('ZCARD', KEYS[4]))
end
local rate, tokens = tonumber(lim[1]), nil
if rate then
  local burst = tonumber(lim[2]) or math.max(1, math.ceil(rate))
  local ts = tonumber(lim[5]) or now
  tokens = math.min(burst, (tonumber(lim[4]) or burst) + math.max(0, now - ts) * rate / 1000)
  allow = math.min(allow, math.floor(tokens))
end
if allow < n then out[1] = 1 end
n = math.max(0, allow)
for p = 1, 3 do
  while got < n do
    local ids = redis.call('RPOP', KEYS[p], n - got)
    if not ids then break end
    for _, id in ipairs(ids) do
      local k = pfx .. id
      local vals = redis.call('HMGET', k, 'msg', 'state', 'qat', 'key', 'attempts', 'seq')
      if vals[1] and vals[2] == 'queued' then
        local attempts = (tonumber(vals[5]) or 0) + 1
        local seq = (tonumber(vals[6]) or 0) + 1
        local token = wid .. ':' .. attempts
        redis.call('HSET', k, 'state', 'running', 'lease', token, 'attempts', attempts, 'seq', seq)
        redis.call('ZADD', KEYS[4], deadline, id)
        local b = #out
        out[b + 1] = id
        out[b + 2] = vals[1]
        out[b + 3] = attempts
        out[b + 4] = seq
        out[b + 5] = token
        out[b + 6] = tonumber(vals[3]) or 0
        ob_add(ent, id, seq, 'running', attempts, '')
        got = got + 1
        if vals[4] then kstart(q, vals[4], id) end
      end
    end
  end
end
if rate then
  redis.call('HSET', KEYS[8], 'tokens', tostring(tokens - got), 'ts', now)
end
ob_flush(KEYS[7], ent)
out[2] = q.held or 0
if got > 0 and redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) > 0 then
  wake(KEYS[5])
end
return out
"
);

/// A task taken from a queue, with the lease of this attempt.
#[derive(Clone, Debug)]
pub struct Leased {
    pub msg: TaskMessage,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    /// The task's transition counter after it started running.
    pub seq: u64,
    /// Identifies this attempt's lease; acknowledgements carry it.
    pub token: String,
    /// When the task last became runnable (submitted, due, or returned to the queue).
    pub queued_at_ms: i64,
}

/// What one dequeue call took.
#[derive(Clone, Debug, Default)]
pub struct Dequeued {
    pub tasks: Vec<Leased>,
    /// A queue limit (rate or concurrency) held tasks back: try again soon.
    pub limited: bool,
    /// Keys whose next task this call left waiting because the key reached its
    /// `max_running_per_key` (it moves on when one of the key's tasks stops running).
    pub key_held: u32,
}

fn parse(reply: &[Value]) -> Result<Dequeued> {
    let [flag, held, rest @ ..] = reply else {
        return Err(BrokerError::Protocol("short dequeue reply".into()));
    };
    let tasks = rest
        .chunks_exact(6)
        .map(|v| {
            let msg: TaskMessage = serde_json::from_slice(&bytes(&v[1])?)
                .map_err(|e| BrokerError::Protocol(format!("task message: {e}")))?;
            Ok(Leased {
                msg,
                attempt: int(&v[2])? as u32,
                seq: int(&v[3])? as u64,
                token: string(&v[4])?,
                queued_at_ms: int(&v[5])?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dequeued {
        tasks,
        limited: int(flag)? == 1,
        key_held: u32::try_from(int(held)?).unwrap_or(0),
    })
}

impl Broker {
    /// Leases up to `n` runnable tasks of `queue`, highest priority first, until
    /// `now + lease`, within the queue's [`QueueLimits`](crate::QueueLimits), and records
    /// them as `running` in the outbox. Takes nothing (and reports `limited`) while the
    /// queue's outbox holds `max_outbox` entries or more; 0 means no such limit.
    pub async fn dequeue(
        &self,
        queue: &QueueName,
        n: usize,
        lease: Duration,
        worker_id: &str,
        max_outbox: usize,
    ) -> Result<Dequeued> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix())
            .arg(n)
            .arg(crate::deadline(lease))
            .arg(worker_id)
            .arg(taskq_core::now_ms())
            .arg(max_outbox);
        let reply: Vec<Value> = self.run(inv).await?;
        parse(&reply)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![
        k.pending_all(),
        [k.lease(), k.wake(), k.paused(), k.outbox()],
        key_keys(k)
    ]
}
