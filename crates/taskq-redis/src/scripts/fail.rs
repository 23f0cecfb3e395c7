//! FAIL: fails attempts whose lease the worker still holds: each task either waits in
//! the retry set until its due time (`retrying`) or dies and leaves Redis (`dead`; its
//! record in the store is the dead letter). A task a user asked to cancel while it ran
//! (its hash's `cancel` field, set by [`super::cancel`]) is neither retried nor dead: it
//! ends `cancelled` the way ACK ends a cancelled attempt (it leaves Redis, with no error
//! and uncounted), so a cancel the worker had not noticed yet holds whatever the handler
//! returned, as one it noticed does. The
//! updates go to the outbox, and the failures that are not cancellations are counted in
//! the current second's counter (see [`Counter`]). A task with a key frees its running
//! slot in the key either way, so the key's next task may run (see the `key_fns` of
//! [`scripts`](super)); a retry returns to the front of its key's backlog when due
//! (PROMOTE).
//!
//! ```text
//! KEYS[1]    -> taskq:{<queue>}:lease
//! KEYS[2]    -> taskq:{<queue>}:retry
//! KEYS[3]    -> taskq:{<queue>}:stats:err:<second>
//! KEYS[4]    -> taskq:{<queue>}:outbox
//! KEYS[5]    -> taskq:{<queue>}:wake
//! KEYS[6..8] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[9]    -> taskq:{<queue>}:limits
//! KEYS[10]   -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[11]   -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[12]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV    -> task hash prefix, now (ms), worker id,
//!            then per task: id, lease token, due (ms; -1: dead), extras
//! reply   -> per task, the new seq (negated when the task ended cancelled instead of
//!            retried or dead), or 0 when the lease was no longer held
//! ```

use taskq_core::{QueueName, TaskId};

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::{Counter, QueueKeys};
use crate::{Broker, Result, outbox};

keyed_script!(
    r"
local q = kq(6, 9)
local ent = ob_new(ARGV[2], ARGV[3])
local failed = 0
local out = each_task(4, 4, function(i, id, k)
  local seq, attempts, uk = unlease(k, id, ARGV[i + 1], KEYS[1])
  if not seq then return nil end
  local due = tonumber(ARGV[i + 2])
  local cancelled = redis.call('HGET', k, 'cancel') == '1'
  if due < 0 or cancelled then
    redis.call('DEL', k)
    if uk then kdone(q, uk) end
    if cancelled then
      ob_add(ent, id, seq, 'cancelled', attempts, '')
      return -seq
    end
    ob_add(ent, id, seq, 'dead', attempts, ARGV[i + 3])
    failed = failed + 1
    return seq
  end
  if uk then
    kstop(q, uk)
    kpump(q, uk)
  end
  redis.call('HSET', k, 'state', 'retrying', 'seq', seq)
  redis.call('HDEL', k, 'lease')
  redis.call('ZADD', KEYS[2], due, id)
  ob_add(ent, id, seq, 'retrying', attempts, ARGV[i + 3])
  failed = failed + 1
  return seq
end)
ob_flush(KEYS[4], ent)
count(KEYS[3], failed)
if q.woke then wake(KEYS[5]) end
return out
",
);

/// What [`Broker::fail_ends`] did with one attempt whose lease was still held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    /// The task's new transition counter.
    pub seq: u64,
    /// The task had been asked to cancel: it ended `cancelled` instead of `retrying` or
    /// `dead`.
    pub cancelled: bool,
}

/// The script's reply: per task, the seq (negated for a cancellation), or 0.
fn parse(reply: Vec<i64>) -> Vec<Option<Failed>> {
    reply
        .into_iter()
        .map(|s| {
            (s != 0).then(|| Failed {
                seq: s.unsigned_abs(),
                cancelled: s < 0,
            })
        })
        .collect()
}

/// How a failed attempt ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// Retry at this time (ms since the epoch).
    RetryAt(i64),
    /// No more attempts.
    Dead,
}

impl FailOutcome {
    /// The script's `due` argument: the retry time (never negative), or -1 for dead.
    fn due_arg(self) -> i64 {
        match self {
            FailOutcome::RetryAt(ms) => ms.max(0),
            FailOutcome::Dead => -1,
        }
    }

    /// The retry time recorded in the outbox update.
    fn due(self) -> Option<i64> {
        match self {
            FailOutcome::RetryAt(ms) => Some(ms.max(0)),
            FailOutcome::Dead => None,
        }
    }
}

impl Broker {
    /// Fails attempts of `worker`, each with its error: each is retried at its time or
    /// dies (a retry of a task asked to cancel ends it cancelled, see
    /// [`Broker::fail_ends`]). Returns the new seq per item, or `None` where the lease
    /// was no longer held.
    pub async fn fail(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str, FailOutcome, &str)],
    ) -> Result<Vec<Option<u64>>> {
        let ends = self.fail_ends(queue, worker, items).await?;
        Ok(ends.into_iter().map(|e| e.map(|f| f.seq)).collect())
    }

    /// [`Broker::fail`], saying per item whether the task ended `cancelled` instead of
    /// `retrying` or `dead` (see the module documentation); `None` where the lease was no
    /// longer held.
    pub async fn fail_ends(
        &self,
        queue: &QueueName,
        worker: &str,
        items: &[(TaskId, &str, FailOutcome, &str)],
    ) -> Result<Vec<Option<Failed>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let k = QueueKeys::new(queue);
        let now = taskq_core::now_ms();
        let mut inv = invocation(&SCRIPT, &keys(&k, now));
        inv.arg(k.task_prefix()).arg(now).arg(worker);
        for (id, token, outcome, error) in items {
            let extras = outbox::extras(Some(error), None, outcome.due());
            inv.arg(id.to_string())
                .arg(*token)
                .arg(outcome.due_arg())
                .arg(extras);
        }
        Ok(parse(self.run(inv).await?))
    }
}

/// The KEYS of [`LUA`], in the order of the table above, for a call at `now_ms` (which
/// picks the counter's second).
pub(crate) fn keys(k: &QueueKeys, now_ms: i64) -> Vec<String> {
    key_list![
        [
            k.lease(),
            k.retry(),
            k.counter(Counter::Failed, now_ms),
            k.outbox(),
            k.wake()
        ],
        k.pending_all(),
        key_keys(k),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_seq_is_a_cancellation() {
        assert_eq!(
            parse(vec![4, 0, -7]),
            vec![
                Some(Failed {
                    seq: 4,
                    cancelled: false
                }),
                None,
                Some(Failed {
                    seq: 7,
                    cancelled: true
                }),
            ]
        );
    }

    #[test]
    fn a_retry_time_is_never_the_dead_marker() {
        assert_eq!(FailOutcome::RetryAt(-5).due_arg(), 0);
        assert_eq!(FailOutcome::RetryAt(-5).due(), Some(0));
        assert_eq!(FailOutcome::RetryAt(7).due_arg(), 7);
        assert_eq!(FailOutcome::Dead.due_arg(), -1);
        assert_eq!(FailOutcome::Dead.due(), None);
    }
}
