//! CANCEL: cancels a task that has not finished. A waiting task (queued, scheduled or
//! retrying) leaves Redis at once; a running one is flagged (its hash's `cancel` field),
//! and its worker stops the handler and finishes it as cancelled. A waiting task's
//! `cancelled` update goes to the outbox in the same step, so its record follows even
//! if the caller never writes it (the api writes it too, to answer with it). A waiting
//! task with a key leaves its key's pending slot or backlog, and the key's next task
//! may become runnable (see the `key_fns` of [`scripts`](super)).
//!
//! Given a `seq` for an absent task ([`Broker::cancel_absent`]), a task Redis does not
//! hold is cancelled at that `seq` there too: a short-lived hash in state `cancelled`
//! (a tombstone) makes every enqueue of the id still on its way (a submit, a retry, a
//! recovery whose MongoDB write came first) skip it, since ENQUEUE adds no task whose
//! hash exists, and its `cancelled` update goes to the outbox. The task can then never
//! run at a `seq` the cancel used, nor at any lower one.
//!
//! ```text
//! KEYS[1..3] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[4]    -> taskq:{<queue>}:scheduled
//! KEYS[5]    -> taskq:{<queue>}:retry
//! KEYS[6]    -> taskq:{<queue>}:outbox
//! KEYS[7]    -> taskq:{<queue>}:wake
//! KEYS[8]    -> taskq:{<queue>}:limits
//! KEYS[9]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[10]   -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[11]   -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! ARGV       -> task hash prefix, id, now (ms), then for an absent task: seq ('' =
//!               leave it absent), attempts, the tombstone's time to live (ms)
//! reply      -> {0} not in Redis, {1, seq, attempts} cancelled, {2, 0} running and flagged
//! ```

use taskq_core::{QueueName, TaskId};

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

keyed_script!(
    r"
local q = kq(1, 8)
local id = ARGV[2]
local k = ARGV[1] .. id
local vals = redis.call('HMGET', k, 'state', 'prio', 'attempts', 'key')
if not vals[1] then
  if ARGV[4] == '' then return {0} end
  redis.call('HSET', k, 'state', 'cancelled', 'seq', ARGV[4], 'attempts', ARGV[5])
  redis.call('PEXPIRE', k, ARGV[6])
  local ent = ob_new(ARGV[3], '')
  ob_add(ent, id, ARGV[4], 'cancelled', ARGV[5], '')
  ob_flush(KEYS[6], ent)
  return {1, tonumber(ARGV[4]), tonumber(ARGV[5])}
end
if vals[1] == 'running' then
  redis.call('HSET', k, 'cancel', '1')
  return {2, 0}
end
local seq = redis.call('HINCRBY', k, 'seq', 1)
kdrop(q, k, id, vals[1], tonumber(vals[2]), vals[4], {KEYS[4], KEYS[5]})
if q.woke then wake(KEYS[7]) end
local attempts = tonumber(vals[3]) or 0
local ent = ob_new(ARGV[3], '')
ob_add(ent, id, seq, 'cancelled', attempts, '')
ob_flush(KEYS[6], ent)
return {1, seq, attempts}
",
);

/// What [`Broker::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was waiting and left Redis; its transition counter is now `seq`, and
    /// its `cancelled` update (with `attempts`) is in the queue's outbox.
    Cancelled { seq: u64, attempts: u32 },
    /// The task is running; its worker was asked to stop it.
    Signalled,
    /// Redis does not hold the task: it finished (its final update may still be in the
    /// outbox), Redis lost it, or an enqueue of it is still on its way.
    NotFound,
}

fn parse(reply: &[i64]) -> CancelOutcome {
    match reply {
        [1, seq, attempts] => CancelOutcome::Cancelled {
            seq: *seq as u64,
            attempts: u32::try_from(*attempts).unwrap_or(0),
        },
        [2, _] => CancelOutcome::Signalled,
        _ => CancelOutcome::NotFound,
    }
}

impl Broker {
    /// Cancels a task: a waiting one leaves Redis, a running one is flagged for its
    /// worker (see the module documentation).
    pub async fn cancel(&self, queue: &QueueName, id: TaskId) -> Result<CancelOutcome> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix())
            .arg(id.to_string())
            .arg(taskq_core::now_ms())
            .arg("");
        let reply: Vec<i64> = self.run(inv).await?;
        Ok(parse(&reply))
    }

    /// Cancels a task as [`Broker::cancel`] does; a task Redis does not hold is cancelled
    /// at `seq` with `attempts`: its `cancelled` update goes to the outbox and a tombstone
    /// kept for `tombstone` makes every enqueue of the id skip it (see the module
    /// documentation). Never answers [`CancelOutcome::NotFound`].
    pub async fn cancel_absent(
        &self,
        queue: &QueueName,
        id: TaskId,
        seq: u64,
        attempts: u32,
        tombstone: std::time::Duration,
    ) -> Result<CancelOutcome> {
        let k = QueueKeys::new(queue);
        let mut inv = invocation(&SCRIPT, &keys(&k));
        inv.arg(k.task_prefix())
            .arg(id.to_string())
            .arg(taskq_core::now_ms())
            .arg(seq)
            .arg(attempts)
            .arg(
                u64::try_from(tombstone.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        let reply: Vec<i64> = self.run(inv).await?;
        Ok(parse(&reply))
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![
        k.pending_all(),
        [k.scheduled(), k.retry(), k.outbox(), k.wake()],
        key_keys(k),
    ]
}
