//! Every Lua script taskq runs, in one place. Each script touches the keys of exactly
//! one queue (one `{queue}` hash tag, so one Redis Cluster slot), and each one moves
//! tasks between that queue's structures atomically: no two workers can both take,
//! reap or promote the same task.
//!
//! Per-task hashes (`<task_prefix><id>`) hold `msg` (the JSON message), `state`, `prio`
//! (0 high, 1 normal, 2 low), `attempts`, `max`, `seq`, `lease` (the token of the
//! attempt that holds it) and `qat` (when it last became runnable, in ms). `seq` increases by one on every transition; the store uses it
//! to ignore status updates that arrive out of order.

use std::sync::LazyLock;

use redis::Script;

/// Shared by the scripts that make a queue runnable: leaves one wake-up token for idle
/// workers blocked on the queue's wake list.
macro_rules! wake {
    ($key:literal) => {
        concat!(
            "redis.call('LPUSH', KEYS[",
            $key,
            "], '1') redis.call('LTRIM', KEYS[",
            $key,
            "], 0, 0)"
        )
    };
}

/// Adds tasks unless their hash exists already (so recovery never duplicates a task).
///
/// KEYS: pending high, normal, low; scheduled; wake.
/// ARGV: task prefix, now ms, then per task: id, prio, due ms, seq, attempts, max, msg.
/// Returns 1 (added) or 0 (already present) per task.
pub static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
local pfx, now = ARGV[1], tonumber(ARGV[2])
local out, woke = {}, false
for i = 3, #ARGV, 7 do
  local id = ARGV[i]
  local k = pfx .. id
  if redis.call('EXISTS', k) == 1 then
    out[#out + 1] = 0
  else
    local prio, due = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    local state = 'queued'
    if due > now then state = 'scheduled' end
    redis.call('HSET', k, 'msg', ARGV[i + 6], 'state', state, 'prio', prio,
      'seq', ARGV[i + 3], 'attempts', ARGV[i + 4], 'max', ARGV[i + 5], 'qat', now)
    if due > now then
      redis.call('ZADD', KEYS[4], due, id)
    else
      redis.call('LPUSH', KEYS[1 + prio], id)
      woke = true
    end
    out[#out + 1] = 1
  end
end
if woke then ",
        wake!("5"),
        r" end
return out
"
    ))
});

/// Takes up to `n` runnable tasks, highest priority first, and leases them, within the
/// queue's limits: at most `concurrency` running at once (across all workers) and a token
/// bucket of `rate` dispatches per second holding up to `burst` tokens.
///
/// KEYS: pending high, normal, low; lease; wake; paused (nothing is taken while it
/// exists); limits (hash: rate, burst, concurrency, tokens, ts).
/// ARGV: task prefix, n, lease deadline ms, worker id, now ms.
/// Returns a flag (1 when a limit held tasks back), then id, msg, attempts, seq, lease
/// token, queued-at ms per task. Leaves a wake token when work remains, so the next idle
/// worker picks it up.
pub static DEQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
local pfx, n, deadline, wid, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local out, got = {0}, 0
if redis.call('EXISTS', KEYS[6]) == 1 then return out end
local lim = redis.call('HMGET', KEYS[7], 'rate', 'burst', 'concurrency', 'tokens', 'ts')
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
      local vals = redis.call('HMGET', k, 'msg', 'state', 'qat')
      if vals[1] and vals[2] == 'queued' then
        local attempts = redis.call('HINCRBY', k, 'attempts', 1)
        local seq = redis.call('HINCRBY', k, 'seq', 1)
        local token = wid .. ':' .. attempts
        redis.call('HSET', k, 'state', 'running', 'lease', token)
        redis.call('ZADD', KEYS[4], deadline, id)
        local b = #out
        out[b + 1] = id
        out[b + 2] = vals[1]
        out[b + 3] = attempts
        out[b + 4] = seq
        out[b + 5] = token
        out[b + 6] = tonumber(vals[3]) or 0
        got = got + 1
      end
    end
  end
end
if rate then
  redis.call('HSET', KEYS[7], 'tokens', tostring(tokens - got), 'ts', now)
end
if got > 0 and redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) > 0 then
  ",
        wake!("5"),
        r"
end
return out
"
    ))
});

/// Extends the leases still held by the given attempts.
///
/// KEYS: lease. ARGV: task prefix, new deadline ms, then id, token per task.
/// Returns the ids whose lease is no longer held by that token.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', ARGV[1] .. id, 'lease') == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
  else
    lost[#lost + 1] = id
  end
end
return lost
",
    )
});

/// Completes attempts: the task leaves Redis.
///
/// KEYS: lease; the current second's counter of finished attempts (or a dummy key of the
/// same queue when nothing is counted). ARGV: task prefix, then id, token per task.
/// Returns the new seq per task, or 0 when the lease was no longer held.
pub static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out, n = {}, 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  if redis.call('HGET', k, 'lease') == ARGV[i + 1] then
    out[#out + 1] = redis.call('HINCRBY', k, 'seq', 1)
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', k)
    n = n + 1
  else
    out[#out + 1] = 0
  end
end
if n > 0 then
  redis.call('INCRBY', KEYS[2], n)
  redis.call('EXPIRE', KEYS[2], 120)
end
return out
",
    )
});

