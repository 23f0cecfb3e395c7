//! PRESENT: which of the given tasks Redis holds (their hash exists, whatever their
//! state), and since when Redis has known the queue (its epoch, set to now if absent):
//! one atomic look.
//!
//! ```text
//! KEYS[1] -> taskq:{<queue>}:epoch
//! ARGV    -> task hash prefix, now (ms), then ids
//! reply   -> the epoch (ms), then 1 or 0 per id
//! ```

use taskq_core::{QueueName, TaskId};

use super::{invocation, script};
use crate::keys::QueueKeys;
use crate::{Broker, BrokerError, Result};

script!(
    r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[2])
  epoch = ARGV[2]
end
local out = {tonumber(epoch)}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('EXISTS', ARGV[1] .. ARGV[i])
end
return out
"
);

fn parse(reply: &[i64]) -> Result<(i64, Vec<bool>)> {
    let Some((epoch, flags)) = reply.split_first() else {
        return Err(BrokerError::Protocol("empty PRESENT reply".into()));
    };
    Ok((*epoch, flags.iter().map(|f| *f == 1).collect()))
}

impl Broker {
    /// Which of `ids` (tasks of `queue`) Redis holds, in whatever state, and the queue's
    /// epoch in ms (see [`QueueKeys::epoch`]; set to now if absent): one atomic look.
    pub async fn present(&self, queue: &QueueName, ids: &[TaskId]) -> Result<(i64, Vec<bool>)> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix()).arg(taskq_core::now_ms());
        for id in ids {
            inv.arg(id.to_string());
        }
        let reply: Vec<i64> = self.run(inv).await?;
        parse(&reply)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.epoch()]
}
