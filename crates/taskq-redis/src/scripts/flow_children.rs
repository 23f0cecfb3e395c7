//! FLOW_CHILDREN: the dependents of finished tasks of one queue (see [`crate::flow`]),
//! read, or with `forget` read and deleted (once every dependent was told).
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:epoch (routes the call to the queue's slot; not read)
//! ARGV[1]    -> dependents set prefix
//! ARGV[2]    -> `read` or `forget`
//! ARGV[3..]  -> task ids
//! reply      -> per task, its dependents' members `<queue> <id>` (empty: none)
//! ```

use taskq_core::{QueueName, TaskId};

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

script!(
    r"
local out = {}
for i = 3, #ARGV, 1 do
  local key = ARGV[1] .. ARGV[i]
  out[#out + 1] = redis.call('SMEMBERS', key)
  if ARGV[2] == 'forget' then redis.call('DEL', key) end
end
return out
"
);

impl Broker {
    /// Per task of `ids` (tasks of `queue`) in order, the members of its dependents set;
    /// with `forget` the sets are deleted too.
    pub async fn flow_children(
        &self,
        queue: &QueueName,
        ids: &[TaskId],
        forget: bool,
    ) -> Result<Vec<Vec<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.dependents_prefix())
            .arg(if forget { "forget" } else { "read" });
        for id in ids {
            inv.arg(id.to_string());
        }
        self.run(inv).await
    }
}

/// The KEYS of [`LUA`].
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.epoch()]
}
