//! OUTBOX_SWEEP: removes the consumers of the outbox group that hold no pending entry
//! and have not read for `idle` ms (writers of workers that stopped). A consumer that
//! holds entries is kept until another writer claimed them, so no entry is ever dropped
//! from the pending list.
//!
//! ```text
//! KEYS[1] -> taskq:{<queue>}:outbox
//! ARGV    -> consumer group, idle (ms)
//! reply   -> how many consumers were removed
//! ```

use std::time::Duration;

use taskq_core::QueueName;

use super::{invocation, script};
use crate::keys::{OUTBOX_GROUP, QueueKeys};
use crate::{Broker, Result};

script!(
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
"
);

impl Broker {
    /// Removes the writers of `queue`'s outbox that hold no entry and have not read for
    /// `idle` (see the module documentation). Returns how many were removed.
    pub async fn outbox_sweep(&self, queue: &QueueName, idle: Duration) -> Result<u64> {
        let mut inv = invocation(&SCRIPT, &keys(&QueueKeys::new(queue)));
        inv.arg(OUTBOX_GROUP).arg(crate::millis(idle));
        self.run(inv).await
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.outbox()]
}
