//! KEY_RECOUNT: sets every active key's running count to the number of its tasks that
//! are running in Redis (leased, hash present, state `running`), has its backlog sizes
//! read again from its lists, then pumps it. Recovery (`POST /v1/admin/recover`) runs
//! it after Redis lost part of its data: a running task whose hash was lost never stops
//! in its key, and with `max_running_per_key` its key's next task would wait for it for
//! ever.
//!
//! One call reads the whole lease set and every active key of the queue: meant for the
//! rare recovery, not for a hot path.
//!
//! ```text
//! KEYS[1..3] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[4]    -> taskq:{<queue>}:wake
//! KEYS[5]    -> taskq:{<queue>}:limits
//! KEYS[6]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[7]    -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[8]    -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! KEYS[9]    -> taskq:{<queue>}:lease
//! ARGV[1]    -> task hash prefix
//! reply      -> how many keys' counts were wrong
//! ```

use taskq_core::QueueName;

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

keyed_script!(
    r"
local q = kq(1, 5)
local running = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[9], 0, -1)) do
  local vals = redis.call('HMGET', ARGV[1] .. id, 'state', 'key')
  if vals[1] == 'running' and vals[2] then
    running[vals[2]] = (running[vals[2]] or 0) + 1
  end
end
local fixed = 0
for _, uk in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  local h = kname('kh', uk)
  local want = running[uk] or 0
  if (tonumber(redis.call('HGET', h, 'run')) or 0) ~= want then
    redis.call('HSET', h, 'run', want)
    fixed = fixed + 1
  end
  -- The pump reads the backlog sizes from the lists again.
  redis.call('HDEL', h, 'b0', 'b1', 'b2')
  kpump(q, uk)
end
if q.woke then wake(KEYS[4]) end
return fixed
"
);

impl Broker {
    /// Corrects the running count of every active key of `queue` (see the module
    /// documentation). Returns how many keys were wrong.
    pub async fn key_recount(&self, queue: &QueueName) -> Result<u64> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix());
        self.run(inv).await
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![k.pending_all(), [k.wake()], key_keys(k), [k.lease()]]
}
