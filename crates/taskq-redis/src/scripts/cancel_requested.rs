//! CANCEL_REQUESTED: which of the given running tasks have been asked to cancel (their
//! hash's `cancel` field, set by [`super::cancel`]).
//!
//! ```text
//! KEYS[1] -> taskq:{<queue>}:lease   (not read: routes the call to the queue's slot)
//! ARGV    -> task hash prefix, then ids
//! reply   -> the flagged ids
//! ```

use taskq_core::{QueueName, TaskId};

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::reply::task_ids;
use crate::{Broker, Result};

script!(
    r"
local out = {}
for i = 2, #ARGV do
  if redis.call('HGET', ARGV[1] .. ARGV[i], 'cancel') == '1' then
    out[#out + 1] = ARGV[i]
  end
end
return out
"
);

impl Broker {
    /// Which of `running` (tasks of `queue`) have been asked to cancel.
    pub async fn cancel_requested(
        &self,
        queue: &QueueName,
        running: &[TaskId],
    ) -> Result<Vec<TaskId>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix());
        for id in running {
            inv.arg(id.to_string());
        }
        task_ids(self.run(inv).await?)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.lease()]
}
