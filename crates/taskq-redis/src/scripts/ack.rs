//! ACK: completes attempts whose lease the worker still holds: the task leaves Redis,
//! and its final update (`succeeded` or `cancelled`) goes to the outbox. Successes are
//! counted in the current second's counter (see [`Counter`]); cancellations are not
//! counted (the call passes no counter key). A task with a key frees its running slot in
//! the key, whose next task may become runnable (see the `key_fns` of [`scripts`](super)).
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:lease
//! KEYS[2]    -> taskq:{<queue>}:outbox
//! KEYS[3]    -> taskq:{<queue>}:wake
//! KEYS[4..6] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[7]    -> taskq:{<queue>}:limits
//! KEYS[8]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[9]    -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[10]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! KEYS[11]   -> taskq:{<queue>}:stats:ok:<second>   (optional: absent, nothing is counted)
//! ARGV    -> task hash prefix, now (ms), worker id, final status,
//!            then per task: id, lease token, extras
//! reply   -> per task, the new seq, or 0 when the lease was no longer held
//! ```

use taskq_core::{QueueName, TaskId, TaskStatus};

use super::{invocation, key_keys, key_list, keyed_script, seqs};
use crate::keys::{Counter, QueueKeys};
use crate::{Broker, BrokerError, Result, outbox};

keyed_script!(
    r"
local q = kq(4, 7)
local ent = ob_new(ARGV[2], ARGV[3])
local out = each_task(5, 3, function(i, id, k)
  local seq, attempts, uk = unlease(k, id, ARGV[i + 1], KEYS[1])
  if seq then
    redis.call('DEL', k)
    if uk then kdone(q, uk) end
    ob_add(ent, id, seq, ARGV[4], attempts, ARGV[i + 2])
  end
  return seq
end)
ob_flush(KEYS[2], ent, KEYS[11])
if q.woke then wake(KEYS[3]) end
return out
",
);

/// How the acknowledged attempts end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    /// The handler succeeded; counted in the queue's per-second `ok` counter.
    Succeeded,
    /// The task was cancelled while running; not counted.
    Cancelled,
}

impl Final {
    fn status(self) -> TaskStatus {
        match self {
            Final::Succeeded => TaskStatus::Succeeded,
            Final::Cancelled => TaskStatus::Cancelled,
        }
    }

    fn counter(self) -> Option<Counter> {
        match self {
            Final::Succeeded => Some(Counter::Succeeded),
            Final::Cancelled => None,
        }
    }
}

impl Broker {
    /// Completes attempts as `succeeded` (with their results) by `worker`. Returns the
    /// new seq per item, or `None` where the lease was no longer held (the attempt's
    /// outcome is then discarded).
    pub async fn ack(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str, Option<&serde_json::Value>)],
    ) -> Result<Vec<Option<u64>>> {
        let items = items
            .iter()
            .map(|(id, token, result)| {
                let result = result
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| BrokerError::Protocol(format!("task result: {e}")))?;
                Ok((*id, *token, outbox::extras(None, result.as_deref(), None)))
            })
            .collect::<Result<Vec<_>>>()?;
        self.finish(queue, worker, &items, Final::Succeeded).await
    }

    /// Ends attempts whose task was cancelled while running: like [`Broker::ack`], as
    /// `cancelled`, and not counted as finished attempts.
    pub async fn ack_cancelled(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str)],
    ) -> Result<Vec<Option<u64>>> {
        let items: Vec<_> = items
            .iter()
            .map(|(id, token)| (*id, *token, String::new()))
            .collect();
        self.finish(queue, worker, &items, Final::Cancelled).await
    }

    async fn finish(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str, String)],
        how: Final,
    ) -> Result<Vec<Option<u64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let k = QueueKeys::new(queue);
        let now = taskq_core::now_ms();
        let counter = how.counter().map(|c| k.counter(c, now));
        let mut inv = invocation(&SCRIPT, &keys(&k, counter));
        inv.arg(k.task_prefix())
            .arg(now)
            .arg(worker)
            .arg(how.status().as_str());
        for (id, token, extras) in items {
            inv.arg(id.to_string()).arg(*token).arg(extras);
        }
        Ok(seqs(self.run(inv).await?))
    }
}

/// The KEYS of [`LUA`], in the order of the table above; `counter` is the optional
/// last.
pub(crate) fn keys(k: &QueueKeys, counter: Option<String>) -> Vec<String> {
    key_list![
        [k.lease(), k.outbox(), k.wake()],
        k.pending_all(),
        key_keys(k),
        counter
    ]
}
