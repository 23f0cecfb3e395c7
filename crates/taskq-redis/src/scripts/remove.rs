//! REMOVE: takes tasks out of Redis, without an outbox entry: undoes an enqueue whose
//! outcome is unknown (an error or a lost reply) when a submit or a retry fails; both
//! enqueue their tasks with 0 attempts. A task a worker has already taken (`running`, or
//! any state with an attempt counted: waiting for a retry after an attempt failed) is
//! left alone and reported: the enqueue did land, the task is under way, and its own
//! status updates will say so. A task that
//! is absent either never arrived or already ran to its end; while the queue's outbox
//! holds updates not yet applied to MongoDB, it is reported as one of those two (the
//! caller must not treat its record as never enqueued). The hashes of the others go, and
//! the ids leave the scheduled, retry and lease sets and (without a key) the pending
//! lists; a task with a key is also taken
//! out of its key (pending slot or backlog, running count, active keys), so the key's
//! next task is not held back by a task that no longer exists. A flow task's set of unmet
//! dependencies and its own set of dependents go with it; the member naming it in the
//! dependents set of a dependency in another queue (a flow that depends on an existing
//! task) stays until that dependency finishes and its settle takes it out (releasing a task
//! that is gone does nothing).
//!
//! ```text
//! KEYS[1..3] -> taskq:{<queue>}:pending:{high,normal,low}
//! KEYS[4]    -> taskq:{<queue>}:wake
//! KEYS[5]    -> taskq:{<queue>}:limits
//! KEYS[6]    -> taskq:{<queue>}:keys     (active task keys)
//! KEYS[7]    -> taskq:{<queue>}:keyed    (tasks in key backlogs)
//! KEYS[8]    -> taskq:{<queue>}:kpark    (keys waiting for their rate)
//! KEYS[9]    -> taskq:{<queue>}:lease
//! KEYS[10]   -> taskq:{<queue>}:scheduled
//! KEYS[11]   -> taskq:{<queue>}:retry
//! KEYS[12]   -> taskq:{<queue>}:outbox
//! ARGV[1]    -> task hash prefix
//! ARGV[2]    -> unmet set prefix
//! ARGV[3]    -> dependents set prefix
//! ARGV[4..]  -> ids
//! reply      -> {the ids left because a worker took them,
//!                the absent ids when the outbox is not empty}
//! ```

use std::collections::BTreeMap;

use taskq_core::{QueueName, TaskId};

use super::{invocation, key_keys, key_list, keyed_script};
use crate::keys::QueueKeys;
use crate::{Broker, Result};

keyed_script!(
    r"
local q = kq(1, 5)
local taken, absent = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  local vals = redis.call('HMGET', k, 'state', 'prio', 'key', 'attempts')
  local state, uk = vals[1], vals[3]
  if state == 'running' or (tonumber(vals[4]) or 0) > 0 then
    taken[#taken + 1] = id
  else
    if not state then absent[#absent + 1] = id end
    redis.call('DEL', ARGV[2] .. id, ARGV[3] .. id)
    if state then kdrop(q, k, id, state, tonumber(vals[2]), uk, {KEYS[9], KEYS[10], KEYS[11]}) end
  end
end
if q.woke then wake(KEYS[4]) end
if #absent > 0 and redis.call('XLEN', KEYS[12]) == 0 then absent = {} end
return {taken, absent}
"
);

/// What [`Broker::remove`] could not take out of Redis.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Tasks a worker had taken already (running, or waiting for a retry): their
    /// enqueue landed and they run.
    pub taken: Vec<TaskId>,
    /// Tasks absent from Redis while their queue's outbox held updates not yet applied:
    /// never enqueued, or already run to their end with their updates still on the way
    /// to MongoDB. (Absent tasks of a queue whose outbox was empty are not listed: had
    /// they run, MongoDB would already say so.)
    pub unknown: Vec<TaskId>,
}

impl Broker {
    /// Removes tasks from Redis unless a worker took them already (see the module
    /// documentation): one script call per queue, issued concurrently. Returns the tasks
    /// left because a worker took them, and those whose absence proves nothing.
    pub async fn remove(&self, tasks: &[(QueueName, TaskId)]) -> Result<Removed> {
        let mut by_queue: BTreeMap<&QueueName, Vec<String>> = BTreeMap::new();
        for (q, id) in tasks {
            by_queue.entry(q).or_default().push(id.to_string());
        }
        let calls = by_queue.into_iter().map(|(queue, ids)| {
            let k = QueueKeys::new(queue);
            let mut inv = invocation(&SCRIPT, &keys(&k));
            inv.arg(k.task_prefix())
                .arg(k.unmet_prefix())
                .arg(k.dependents_prefix())
                .arg(ids);
            async move { self.run::<(Vec<String>, Vec<String>)>(inv).await }
        });
        let replies = futures::future::try_join_all(calls).await?;
        let ids = |v: Vec<String>| v.into_iter().filter_map(|id| id.parse::<TaskId>().ok());
        let mut out = Removed::default();
        for (taken, unknown) in replies {
            out.taken.extend(ids(taken));
            out.unknown.extend(ids(unknown));
        }
        Ok(out)
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> Vec<String> {
    key_list![
        k.pending_all(),
        [k.wake()],
        key_keys(k),
        [k.lease(), k.scheduled(), k.retry(), k.outbox()]
    ]
}
