//! FLOW_CHILDREN: the dependents of finished tasks of one queue (see [`crate::flow`]):
//! `read` returns each task's dependents set; `forget` takes out of the sets the members
//! that were read and told (a member linked after the read stays, so the next settle of
//! that task tells it).
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:epoch (routes the call to the queue's slot; not read)
//! ARGV[1]    -> dependents set prefix
//! ARGV[2]    -> `read`, then task ids;
//!               or `forget`, then pairs: task id, member
//! reply      -> `read`: per task, its dependents' members `<queue> <id>` (empty: none)
//! ```

use taskq_core::{QueueName, TaskId};

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

script!(
    r"
local out = {}
if ARGV[2] == 'forget' then
  for i = 3, #ARGV, 2 do redis.call('SREM', ARGV[1] .. ARGV[i], ARGV[i + 1]) end
else
  local sets = {}
  for i = 3, #ARGV, 1 do sets[#sets + 1] = ARGV[1] .. ARGV[i] end
  -- Most finished tasks have no dependents: one EXISTS per thousand tasks finds that.
  local any = 0
  for i = 1, #sets, 1000 do
    any = any + redis.call('EXISTS', unpack(sets, i, math.min(i + 999, #sets)))
    if any > 0 then break end
  end
  for i, set in ipairs(sets) do
    out[i] = any > 0 and redis.call('SMEMBERS', set) or {}
  end
end
return out
"
);

impl Broker {
    /// Per task of `ids` (tasks of `queue`) in order, the members of its dependents set.
    pub async fn flow_children(
        &self,
        queue: &QueueName,
        ids: &[TaskId],
    ) -> Result<Vec<Vec<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.dependents_prefix()).arg("read");
        for id in ids {
            inv.arg(id.to_string());
        }
        self.run(inv).await
    }

    /// Takes the given members (as [`Broker::flow_children`] read them) out of the
    /// dependents sets of tasks of `queue`.
    pub async fn flow_forget(&self, queue: &QueueName, told: &[(TaskId, &str)]) -> Result<()> {
        if told.is_empty() {
            return Ok(());
        }
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.dependents_prefix()).arg("forget");
        for (id, member) in told {
            inv.arg(id.to_string()).arg(*member);
        }
        let _: Vec<String> = self.run(inv).await?;
        Ok(())
    }
}

/// The KEYS of [`LUA`].
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.epoch()]
}
