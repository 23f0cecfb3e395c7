//! Every Lua script taskq runs, in one place. Each script touches the keys of exactly
//! one queue (one `{queue}` hash tag, so one Redis Cluster slot), and each one moves
//! tasks between that queue's structures atomically: no two workers can both take,
//! reap or promote the same task.
//!
//! Per-task hashes (`<task_prefix><id>`) hold `msg` (the JSON message), `state`, `prio`
//! (0 high, 1 normal, 2 low), `attempts`, `max`, `seq`, `lease` (the token of the
//! attempt that holds it) and `qat` (when it last became runnable, in ms). `seq`
//! increases by one on every transition; the store uses it to ignore status updates that
//! arrive out of order.
//!
//! **Transactional outbox.** Every script that moves a task between states (dequeue, ack,
//! fail, release, promote, reap) also appends the status updates of that call to the
//! queue's outbox stream (`taskq:{queue}:outbox`), in the same atomic step: one entry per
//! call, so a status change Redis decided can never be lost between Redis and MongoDB.
//! An entry's fields are `at` (the time of the transitions, ms), `w` (the worker, or
//! empty), then one field per task: the task id, whose value is
//! `<seq>|<status>|<attempts>|<extras>`, where `extras` is empty or a JSON object with
//! `e` (the error), `r` (the result as JSON text) and `due` (the retry time, ms).
//! [`crate::OutboxEntry`] parses it; the store writers consume the stream with the
//! consumer group [`crate::keys::OUTBOX_GROUP`].

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

/// Lua helpers of the scripts that record transitions in the outbox: `ob_new(at, w)`
/// starts an entry, `ob_add(ent, id, seq, status, attempts, extras)` adds one task's
/// update to it, and `ob_flush(key, ent)` appends it to the stream if it holds any.
macro_rules! outbox_fns {
    () => {
        r"
local function ob_new(at, w) return {'at', at, 'w', w} end
local function ob_add(ent, id, seq, st, att, ex)
  ent[#ent + 1] = id
  ent[#ent + 1] = seq .. '|' .. st .. '|' .. att .. '|' .. ex
end
local function ob_flush(key, ent)
  if #ent > 4 then redis.call('XADD', key, '*', unpack(ent)) end
end
"
    };
}

/// Adds tasks unless their hash exists already (so recovery never duplicates a task).
///
/// Sets the queue's epoch unless it exists (see [`crate::keys::QueueKeys::epoch`]).
///
/// KEYS: pending high, normal, low; scheduled; wake; epoch.
/// ARGV: task prefix, now ms, then per task: id, prio, due ms, seq, attempts, max, msg.
/// Returns 1 (added) or 0 (already present) per task.
pub static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
local pfx, now = ARGV[1], tonumber(ARGV[2])
local out, woke = {}, false
redis.call('SET', KEYS[6], ARGV[2], 'NX')
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
/// Records each task's `running` update in the outbox. While the outbox holds `max
/// outbox` entries or more (MongoDB is behind), nothing is taken: the store's lag stays
/// bounded.
///
/// KEYS: pending high, normal, low; lease; wake; paused (nothing is taken while it
/// exists); limits (hash: rate, burst, concurrency, tokens, ts); outbox.
/// ARGV: task prefix, n, lease deadline ms, worker id, now ms, max outbox entries (0: no
/// limit).
/// Returns a flag (1 when a limit held tasks back), then id, msg, attempts, seq, lease
/// token, queued-at ms per task. Leaves a wake token when work remains, so the next idle
/// worker picks it up.
pub static DEQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        outbox_fns!(),
        r"
local pfx, n, deadline, wid, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local out, got = {0}, 0
if redis.call('EXISTS', KEYS[6]) == 1 then return out end
local cap = tonumber(ARGV[6])
if cap > 0 and redis.call('XLEN', KEYS[8]) >= cap then
  out[1] = 1
  return out
end
local ent = ob_new(ARGV[5], wid)
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
        ob_add(ent, id, seq, 'running', attempts, '')
        got = got + 1
      end
    end
  end
end
if rate then
  redis.call('HSET', KEYS[7], 'tokens', tostring(tokens - got), 'ts', now)
end
ob_flush(KEYS[8], ent)
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

/// Completes attempts: the task leaves Redis, and its final update (`succeeded` or
/// `cancelled`) goes to the outbox.
///
/// KEYS: lease; the current second's counter of finished attempts (or a dummy key of the
/// same queue when nothing is counted); outbox.
/// ARGV: task prefix, now ms, worker id, final status, then id, token, extras per task.
/// Returns the new seq per task, or 0 when the lease was no longer held.
pub static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        outbox_fns!(),
        r"
local out, n = {}, 0
local ent = ob_new(ARGV[2], ARGV[3])
for i = 5, #ARGV, 3 do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  local vals = redis.call('HMGET', k, 'lease', 'attempts')
  if vals[1] == ARGV[i + 1] then
    local seq = redis.call('HINCRBY', k, 'seq', 1)
    out[#out + 1] = seq
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', k)
    ob_add(ent, id, seq, ARGV[4], vals[2], ARGV[i + 2])
    n = n + 1
  else
    out[#out + 1] = 0
  end
end
if n > 0 then
  redis.call('INCRBY', KEYS[2], n)
  redis.call('EXPIRE', KEYS[2], 120)
end
ob_flush(KEYS[3], ent)
return out
",
    ))
});

