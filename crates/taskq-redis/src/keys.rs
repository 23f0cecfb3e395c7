//! Every Redis key taskq uses, built in one place.
//!
//! All keys of one queue carry the hash tag `{queue}`, so each of them maps to the same
//! Redis Cluster slot and every script touches exactly one slot. Per-task hashes are
//! `taskq:{queue}:t:<id>`; scripts build those names from [`QueueKeys::task_prefix`],
//! which shares the tag.

use taskq_core::{Priority, QueueName, TaskId};

/// Global set of every queue name that ever received a task (not hash-tagged: it is
/// only read and written on its own, never inside a script).
pub const QUEUES: &str = "taskq:queues";

/// The pub/sub channel on which the ids of tasks that reached a final status are
/// published (space-separated, after their records were written to MongoDB), so that
/// api processes can answer `GET /v1/tasks/{id}?wait=…` at once. Plain pub/sub, not
/// sharded: in a Redis Cluster a `PUBLISH` reaches the subscribers of every node, so one
/// subscriber connection to any node hears every task.
pub const FINISHED: &str = "taskq:finished";

/// The consumer group of every queue's outbox stream: the store writers of all workers.
pub const OUTBOX_GROUP: &str = "writers";

/// Methods of [`QueueKeys`] that name one fixed key of the queue: `base` + suffix.
macro_rules! fixed_keys {
    ($($(#[$doc:meta])* $name:ident => $suffix:literal;)*) => {
        $($(#[$doc])* pub fn $name(&self) -> String {
            format!("{}{}", self.base, $suffix)
        })*
    };
}

/// The keys of one queue.
#[derive(Clone, Debug)]
pub struct QueueKeys {
    /// `taskq:{q}:` — the common prefix.
    base: String,
}

impl QueueKeys {
    pub fn new(queue: &QueueName) -> Self {
        Self {
            base: format!("taskq:{{{queue}}}:"),
        }
    }

    fixed_keys! {
        /// Tasks waiting for their `run_at` (sorted set scored by due time in ms).
        scheduled => "scheduled";
        /// Tasks waiting for their retry backoff (sorted set scored by due time in ms).
        retry => "retry";
        /// Running tasks (sorted set scored by lease deadline in ms).
        lease => "lease";
        /// Wake-up tokens (a list of at most one element) that idle workers block on.
        wake => "wake";
        /// Present while the queue is paused: workers take nothing from it.
        paused => "paused";
        /// The queue's dispatch limits and its rate limiter's state (a hash: `rate`, `burst`,
        /// `concurrency`, `tokens`, `ts`).
        limits => "limits";
        /// The transactional outbox (a stream): every script that changes a task's state
        /// appends the status updates of that call as one entry, in the same atomic step, and
        /// the store writers of the [`OUTBOX_GROUP`] consumer group apply them to MongoDB.
        outbox => "outbox";
        /// Since when (ms) Redis has known the queue: set if absent by every enqueue and by
        /// every worker that serves the queue, so after Redis lost its data it is renewed.
        /// A record created before it may have been in a Redis that is gone; one created
        /// after it and absent from Redis was never enqueued (or already finished).
        epoch => "epoch";
        /// The queue's active task keys (a sorted set: member the key, score how many of its
        /// tasks Redis holds, in any state). A key leaves it with its last task.
        active_keys => "keys";
        /// How many keyed tasks wait in their keys' backlogs (a counter; they are `queued`
        /// but not in a pending list), so the queue's depth counts them.
        backlogged => "keyed";
        /// Task keys waiting for their rate per key (a sorted set: member the key, score when
        /// its next token is due, ms by Redis's clock); PROMOTE pumps them then.
        parked_keys => "kpark";
        /// A `SCAN MATCH` pattern of every key of the queue (queue names hold no glob
        /// characters).
        pattern => "*";
        /// Prefix of the per-task hashes; scripts append the task id.
        task_prefix => "t:";
        /// Prefix of the sets of a `waiting` task's unmet dependencies (task ids); scripts
        /// append the task id (see [`crate::flow`]).
        unmet_prefix => "unmet:";
        /// Prefix of the sets of a task's dependents (members `<queue> <id>`, the dependents
        /// living in any queue); scripts append the task id (see [`crate::flow`]).
        dependents_prefix => "dependents:";
    }

    /// Runnable task ids of one priority (a list: LPUSH to enqueue, RPOP to dequeue).
    pub fn pending(&self, p: Priority) -> String {
        format!("{}pending:{}", self.base, p.as_str())
    }

    /// The three pending lists, highest priority first.
    pub fn pending_all(&self) -> [String; 3] {
        Priority::ALL.map(|p| self.pending(p))
    }

    /// The counter of `kind` attempts finished in the second of `ms` (expires after two
    /// minutes): `<base>stats:ok:<second>` or `<base>stats:err:<second>`.
    pub fn counter(&self, kind: Counter, ms: i64) -> String {
        format!(
            "{}stats:{}:{}",
            self.base,
            kind.as_str(),
            ms.div_euclid(1000)
        )
    }

    /// The sum of the [`QueueKeys::counter`]s of `kind` over one minute (minutes since
    /// the epoch), kept for about an hour for the dashboard's charts:
    /// `<base>stats:m:ok:<minute>` or `<base>stats:m:err:<minute>`.
    pub fn minute_counter(&self, kind: Counter, minute: i64) -> String {
        format!("{}stats:m:{}:{minute}", self.base, kind.as_str())
    }

    /// What one named dequeue call leased (a string: `<task id>=<attempt>,…`), kept for
    /// the length of the lease so that a repeat of the call after a lost reply answers
    /// with the same tasks (see [`crate::scripts::dequeue`]).
    pub fn dequeue_call(&self, call: u64) -> String {
        format!("{}call:{call}", self.base)
    }

    /// The claim on one idempotency key of the queue: the id of the task that holds it.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.base)
    }

    /// The state of one task key (a hash: `pend`, the id of its task in a pending list;
    /// `run`, how many of its tasks run; `tok` and `ts`, its rate bucket; `b0`..`b2`, the
    /// sizes of its backlogs). Deleted with the key's last task.
    pub fn key_state(&self, key: &str) -> String {
        format!("{}kh:{key}", self.base)
    }

    /// The backlog of one task key and priority (a list, FIFO: LPUSH at the back, RPOP
    /// from the front): its queued tasks other than the one in a pending list.
    pub fn key_backlog(&self, key: &str, p: Priority) -> String {
        format!("{}kb{}:{key}", self.base, priority_index(p))
    }

    /// The hash of one task; its fields are listed in [`task_hash`].
    pub fn task(&self, id: &TaskId) -> String {
        format!("{}t:{id}", self.base)
    }
}

/// The kinds of finished attempts counted per queue and second (the `processed_1m` and
/// `failed_1m` of a queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Attempts that succeeded (`ok`).
    Succeeded,
    /// Attempts that failed, retried or not (`err`).
    Failed,
}

