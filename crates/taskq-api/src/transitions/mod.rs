//! Every change of a task's state that the api makes, across both stores, each in one
//! place with its write order, its undo and what a caller sees on each failure. The HTTP
//! handlers (`tasks.rs`, `queues.rs`) and the periodic scheduler only parse, authorise,
//! call one of these and map the result.
//!
//! One rule holds them together: **MongoDB first, then Redis, transitions ordered by
//! `seq`.** A record may say more than Redis knows only while a submit is in flight (the
//! submit-pending mark, settled by the workers' submit check), and a record never moves
//! backwards: every status update carries the `seq` Redis assigned, and the record keeps
//! the one with the largest.
//!
//! | transition | module | writes, in order | undo |
//! |---|---|---|---|
//! | submit (single, batch, periodic tick; single ones written in groups by [`group`]) | [`submit`] | MongoDB insert (`seq` 1, marked, with its `key`), Redis enqueue within the deadline (a keyed task into its key's backlog) | Redis remove (the `REMOVE` script, which also takes a keyed task out of its key), then delete the records still marked by this submit; else cancel (`submit_failed`) |
//! | submit with an idempotency key | [`submit`] | Redis claim, then as above, then the claim's lifetime | drop the claim |
//! | repeat of an interrupted submit | [`submit`] | MongoDB re-mark (take-over), Redis enqueue | the submit check |
//! | repeat of a failed submit (its record cancelled `submit_failed`, its task in neither Redis nor the queue's outbox) | [`submit`] | MongoDB: the failed record gives its key up, then as a submit with an idempotency key | as a submit (the failed record stays cancelled) |
//! | retry a dead task (one, or a queue's) | [`retry`] | MongoDB `dead → queued` (`seq` S), Redis enqueue at S | Redis remove, MongoDB back to `dead` at S+1 |
//! | cancel | [`cancel`] | Redis decides (the `CANCEL` script, `seq` S, its update in the outbox), then MongoDB at S, then the id published on `taskq:finished` (wakes `?wait=` readers) | none needed: MongoDB only follows Redis; a lost publish delays waiters to their deadline |
//! | delete a finished task | [`delete`] | MongoDB only: the record, if its status is final (Redis holds nothing of a finished task) | none |
//! | recover after Redis lost its data | [`recover`] | MongoDB read in id (submit) order, Redis enqueue of what Redis lacks (`seq` + 1), so each key keeps its order, then every `waiting` record registered again ([`flow`]), then every key's running count recounted from Redis (`KEY_RECOUNT`) | none: idempotent, call again |
//! | submit a flow | [`flow`] | as a batch submit: MongoDB insert (roots `queued`, dependents `waiting`), then Redis: dependents sets, waiting tasks, roots' enqueue | as a batch submit |
//! | waiting → queued / cancelled (a dependency finished) | [`flow`] (run by the workers' outbox writers) | MongoDB has the dependency's final update, then the `FLOW_RELEASE` script (the dependent's update in its queue's outbox), then the outbox entry is acknowledged | none: repeated until acknowledged |
//! | cancel / retry a flow | [`flow`] | per task as [`cancel`] / [`retry`]; a retry puts tasks cancelled by a dependency back to `waiting` (MongoDB, then Redis) | per task |
//!
//! Task keys add no transition: the scripts that move a keyed task (enqueue, dequeue, ack,
//! fail, release, reap, cancel, promote, remove) also keep its key's backlog, head and
//! running count in the same atomic step (`taskq-redis`'s `scripts::key_fns`).
//!
//! The workers own the other transitions (lease, ack, fail, retry with backoff, dead,
//! release, promote, reap): each is one Lua script in `taskq-redis` that also appends the
//! status updates it decided to the queue's outbox stream, and the workers' outbox
//! writers apply them to MongoDB (`taskq-worker`'s `writer` module), so a worker's
//! transition is as durable as its Redis write.

pub(crate) mod cancel;
pub(crate) mod delete;
pub(crate) mod flow;
pub(crate) mod group;
pub(crate) mod recover;
pub(crate) mod retry;
pub(crate) mod submit;