/// Fails attempts: each task either waits in the retry set until its due time
/// (`retrying`) or, with a due time of -1, dies and leaves Redis (`dead`; its record in
/// the store is the dead letter). The updates go to the outbox.
///
/// KEYS: lease; retry; the current second's counter of failed attempts; outbox.
/// ARGV: task prefix, now ms, worker id, then id, token, due ms, extras per task.
/// Returns the new seq per task, or 0 when the lease was no longer held.
pub static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        outbox_fns!(),
        r"
local out, n = {}, 0
local ent = ob_new(ARGV[2], ARGV[3])
for i = 4, #ARGV, 4 do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  local vals = redis.call('HMGET', k, 'lease', 'attempts')
  if vals[1] == ARGV[i + 1] then
    local seq = redis.call('HINCRBY', k, 'seq', 1)
    out[#out + 1] = seq
    redis.call('ZREM', KEYS[1], id)
    local due = tonumber(ARGV[i + 2])
    if due >= 0 then
      redis.call('HSET', k, 'state', 'retrying')
      redis.call('HDEL', k, 'lease')
      redis.call('ZADD', KEYS[2], due, id)
      ob_add(ent, id, seq, 'retrying', vals[2], ARGV[i + 3])
    else
      redis.call('DEL', k)
      ob_add(ent, id, seq, 'dead', vals[2], ARGV[i + 3])
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
ob_flush(KEYS[4], ent)
return out
",
    ))
});

/// Gives leased tasks back without counting the attempt (graceful shutdown). They go to
/// the head of their pending list so they run next.
///
/// The `queued` updates go to the outbox.
///
/// KEYS: pending high, normal, low; lease; wake; outbox.
/// ARGV: task prefix, now ms, worker id, then id, token per task.
/// Returns the new seq per task, or 0 when the lease was no longer held.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        outbox_fns!(),
        r"
local out, woke = {}, false
local ent = ob_new(ARGV[2], ARGV[3])
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  if redis.call('HGET', k, 'lease') == ARGV[i + 1] then
    local seq = redis.call('HINCRBY', k, 'seq', 1)
    out[#out + 1] = seq
    redis.call('ZREM', KEYS[4], id)
    local attempts = redis.call('HINCRBY', k, 'attempts', -1)
    ob_add(ent, id, seq, 'queued', attempts, '')
    redis.call('HSET', k, 'state', 'queued', 'qat', ARGV[2])
    redis.call('HDEL', k, 'lease')
    redis.call('RPUSH', KEYS[1 + tonumber(redis.call('HGET', k, 'prio'))], id)
    woke = true
  else
    out[#out + 1] = 0
  end
end
ob_flush(KEYS[6], ent)
if woke then ",
        wake!("5"),
        r" end
return out
"
    ))
});

/// Moves due scheduled and retrying tasks to their pending lists.
///
/// The `queued` updates go to the outbox.
///
/// KEYS: scheduled; retry; pending high, normal, low; wake; outbox.
/// ARGV: task prefix, now ms, limit.
/// Returns id, seq, source (1 scheduled, 2 retry), attempts per promoted task.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        outbox_fns!(),
        r"
local out = {}
local ent = ob_new(ARGV[2], '')
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
      ob_add(ent, id, seq, 'queued', vals[2], '')
    end
  end
end
ob_flush(KEYS[7], ent)
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
/// The updates (`queued` or `dead`, with the given extras) go to the outbox.
///
/// KEYS: lease; pending high, normal, low; wake; outbox.
/// ARGV: task prefix, now ms, limit, extras of a requeued task, extras of a dead one.
/// Returns id, seq, attempts, outcome (1 requeued, 0 dead) per reaped task.
pub static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        outbox_fns!(),
        r"
local out, woke = {}, false
local ent = ob_new(ARGV[2], '')
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
      ob_add(ent, id, seq, 'dead', attempts, ARGV[5])
    else
      ob_add(ent, id, seq, 'queued', attempts, ARGV[4])
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
ob_flush(KEYS[6], ent)
if woke then ",
        wake!("5"),
        r" end
return out
"
    ))
});

/// Acknowledges outbox entries the store has applied, then trims the stream of every
/// acknowledged entry: below the oldest pending one, or, when none is pending, below the
/// newest one acknowledged here (every entry before it was delivered, and none is pending,
/// so all are acknowledged).
///
/// KEYS: outbox. ARGV: group, the newest id among the entries, then the entry ids.
/// Returns how many entries were still pending.
pub static OUTBOX_ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local floor = ARGV[2]
if p[1] > 0 then floor = p[2] end
redis.call('XTRIM', KEYS[1], 'MINID', floor)
return n
",
    )
});

/// Removes the consumers of the outbox group that hold no pending entry and have not read
/// for `idle` ms (writers of workers that stopped). A consumer that holds entries is kept
/// until another writer claimed them, so no entry is ever dropped from the pending list.
///
/// KEYS: outbox. ARGV: group, idle ms. Returns how many consumers were removed.
pub static OUTBOX_SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and idle >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
",
    )
});

/// Which of the given tasks Redis holds (their hash exists, whatever their state), and
/// since when Redis has known the queue (its epoch, set to now if absent).
///
/// KEYS: epoch. ARGV: task prefix, now ms, then ids.
/// Returns the epoch (ms), then 1 or 0 per id.
pub static PRESENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[2])
  epoch = ARGV[2]
end
local out = {tonumber(epoch)}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('EXISTS', ARGV[1] .. ARGV[i])
end
return out
",
    )
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
