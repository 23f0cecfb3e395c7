//! EXTEND: extends the leases still held by the given attempts.
//!
//! ```text
//! KEYS[1] -> taskq:{<queue>}:lease
//! ARGV    -> task hash prefix, new deadline (ms), then per task: id, lease token
//! reply   -> the ids whose lease is no longer held by that token
//! ```

use std::time::Duration;

use taskq_core::{QueueName, TaskId};

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::reply::task_ids;
use crate::{Broker, Result};

script!(
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
"
);

impl Broker {
    /// Extends the leases of running attempts to `now + lease`. Returns the tasks whose
    /// lease this worker no longer holds (it expired and was reaped).
    pub async fn extend(
        &self,
        queue: &QueueName,
        held: &[(TaskId, String)],
        lease: Duration,
    ) -> Result<Vec<TaskId>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix()).arg(crate::deadline(lease));
        for (id, token) in held {
            inv.arg(id.to_string()).arg(token);
        }
        task_ids(self.run(inv).await?)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.lease()]
}
