//! CLAIM: claims an idempotency key for a task, unless another task holds it.
//!
//! ```text
//! KEYS[1] -> taskq:{<queue>}:idem:<key>
//! ARGV    -> task id, claim lifetime (ms)
//! reply   -> the holder's id, or nil when the claim is now this task's
//! ```

use std::time::Duration;

use taskq_core::{QueueName, TaskId};

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::{Broker, BrokerError, Result};

script!(
    r"
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"
);

fn parse(holder: Option<String>) -> Result<Option<TaskId>> {
    holder
        .map(|s| {
            s.parse()
                .map_err(|e| BrokerError::Protocol(format!("idempotency claim {s:?}: {e}")))
        })
        .transpose()
}

impl Broker {
    /// Claims idempotency key `key` of `queue` for task `id` for `hold` (long enough to
    /// write the task; [`Broker::keep_idempotency_claim`] then extends it to the retention
    /// window). Exactly one of any number of concurrent claims wins, on any api replica.
    /// Returns `None` when `id` now holds the key, or the id of the task that holds it.
    pub async fn claim_idempotency_key(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
        hold: Duration,
    ) -> Result<Option<TaskId>> {
        let mut inv = invocation(&SCRIPT, &keys(&QueueKeys::new(queue), key));
        inv.arg(id.to_string()).arg(crate::millis(hold));
        parse(self.run(inv).await?)
    }
}

/// The KEYS of [`LUA`], in the order of the table above: the claim on `key`.
pub(crate) fn keys(k: &QueueKeys, key: &str) -> [String; 1] {
    [k.idempotency(key)]
}
