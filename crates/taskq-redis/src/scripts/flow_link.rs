//! FLOW_LINK: records dependents of tasks of one queue: member `<queue> <id>` of the
//! dependency's dependents set (see [`crate::flow`]). Idempotent.
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:epoch (routes the call to the queue's slot; not read)
//! ARGV[1]    -> dependents set prefix
//! then per link, 2 values: dependency id, dependent member `<queue> <id>`
//! reply      -> the number of links given
//! ```

use taskq_core::QueueName;

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

script!(
    r"
local n = 0
for i = 2, #ARGV, 2 do
  redis.call('SADD', ARGV[1] .. ARGV[i], ARGV[i + 1])
  n = n + 1
end
return n
"
);

impl Broker {
    /// Adds `links` (dependency id of `queue`, dependent member) to the dependents sets.
    pub async fn flow_link(&self, queue: &QueueName, links: &[(String, String)]) -> Result<()> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.dependents_prefix());
        for (dep, member) in links {
            inv.arg(dep).arg(member);
        }
        let _: i64 = self.run(inv).await?;
        Ok(())
    }
}

/// The KEYS of [`LUA`].
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.epoch()]
}