/// Fails attempts: each task either waits in the retry set until its due time or, with
/// a due time of -1, dies and leaves Redis (its record in the store is the dead letter).
///
/// KEYS: lease; retry; the current second's counter of failed attempts.
/// ARGV: task prefix, then id, token, due ms per task.
/// Returns the new seq per task, or 0 when the lease was no longer held.
pub static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out, n = {}, 0
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  if redis.call('HGET', k, 'lease') == ARGV[i + 1] then
    out[#out + 1] = redis.call('HINCRBY', k, 'seq', 1)
    redis.call('ZREM', KEYS[1], id)
    local due = tonumber(ARGV[i + 2])
    if due >= 0 then
      redis.call('HSET', k, 'state', 'retrying')
      redis.call('HDEL', k, 'lease')
      redis.call('ZADD', KEYS[2], due, id)
    else
      redis.call('DEL', k)
    end
    n = n + 1
  else
    out[#out + 1] = 0
  end
end
if n > 0 then
  redis.call('INCRBY', KEYS[3], n)
  redis.call('EXPIRE', KEYS[3], 120)
end
return out
",
    )
});

/// Gives leased tasks back without counting the attempt (graceful shutdown). They go to
/// the head of their pending list so they run next.
///
/// KEYS: pending high, normal, low; lease; wake. ARGV: task prefix, now ms, then id, token.
/// Returns the new seq per task, or 0 when the lease was no longer held.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
local out, woke = {}, false
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  if redis.call('HGET', k, 'lease') == ARGV[i + 1] then
    out[#out + 1] = redis.call('HINCRBY', k, 'seq', 1)
    redis.call('ZREM', KEYS[4], id)
    redis.call('HINCRBY', k, 'attempts', -1)
    redis.call('HSET', k, 'state', 'queued', 'qat', ARGV[2])
    redis.call('HDEL', k, 'lease')
    redis.call('RPUSH', KEYS[1 + tonumber(redis.call('HGET', k, 'prio'))], id)
    woke = true
  else
    out[#out + 1] = 0
  end
end
if woke then ",
        wake!("5"),
        r" end
return out
"
    ))
});

/// Moves due scheduled and retrying tasks to their pending lists.
///
/// KEYS: scheduled; retry; pending high, normal, low; wake. ARGV: task prefix, now ms, limit.
/// Returns id, seq, source (1 scheduled, 2 retry), attempts per promoted task.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
local out = {}
for z = 1, 2 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[z], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[z], id)
    local k = ARGV[1] .. id
    local vals = redis.call('HMGET', k, 'prio', 'attempts')
    if vals[1] then
      local seq = redis.call('HINCRBY', k, 'seq', 1)
      redis.call('HSET', k, 'state', 'queued', 'qat', ARGV[2])
      redis.call('LPUSH', KEYS[3 + tonumber(vals[1])], id)
      out[#out + 1] = id
      out[#out + 1] = seq
      out[#out + 1] = z
      out[#out + 1] = tonumber(vals[2])
    end
  end
end
if #out > 0 then ",
        wake!("6"),
        r" end
return out
"
    ))
});

/// Returns tasks whose lease expired: to the head of their pending list when attempts
/// remain, otherwise out of Redis as dead. The expired attempt stays counted.
///
/// KEYS: lease; pending high, normal, low; wake. ARGV: task prefix, now ms, limit.
/// Returns id, seq, attempts, outcome (1 requeued, 0 dead) per reaped task.
pub static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
local out, woke = {}, false
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local k = ARGV[1] .. id
  local vals = redis.call('HMGET', k, 'prio', 'attempts', 'max')
  if vals[1] then
    local seq = redis.call('HINCRBY', k, 'seq', 1)
    local attempts = tonumber(vals[2])
    local outcome = 0
    if attempts >= tonumber(vals[3]) then
      redis.call('DEL', k)
    else
      redis.call('HSET', k, 'state', 'queued', 'qat', ARGV[2])
      redis.call('HDEL', k, 'lease')
      redis.call('RPUSH', KEYS[2 + tonumber(vals[1])], id)
      outcome = 1
      woke = true
    end
    out[#out + 1] = id
    out[#out + 1] = seq
    out[#out + 1] = attempts
    out[#out + 1] = outcome
  end
end
if woke then ",
        wake!("5"),
        r" end
return out
"
    ))
});

/// Cancels a task that has not finished. A waiting task (queued, scheduled or retrying)
/// leaves Redis at once; a running one is flagged, and its worker stops the handler and
/// finishes it as cancelled.
///
/// KEYS: pending high, normal, low; scheduled; retry. ARGV: task prefix, id.
/// Returns {0} when the task is not in Redis, {1, seq} when it was cancelled, and
/// {2, 0} when it is running and was flagged.
pub static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local id = ARGV[2]
local k = ARGV[1] .. id
local vals = redis.call('HMGET', k, 'state', 'prio')
if not vals[1] then return {0} end
if vals[1] == 'running' then
  redis.call('HSET', k, 'cancel', '1')
  return {2, 0}
end
local seq = redis.call('HINCRBY', k, 'seq', 1)
redis.call('LREM', KEYS[1 + tonumber(vals[2])], 1, id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
redis.call('DEL', k)
return {1, seq}
",
    )
});

/// Which of the given running tasks have been asked to cancel.
///
/// KEYS: lease (routes the call to the queue's slot). ARGV: task prefix, then ids.
/// Returns the flagged ids.
pub static CANCELLED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i = 2, #ARGV do
  if redis.call('HGET', ARGV[1] .. ARGV[i], 'cancel') == '1' then
    out[#out + 1] = ARGV[i]
  end
end
return out
",
    )
});

/// Claims an idempotency key for a task, unless another task holds it.
///
/// KEYS: the claim. ARGV: task id, claim lifetime in ms.
/// Returns the holder's id, or false when the claim is now this task's.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
",
    )
});

/// Changes a claim only while the given task holds it: `keep` sets its lifetime,
/// `drop` removes it.
///
/// KEYS: the claim. ARGV: task id, `keep` | `drop`, lifetime in ms (for `keep`).
/// Returns 1 when the claim was this task's, else 0.
pub static SETTLE_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'drop' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
",
    )
});