impl Counter {
    pub const ALL: [Counter; 2] = [Counter::Succeeded, Counter::Failed];

    /// The word in the counter's key.
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::Succeeded => "ok",
            Counter::Failed => "err",
        }
    }
}

/// The fields of a task's hash ([`QueueKeys::task`]): the one list of them. The scripts
/// name them in their Lua; a test checks that every field a task hash ever holds is
/// listed here.
pub mod task_hash {
    /// The task's message (JSON of `TaskMessage`), as the worker receives it.
    pub const MSG: &str = "msg";
    /// `waiting` (a flow's task, see [`crate::flow`]), `queued`, `scheduled`, `running`
    /// or `retrying`.
    pub const STATE: &str = "state";
    /// The priority's index in the pending lists (see [`super::priority_index`]).
    pub const PRIO: &str = "prio";
    /// Attempts started so far (a released attempt is taken back).
    pub const ATTEMPTS: &str = "attempts";
    /// The task's `max_attempts`.
    pub const MAX: &str = "max";
    /// The transition counter: one more on every transition.
    pub const SEQ: &str = "seq";
    /// The token of the attempt that holds the lease (while running).
    pub const LEASE: &str = "lease";
    /// When the task last became runnable (ms).
    pub const QUEUED_AT: &str = "qat";
    /// `1` once a user asked to cancel the running task.
    pub const CANCEL: &str = "cancel";
    /// `fail` on a waiting flow failure handler (see [`crate::flow`]).
    pub const MODE: &str = "mode";
    /// The task's key, when it has one (see [`super::QueueKeys::key_state`]).
    pub const KEY: &str = "key";

    /// Every field, in the order above.
    pub const ALL: [&str; 11] = [
        MSG, STATE, PRIO, ATTEMPTS, MAX, SEQ, LEASE, QUEUED_AT, CANCEL, MODE, KEY,
    ];
}

/// Index of a priority in [`QueueKeys::pending_all`] and in the task hash's `prio` field.
pub fn priority_index(p: Priority) -> u8 {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> &str {
        let start = key.find('{').map(|i| i + 1).unwrap_or(0);
        let end = key[start..]
            .find('}')
            .map(|i| i + start)
            .unwrap_or(key.len());
        &key[start..end]
    }

    #[test]
    fn every_queue_key_shares_the_hash_tag() {
        let q: QueueName = "emails".parse().unwrap_or_default();
        let k = QueueKeys::new(&q);
        let id = TaskId::new();
        let mut keys = vec![
            k.scheduled(),
            k.retry(),
            k.lease(),
            k.wake(),
            k.outbox(),
            k.epoch(),
            k.task(&id),
            k.task_prefix(),
            k.unmet_prefix(),
            k.dependents_prefix(),
            k.idempotency("order-{42}"),
            k.counter(Counter::Succeeded, 1_700_000_000_123),
            k.active_keys(),
            k.backlogged(),
            k.parked_keys(),
            k.key_state("customer:{7}"),
            k.key_backlog("customer:{7}", Priority::Low),
            k.dequeue_call(42),
        ];
        keys.extend(k.pending_all());
        let pattern = k.pattern();
        let prefix = pattern.trim_end_matches('*');
        for key in keys {
            assert_eq!(slot_tag(&key), "emails", "{key}");
            assert!(key.starts_with(prefix), "{key} escapes {pattern}");
        }
    }

    #[test]
    fn counters_are_per_second() {
        let q: QueueName = "q".parse().unwrap_or_default();
        let k = QueueKeys::new(&q);
        assert_eq!(k.counter(Counter::Succeeded, 1_999), "taskq:{q}:stats:ok:1");
        assert_eq!(k.counter(Counter::Failed, 2_000), "taskq:{q}:stats:err:2");
    }
}
