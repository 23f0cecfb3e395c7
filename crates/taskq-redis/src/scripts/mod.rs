//! Every Lua script taskq runs: one module per script, each holding the Lua under a
//! table of its KEYS and ARGV, the `keys` function that builds its KEYS (a fixed-size
//! array in the order the Lua indexes them; a test checks the size against the Lua),
//! its typed arguments (enums where the Lua takes a word), the parser of its reply and
//! the [`Broker`] method that runs it, the way Asynq keeps each script right above the
//! method that calls it.
//!
//! Each script touches the keys of exactly one queue (one `{queue}` hash tag, so one
//! Redis Cluster slot), and each one moves tasks between that queue's structures
//! atomically: no two workers can both take, reap or promote the same task.
//!
//! Per-task hashes hold the fields of [`crate::keys::task_hash`]. `seq` increases by one
//! on every transition; the store uses it to ignore status updates that arrive out of
//! order.
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
//!
//! [`Broker`]: crate::Broker

use redis::{FromRedisValue, Script, ScriptInvocation};

use crate::{Broker, Result};

pub mod ack;
pub mod cancel;
pub mod cancel_requested;
pub mod claim;
pub mod dequeue;
pub mod enqueue;
pub mod extend;
pub mod fail;
pub mod flow_children;
pub mod flow_link;
pub mod flow_release;
pub mod flow_wait;
pub mod key_recount;
pub mod outbox_ack;
pub mod outbox_sweep;
pub mod present;
pub mod promote;
pub mod reap;
pub mod release;
pub mod remove;
pub mod settle_claim;

