//! DEQUEUE: takes up to `n` runnable tasks, highest priority first, and leases them,
//! within the queue's limits: at most `concurrency` running at once (across all workers)
//! and a token bucket of `rate` dispatches per second holding up to `burst` tokens.
//!
//! A task with a key was its key's head (see the `key_fns` of [`scripts`](super)): its key counts
//! one more running, and the key's next task joins the back of its pending list unless
//! the key reached the queue's `max_running_per_key`; so keys are served round robin and
//! a busy key never holds back the others.
//!
//! The call is named (a [`CallId`]) and remembers what it leased for the length of the
//! lease: a call repeated under the same name (its reply was lost: a timeout, a cut
//! connection) answers with the tasks the first run leased and still holds, instead of
//! leasing more, so a lost reply does not leave tasks leased to nobody until the reaper
//! counts an attempt they never ran.
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
//! KEYS[12]   -> taskq:{<queue>}:call:<call id>   (what the call leased, a string:
//!                                                  `<id>=<attempt>,…`)
//! ARGV       -> task hash prefix, n, lease deadline (ms), worker id,
//!               max outbox entries (0: no limit), how long the call is remembered (ms),
//!               1 when the call is a repeat (0 for its first run)
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
local pfx, n, deadline, wid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
-- Redis's clock, not the caller's: the `running` time is when the lease was taken, so it
-- never precedes the end of an attempt that Redis completed before this call ran.
local now = rnow()
local q = kq(1, 8)
local out, got = {0, 0}, 0
local call = {}
local first = ARGV[7] == '1' and redis.call('GET', KEYS[12])
if first then
  -- A repeat whose first run leased tasks: those whose lease it still holds, and
  -- nothing more.
  for id, attempt in string.gmatch(first, '([^=,]+)=(%d+)') do
    local token = wid .. ':' .. attempt
    local vals = redis.call('HMGET', pfx .. id, 'msg', 'state', 'qat', 'lease', 'attempts', 'seq')
    if vals[1] and vals[2] == 'running' and vals[4] == token then
      local b = #out
      out[b + 1] = id
      out[b + 2] = vals[1]
      out[b + 3] = tonumber(vals[5])
      out[b + 4] = tonumber(vals[6])
      out[b + 5] = token
      out[b + 6] = tonumber(vals[3]) or 0
    end
  end
  return out
end
if redis.call('EXISTS', KEYS[6]) == 1 then return out end
local cap = tonumber(ARGV[5])
if cap > 0 and redis.call('XLEN', KEYS[7]) >= cap then
  out[1] = 1
  return out
end
local ent = ob_new(now, wid)
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
        call[#call + 1] = id .. '=' .. attempts
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
if got > 0 then redis.call('SET', KEYS[12], table.concat(call, ','), 'PX', ARGV[6]) end
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

/// The name of one dequeue call: a call repeated under the same name answers with what
/// the first run leased (see the [module](self) documentation). It knows whether it was
/// sent already, so only a repeat looks up what the first run leased.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallId {
    id: u64,
    sent: bool,
}

impl CallId {
    /// A fresh, random name.
    pub fn new() -> Self {
        Self {
            id: rand::random(),
            sent: false,
        }
    }
}

impl Default for CallId {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// Leases up to `n` runnable tasks of `queue`, highest priority first, until
    /// `now + lease`, within the queue's [`QueueLimits`](crate::QueueLimits), and records
    /// them as `running` in the outbox. Takes nothing (and reports `limited`) while the
    /// queue's outbox holds `max_outbox` entries or more; 0 means no such limit. The call
    /// is named `call`: when its reply is lost, calling again with the same `call` (within
    /// `lease`) answers with the tasks the lost reply carried, those still leased by it,
    /// and leases nothing more; a caller that never repeats passes `&mut CallId::new()`.
    pub async fn dequeue(
        &self,
        call: &mut CallId,
        queue: &QueueName,
        n: usize,
        lease: Duration,
        worker_id: &str,
        max_outbox: usize,
    ) -> Result<Dequeued> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k, *call));
        inv.arg(k.task_prefix())
            .arg(n)
            .arg(crate::deadline(lease))
            .arg(worker_id)
            .arg(max_outbox)
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(u8::from(call.sent));
        call.sent = true;
        let reply: Vec<Value> = self.run(inv).await?;
        parse(&reply)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys, call: CallId) -> Vec<String> {
    key_list![
        k.pending_all(),
        [k.lease(), k.wake(), k.paused(), k.outbox()],
        key_keys(k),
        [k.dequeue_call(call.id)]
    ]
}
