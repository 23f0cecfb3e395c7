//! SETTLE_CLAIM: changes an idempotency claim only while the given task holds it: keeps
//! it for a new lifetime, or drops it (the `Settle` argument).
//!
//! ```text
//! KEYS[1] -> taskq:{<queue>}:idem:<key>
//! ARGV    -> task id, `keep` | `drop`, lifetime (ms; read by `keep` only)
//! reply   -> 1 when the claim was this task's, else 0
//! ```

use std::time::Duration;

use taskq_core::{QueueName, TaskId};

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

script!(
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'drop' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"
);

/// What to do with a claim its task holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    /// Keep it for this long from now.
    Keep(Duration),
    /// Remove it.
    Drop,
}

impl Settle {
    /// The script's arguments after the task id: the action and the lifetime in ms.
    fn args(self) -> (&'static str, u64) {
        match self {
            Settle::Keep(ttl) => ("keep", crate::millis(ttl)),
            // The lifetime is not read.
            Settle::Drop => ("drop", 0),
        }
    }
}

impl Broker {
    /// Keeps `id`'s claim on `key` for `ttl` from now; false when `id` does not hold it.
    pub async fn keep_idempotency_claim(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
        ttl: Duration,
    ) -> Result<bool> {
        self.settle_claim(queue, key, id, Settle::Keep(ttl)).await
    }

    /// Gives up `id`'s claim on `key` (its submit failed); false when `id` does not hold it.
    pub async fn drop_idempotency_claim(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
    ) -> Result<bool> {
        self.settle_claim(queue, key, id, Settle::Drop).await
    }

    async fn settle_claim(
        &self,
        queue: &QueueName,
        key: &str,
        id: TaskId,
        how: Settle,
    ) -> Result<bool> {
        let (action, ttl_ms) = how.args();
        let mut inv = invocation(&SCRIPT, &keys(&QueueKeys::new(queue), key));
        inv.arg(id.to_string()).arg(action).arg(ttl_ms);
        let held: i64 = self.run(inv).await?;
        Ok(held == 1)
    }
}

/// The KEYS of [`LUA`], in the order of the table above: the claim on `key`.
pub(crate) fn keys(k: &QueueKeys, key: &str) -> [String; 1] {
    [k.idempotency(key)]
}