/// The Lua helpers every script may call, put in front of its own Lua:
///
/// - `ob_new(at, w)` starts an outbox entry, `ob_add(ent, id, seq, status, attempts,
///   extras)` adds one task's update to it, and `ob_flush(key, ent, counter)` appends it
///   to the stream if it holds any (see the module documentation for the layout) and
///   counts its tasks in `counter` (see `count`; nil counts nothing);
/// - `wake(key)` leaves one wake-up token for idle workers blocked on the queue's wake
///   list (a list of at most one element);
/// - `unlease(k, id, token, lease)`: when `token` holds the lease of task `id` (hash
///   `k`), takes it off the lease set and returns its next `seq` (the caller writes it
///   to the hash, or deletes the hash), its attempts, its key (false: none) and its
///   priority index; otherwise returns nil. One read for all of it;
/// - `to_head(k, id, list, now)` makes a taken task `queued` again at `now` and puts it
///   at the head of its pending list `list` (the end `RPOP` takes first);
/// - `count(key, n)` adds `n` to a per-second counter that lives two minutes (nothing
///   when `n` is 0 or `key` is nil);
/// - `each_task(first, stride, f)` calls `f(i, id, k)` for every task of the arguments
///   (task `id` at `ARGV[i]`, from `ARGV[first]` on, `stride` values apart; `k` its hash,
///   `ARGV[1]` being the hash prefix) and returns what each call returned, 0 for nil.
macro_rules! lua_fns {
    () => {
        r"
local function count(key, n)
  if n > 0 and key then
    redis.call('INCRBY', key, n)
    redis.call('EXPIRE', key, 120)
  end
end
local function ob_new(at, w) return {'at', at, 'w', w} end
local function ob_add(ent, id, seq, st, att, ex)
  ent[#ent + 1] = id
  ent[#ent + 1] = seq .. '|' .. st .. '|' .. att .. '|' .. ex
end
local function ob_flush(key, ent, counter)
  if #ent > 4 then redis.call('XADD', key, '*', unpack(ent)) end
  count(counter, (#ent - 4) / 2)
end
local function wake(key)
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, 0)
end
local function unlease(k, id, token, lease)
  local vals = redis.call('HMGET', k, 'lease', 'attempts', 'seq', 'key', 'prio')
  if vals[1] ~= token then return nil end
  redis.call('ZREM', lease, id)
  return (tonumber(vals[3]) or 0) + 1, vals[2], vals[4], tonumber(vals[5])
end
local function to_head(k, id, list, now)
  redis.call('HSET', k, 'state', 'queued', 'qat', now)
  redis.call('HDEL', k, 'lease')
  redis.call('RPUSH', list, id)
end
local function each_task(first, stride, f)
  local out = {}
  for i = first, #ARGV, stride do
    local id = ARGV[i]
    out[#out + 1] = f(i, id, ARGV[1] .. id) or 0
  end
  return out
end
"
    };
}
pub(crate) use lua_fns;

/// The Lua helpers of task keys ("ordered and fair work per key"), put after
/// [`lua_fns`] in front of the scripts that move keyed tasks. They take `q`, a table
/// of the queue's keys the script was given: `pend` (the three pending lists, highest
/// priority first), `lim` (the limits hash), `act` (the active keys,
/// [`QueueKeys::active_keys`](crate::keys::QueueKeys::active_keys)), `nb` (the
/// backlog counter, [`QueueKeys::backlogged`](crate::keys::QueueKeys::backlogged)) and
/// `park` (keys waiting for their rate,
/// [`QueueKeys::parked_keys`](crate::keys::QueueKeys::parked_keys));
/// they set `q.woke` when they made a task runnable and add to `q.held` each key whose
/// next task waits for its running limit. Per-key names are built from `ARGV[1]` (the
/// task hash prefix `taskq:{q}:t:`), so they share the queue's hash tag.
///
/// The rules: of a key's queued tasks at most one is in a pending list (its head,
/// recorded in the key's `pend`); the others wait in the key's backlog, one FIFO list
/// per priority. `kpump` pushes the next head (highest priority first) to the back of
/// its pending list when the key has none there and fewer than the queue's
/// `key_conc` (`max_running_per_key`) running (a recorded head whose task is gone or
/// no longer queued does not count): so DEQUEUE, which pops the pending
/// lists, takes keys round robin and never two heads of one key at once. With a rate
/// per key (`key_rate` per second, bucket `key_burst`; its state `tok` and `ts` in the
/// key's hash, times from Redis's clock) a push takes a token; a key whose bucket is
/// empty is parked in `park`, scored by when its next token is due, and PROMOTE pumps
/// it again then. The key's hash and its place in `park` go with its last task.
///
/// The key's hash holds `pend` (its head's id, empty for none), `run` (its running
/// tasks), `tok` and `ts` (its rate bucket) and `b0`..`b2`, the sizes of its three
/// backlogs, so a pump reads one hash instead of probing lists. A hash without sizes
/// (Redis lost it, or a path that cannot keep them exact dropped them) has them read
/// from the lists by the next pump; a size above its list's length is corrected when
/// the pop finds the list empty; sizes of 0 are read again from the lists when the key
/// holds more tasks (its score in `act`) than it runs.
///
/// - `kq(p, l)`: the table `q` the others take: the pending lists at `KEYS[p..p+2]`,
///   the [`key_keys`] at `KEYS[l..l+3]`, and `nbd`, the change to the backlog counter
///   not yet written; `kflush()` writes it (one `INCRBY`; the counter goes when it
///   reaches 0), and [`keyed_script`] calls it when the script's body returns;
/// - `kread(h)`: the key hash's fields in the order `st` holds them (`pend`, `run`,
///   `tok`, `ts`, `b0`, `b1`, `b2`); `ksized(st)`: whether it holds backlog sizes;
///   `kset(set, f, v)` adds a field to a pending write;
/// - `kjoin(q, uk)`: a task of key `uk` enters Redis (the key's score in `act`);
///   `kgone(q, uk)`: one leaves, and true when it was the key's last (the key leaves
///   `act` and its hash goes); `kleave(q, uk)`: `kgone`, then `kpump` if the key stays;
/// - `kqueue(q, uk, id, prio, front, head)`: a task becomes queued: into its backlog (at
///   the front when `front`: a retry or a returned task keeps its place), then `kpump`;
/// - `kpump(q, uk, head, st, set, h)`: see above (`head`: to the front of the pending
///   list; `st`: the caller's `kread` of the key hash, changed to what it will hold;
///   `set`: the caller's changes to the hash, written with the pump's own in one `HSET`;
///   `h`: the key hash's name, when the caller has it); `kpop` is its push, `klimits(q)`
///   the queue's key limits, parsed once a call; no helper makes a closure, since a
///   call of a keyed script may pump thousands of keys;
/// - `rnow()`: Redis's clock (ms); `ktoken(...)`: takes a token of the key's bucket or
///   parks the key;
/// - `kstart(q, uk, id)`: DEQUEUE took the key's head: one more running, next head;
/// - `kstop(q, uk)`: a task of the key stopped running (the caller pumps or leaves);
/// - `kdone(q, uk)`: a running task of the key left Redis (ack, dead): `kgone`, then
///   one running less and `kpump` if the key stays;
/// - `kto_head(q, k, id, prio, uk, now)`: a taken task is queued again to run next
///   (release, reap): [`lua_fns`]'s `to_head` for a task without key (`uk` nil), else
///   `kstop` and `kqueue` at the front of its backlog and of its pending list;
/// - `kunqueue(q, uk, id, prio)`: takes a queued task of the key out of its pending
///   list or backlog;
/// - `kdrop(q, k, id, state, prio, uk, zsets)`: takes a task that is not running out
///   of Redis (cancel, remove): out of its pending list or key backlog when queued, out
///   of the sorted sets `zsets`, its hash `k` deleted, its key (`uk`, or nil) left and
///   pumped.
macro_rules! key_fns {
    () => {
        r"
local KP = string.sub(ARGV[1], 1, -3)
local KBL, KBF = {[0] = 'kb0', 'kb1', 'kb2'}, {[0] = 'b0', 'b1', 'b2'}
local KQ
local function kq(p, l)
  KQ = {pend = {KEYS[p], KEYS[p + 1], KEYS[p + 2]}, lim = KEYS[l], act = KEYS[l + 1], nb = KEYS[l + 2], park = KEYS[l + 3], nbd = 0}
  return KQ
end
local function kname(kind, uk) return KP .. kind .. ':' .. uk end
local function kflush()
  local q = KQ
  if not q or q.nbd == 0 then return end
  local d = q.nbd
  q.nbd = 0
  if redis.call('INCRBY', q.nb, d) <= 0 then redis.call('DEL', q.nb) end
end
local function kread(h) return redis.call('HMGET', h, 'pend', 'run', 'tok', 'ts', 'b0', 'b1', 'b2') end
local function ksized(st) return st[5] or st[6] or st[7] end
local function kset(set, f, v)
  set[#set + 1] = f
  set[#set + 1] = v
end
local function rnow()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ktoken(q, uk, h, st, rate, burst)
  local now = rnow()
  burst = tonumber(burst) or math.max(1, math.ceil(rate))
  local ts = tonumber(st[4]) or now
  local tok = math.min(burst, (tonumber(st[3]) or burst) + math.max(0, now - ts) * rate / 1000)
  if tok < 1 then
    redis.call('ZADD', q.park, now + math.ceil((1 - tok) * 1000 / rate), uk)
    redis.call('HSET', h, 'tok', tostring(tok), 'ts', now)
    return false
  end
  redis.call('HSET', h, 'tok', tostring(tok - 1), 'ts', now)
  return true
end
local function kwrite(h, set)
  if #set > 0 then redis.call('HSET', h, unpack(set)) end
end
local function kcount(uk, st, set)
  for p = 0, 2 do
    st[5 + p] = redis.call('LLEN', kname(KBL[p], uk))
    kset(set, KBF[p], st[5 + p])
  end
end
local function klimits(q)
  if not q.limv then
    local lim = redis.call('HMGET', q.lim, 'key_conc', 'key_rate', 'key_burst')
    q.limv = {conc = tonumber(lim[1]), rate = tonumber(lim[2]), burst = lim[3]}
  end
  return q.limv
end
-- Pushes the key's next head (highest priority first) unless the key's limits hold it
-- back; true when it pushed or held, false when the backlog sizes say nothing waits.
local function kpop(q, uk, h, head, st, set, lim)
  for p = 0, 2 do
    local n = tonumber(st[5 + p]) or 0
    if n > 0 then
      if (lim.conc and (tonumber(st[2]) or 0) >= lim.conc) or (lim.rate and not ktoken(q, uk, h, st, lim.rate, lim.burst)) then
        q.held = (q.held or 0) + 1
        return true
      end
      local id = redis.call('LMOVE', kname(KBL[p], uk), q.pend[p + 1], 'RIGHT', head and 'RIGHT' or 'LEFT')
      if id then
        q.nbd = q.nbd - 1
        kset(set, 'pend', id)
        kset(set, KBF[p], n - 1)
        q.woke = true
        return true
      end
      -- The size was wrong: the list is empty.
      st[5 + p] = 0
      kset(set, KBF[p], 0)
    end
  end
  return false
end
local function kpump(q, uk, head, st, set, h)
  h = h or kname('kh', uk)
  st = st or kread(h)
  set = set or {}
  if st[1] and st[1] ~= '' then
    if redis.call('HGET', ARGV[1] .. st[1], 'state') == 'queued' then return kwrite(h, set) end
    -- The head no longer exists (Redis lost it): the key must not wait for it.
    kset(set, 'pend', '')
  end
  local counted = not ksized(st)
  -- No backlog sizes (a hash Redis lost, or none yet): read them from the lists.
  if counted then kcount(uk, st, set) end
  -- The limits hold for the whole call: read once.
  local lim = klimits(q)
  -- Sizes of 0 while the key holds more tasks than it runs may be wrong (a task pushed
  -- by a script that does not keep them, e.g. an older version's during an upgrade):
  -- read them from the lists. Its scheduled and waiting tasks cost that read too.
  if not kpop(q, uk, h, head, st, set, lim) and not counted and (tonumber(redis.call('ZSCORE', q.act, uk)) or 0) > (tonumber(st[2]) or 0) then
    kcount(uk, st, set)
    kpop(q, uk, h, head, st, set, lim)
  end
  kwrite(h, set)
end
local function kjoin(q, uk) redis.call('ZINCRBY', q.act, 1, uk) end
local function kgone(q, uk)
  if tonumber(redis.call('ZINCRBY', q.act, -1, uk)) > 0 then return false end
  redis.call('ZREM', q.act, uk)
  redis.call('ZREM', q.park, uk)
  redis.call('DEL', kname('kh', uk))
  return true
end
local function kleave(q, uk)
  if not kgone(q, uk) then kpump(q, uk) end
end
local function kqueue(q, uk, id, prio, front, head)
  local l = kname(KBL[prio], uk)
  if front then redis.call('RPUSH', l, id) else redis.call('LPUSH', l, id) end
  q.nbd = q.nbd + 1
  local h = kname('kh', uk)
  local st, set = kread(h), {}
  if ksized(st) then
    st[5 + prio] = (tonumber(st[5 + prio]) or 0) + 1
    kset(set, KBF[prio], st[5 + prio])
  end
  kpump(q, uk, head, st, set, h)
end
local function kstart(q, uk, id)
  local h = kname('kh', uk)
  local st, set = kread(h), {}
  if st[1] == id then
    st[1] = false
    kset(set, 'pend', '')
  end
  st[2] = (tonumber(st[2]) or 0) + 1
  kset(set, 'run', st[2])
  kpump(q, uk, nil, st, set, h)
end
local function kstop(q, uk)
  local h = kname('kh', uk)
  if redis.call('HINCRBY', h, 'run', -1) <= 0 then redis.call('HDEL', h, 'run') end
end
local function kto_head(q, k, id, prio, uk, now)
  if not uk then return to_head(k, id, q.pend[prio + 1], now) end
  redis.call('HSET', k, 'state', 'queued', 'qat', now)
  redis.call('HDEL', k, 'lease')
  kstop(q, uk)
  kqueue(q, uk, id, prio, true, true)
end
local function kdone(q, uk)
  if kgone(q, uk) then return end
  local h = kname('kh', uk)
  local st = kread(h)
  st[2] = math.max(0, (tonumber(st[2]) or 0) - 1)
  kpump(q, uk, nil, st, {'run', st[2]}, h)
end
local function kunqueue(q, uk, id, prio)
  local h = kname('kh', uk)
  if redis.call('HGET', h, 'pend') == id then
    redis.call('LREM', q.pend[prio + 1], 1, id)
    redis.call('HSET', h, 'pend', '')
  elseif redis.call('LREM', kname(KBL[prio], uk), 1, id) > 0 then
    q.nbd = q.nbd - 1
    -- The next pump reads the backlog sizes from the lists again.
    redis.call('HDEL', h, 'b0', 'b1', 'b2')
  end
end
local function kdrop(q, k, id, state, prio, uk, zsets)
  if state == 'queued' then
    if uk then kunqueue(q, uk, id, prio) else redis.call('LREM', q.pend[prio + 1], 1, id) end
  end
  for _, z in ipairs(zsets) do redis.call('ZREM', z, id) end
  redis.call('DEL', k)
  if uk then kleave(q, uk) end
end
"
    };
}
pub(crate) use key_fns;

/// Declares a script module's Lua, `LUA` (the pieces are concatenated: a prelude such
/// as [`lua_fns`] first), and `SCRIPT`, the [`Script`] that runs it.
macro_rules! script {
    ($($lua:expr),+ $(,)?) => {
        pub(crate) const LUA: &str = concat!($($lua),+);
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(LUA));
    };
}
pub(crate) use script;

/// Declares the Lua of a script that moves keyed tasks, like [`script`]: [`lua_fns`]
/// and [`key_fns`] in front of `body`. The body runs as a function, so that however it
/// returns, the change it made to the backlog counter is written once, after it
/// (`kflush`), instead of one `INCR`/`DECR` per task.
macro_rules! keyed_script {
    ($body:expr $(,)?) => {
        $crate::scripts::script!(
            $crate::scripts::lua_fns!(),
            $crate::scripts::key_fns!(),
            "local function main()\n",
            $body,
            "\nend\nlocal r = main()\nkflush()\nreturn r\n"
        );
    };
}
pub(crate) use keyed_script;

/// The queue keys the [`key_fns`] helpers need, in the order the scripts give them
/// after their own: the limits hash, the active keys, the backlog counter, the parked
/// keys.
pub(crate) fn key_keys(k: &crate::keys::QueueKeys) -> [String; 4] {
    [k.limits(), k.active_keys(), k.backlogged(), k.parked_keys()]
}

/// A script's KEYS, in the order its Lua indexes them, from groups of keys (each an
/// iterator of key names: an array of single keys, [`QueueKeys::pending_all`](crate::keys::QueueKeys::pending_all),
/// [`key_keys`], an optional key).
macro_rules! key_list {
    ($($group:expr),* $(,)?) => {{
        let mut keys: Vec<String> = Vec::new();
        $(keys.extend($group);)*
        keys
    }};
}
pub(crate) use key_list;

/// An invocation of `script` with `keys` (in the order the Lua indexes them); the caller
/// adds the arguments.
pub(crate) fn invocation<'a>(script: &'a Script, keys: &[String]) -> ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    inv
}

impl Broker {
    /// Runs a prepared script invocation on the shared connection.
    pub(crate) async fn run<T: FromRedisValue>(&self, inv: ScriptInvocation<'_>) -> Result<T> {
        let mut c = self.conn.clone();
        Ok(inv.invoke_async(&mut c).await?)
    }
}

/// The reply of the transition scripts (ack, fail, release): the new seq per task, or 0
/// where the lease was no longer held.
pub(crate) fn seqs(reply: Vec<i64>) -> Vec<Option<u64>> {
    reply
        .into_iter()
        .map(|s| u64::try_from(s).ok().filter(|s| *s > 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use taskq_core::QueueName;

    use super::*;
    use crate::keys::{Counter, QueueKeys};

    /// The highest `KEYS[n]` a script's Lua names, directly or through `kq(p, l)`
    /// (whose last key is `KEYS[l + 3]`).
    fn highest_key(lua: &str) -> usize {
        let number = |at: usize| -> Option<usize> {
            let digits: String = lua[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let direct = lua
            .match_indices("KEYS[")
            .filter_map(|(at, _)| number(at + 5));
        let through_kq = lua.match_indices("kq(").filter_map(|(at, _)| {
            let comma = lua[at..].find(", ")? + at;
            number(comma + 2).map(|l| l + 3)
        });
        direct.chain(through_kq).max().unwrap_or(0)
    }

    /// (`cancel_requested`, `flow_children` and `flow_link` are left out: their one key
    /// only routes the call to the queue's slot, and their Lua does not read it.)
    #[test]
    fn every_script_is_given_exactly_the_keys_its_lua_reads() {
        let q: QueueName = "q".parse().unwrap_or_default();
        let k = QueueKeys::new(&q);
        // `ack` with its optional counter key.
        let counted = Some(k.counter(Counter::Succeeded, 0));
        let scripts: [(&str, &str, usize); 18] = [
            ("key_recount", key_recount::LUA, key_recount::keys(&k).len()),
            (
                "flow_release",
                flow_release::LUA,
                flow_release::keys(&k).len(),
            ),
            ("flow_wait", flow_wait::LUA, flow_wait::keys(&k).len()),
            ("ack", ack::LUA, ack::keys(&k, counted).len()),
            ("cancel", cancel::LUA, cancel::keys(&k).len()),
            ("claim", claim::LUA, claim::keys(&k, "x").len()),
            (
                "dequeue",
                dequeue::LUA,
                dequeue::keys(&k, dequeue::CallId::new()).len(),
            ),
            ("enqueue", enqueue::LUA, enqueue::keys(&k).len()),
            ("extend", extend::LUA, extend::keys(&k).len()),
            ("fail", fail::LUA, fail::keys(&k, 0).len()),
            ("outbox_ack", outbox_ack::LUA, outbox_ack::keys(&k).len()),
            (
                "outbox_sweep",
                outbox_sweep::LUA,
                outbox_sweep::keys(&k).len(),
            ),
            ("present", present::LUA, present::keys(&k).len()),
            ("promote", promote::LUA, promote::keys(&k).len()),
            ("reap", reap::LUA, reap::keys(&k).len()),
            ("release", release::LUA, release::keys(&k).len()),
            ("remove", remove::LUA, remove::keys(&k).len()),
            (
                "settle_claim",
                settle_claim::LUA,
                settle_claim::keys(&k, "x").len(),
            ),
        ];
        for (name, lua, given) in scripts {
            assert_eq!(highest_key(lua), given, "{name}");
        }
    }
}
