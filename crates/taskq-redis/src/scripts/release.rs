//! RELEASE: gives leased tasks back without counting the attempt (graceful shutdown).
//! They go to the head of their pending list so they run next (a task with a key: to the
//! front of its key's backlog, and from there to the head of its pending list when its
//! key allows, see the `key_fns` of [`scripts`](super)); the `queued` updates go to the outbox.
//!
//! ```text
//! KEYS[1..3] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[4]    -> taskq:{<queue>}:lease
//! KEYS[5]    -> taskq:{<queue>}:wake
//! KEYS[6]    -> taskq:{<queue>}:outbox
//! KEYS[7]    -> taskq:{<queue>}:limits
//! KEYS[8]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[9]    -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[10]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV       -> task hash prefix, now (ms), worker id, then per task: id, lease token
//! reply      -> per task, the new seq, or 0 when the lease was no longer held
//! ```

use taskq_core::{QueueName, TaskId};

use super::{invocation, key_keys, key_list, keyed_script, seqs};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

keyed_script!(
    r"
local q = kq(1, 7)
local ent = ob_new(ARGV[2], ARGV[3])
local out = each_task(4, 2, function(i, id, k)
  local seq, attempts, uk, prio = unlease(k, id, ARGV[i + 1], KEYS[4])
  if not seq then return nil end
  attempts = tonumber(attempts) - 1
  redis.call('HSET', k, 'seq', seq, 'attempts', attempts)
  ob_add(ent, id, seq, 'queued', attempts, '')
  kto_head(q, k, id, prio, uk, ARGV[2])
  return seq
end)
ob_flush(KEYS[6], ent)
if #ent > 4 then wake(KEYS[5]) end
return out
"
);

impl Broker {
    /// Gives leased tasks of `worker` back to the head of their queue without counting
    /// the attempt.
    pub async fn release(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str)],
    ) -> Result<Vec<Option<u64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix())
            .arg(taskq_core::now_ms())
            .arg(worker);
        for (id, token) in items {
            inv.arg(id.to_string()).arg(*token);
        }
        Ok(seqs(self.run(inv).await?))
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![
        k.pending_all(),
        [k.lease(), k.wake(), k.outbox()],
        key_keys(k)
    ]
}
