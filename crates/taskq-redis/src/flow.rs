//! Flows in Redis: a flow's task with dependencies waits in its queue as a task hash in
//! state `waiting` plus the set of its unmet dependencies (`taskq:{q}:unmet:<id>`), and
//! each dependency's queue keeps the set of its dependents (`taskq:{dq}:dependents:<id>`,
//! members `<queue> <id>`, dependents may live in any queue). Every script touches one
//! queue's keys, so flows spanning queues work on Redis Cluster.
//!
//! - [`Broker::flow_register`]: the waiting tasks first (per queue, `FLOW_WAIT`), then
//!   the dependents sets (per dependency queue, `FLOW_LINK`). A dependency that finishes
//!   after the call finds its dependents waiting; one whose final update reached MongoDB
//!   before the link may have been settled without them, so the caller reads the
//!   dependencies' records afterwards and settles those that finished (taskq-api's
//!   `transitions::flow::wait_for`).
//! - [`Broker::flow_settle`]: once a task's final update is in MongoDB, its dependents
//!   are read (`FLOW_CHILDREN`), told (`FLOW_RELEASE`, per dependent queue: the last
//!   dependency to succeed queues the task; one that died cancels it) and the members
//!   told are taken out of its dependents set (one linked meanwhile stays for the next
//!   settle). Each step is idempotent, so a caller that fails half-way simply calls again
//!   (the workers' outbox writers acknowledge an entry only after).

use std::str::FromStr;

use taskq_core::{QueueName, TaskId, TaskStatus};

use crate::scripts::flow_release::Release;
use crate::scripts::flow_wait::WaitItem;
use crate::{Broker, EnqueueItem, Result};

/// A task to register as waiting, with its dependencies (queue and id; at least one).
#[derive(Clone, Debug)]
pub struct Waiting {
    pub item: EnqueueItem,
    pub deps: Vec<(QueueName, TaskId)>,
    /// The flow's failure handler: runs when a dependency dies, is cancelled when all
    /// succeeded.
    pub on_failure: bool,
}

/// How a dependency ended, for its dependents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    Succeeded,
    /// It died or was cancelled: its dependents are cancelled with this reason.
    Died(String),
}

impl Finished {
    /// How task `id` that reached `status` (with `error`) ended for its dependents;
    /// `None` while it has not finished. A task cancelled because of a dependency passes
    /// that reason on, so a whole branch names the task that died.
    pub fn of(id: TaskId, status: TaskStatus, error: Option<&str>) -> Option<Finished> {
        match status {
            TaskStatus::Succeeded => Some(Finished::Succeeded),
            TaskStatus::Dead => Some(Finished::Died(format!("dependency {id} died"))),
            TaskStatus::Cancelled => Some(Finished::Died(match error {
                Some(e) if e.starts_with("dependency ") => e.to_owned(),
                _ => format!("dependency {id} was cancelled"),
            })),
            _ => None,
        }
    }
}

/// The member naming dependent `id` of `queue` in a dependents set.
fn member(queue: &QueueName, id: TaskId) -> String {
    format!("{queue} {id}")
}

fn parse_member(m: &str) -> Option<(QueueName, TaskId)> {
    let (q, id) = m.split_once(' ')?;
    Some((QueueName::from_str(q).ok()?, TaskId::from_str(id).ok()?))
}

impl Broker {
    /// Registers waiting tasks, then links them to their dependencies (see the module
    /// documentation). Per task in order, whether it was registered (false: Redis holds
    /// it already).
    pub async fn flow_register(&self, waiting: &[Waiting]) -> Result<Vec<bool>> {
        let items: Vec<WaitItem> = waiting
            .iter()
            .map(|w| WaitItem {
                item: w.item.clone(),
                unmet: w.deps.iter().map(|(_, id)| *id).collect(),
                on_failure: w.on_failure,
            })
            .collect();
        let registered = self.flow_wait(&items).await?;
        let mut links: std::collections::BTreeMap<&QueueName, Vec<(String, String)>> =
            Default::default();
        for w in waiting {
            let m = member(&w.item.msg.queue, w.item.msg.id);
            for (q, dep) in &w.deps {
                links
                    .entry(q)
                    .or_default()
                    .push((dep.to_string(), m.clone()));
            }
        }
        futures::future::try_join_all(
            links
                .iter()
                .map(|(q, ls)| async move { self.flow_link(q, ls).await }),
        )
        .await?;
        Ok(registered)
    }

    /// Tells the dependents of `finished` tasks of `queue` how they ended, then forgets
    /// those dependents (see the module documentation). Returns how many dependents were
    /// queued and how many cancelled. Idempotent.
    pub async fn flow_settle(
        &self,
        queue: &QueueName,
        finished: &[(TaskId, Finished)],
    ) -> Result<(usize, usize)> {
        let ids: Vec<TaskId> = finished.iter().map(|(id, _)| *id).collect();
        let children = self.flow_children(queue, &ids).await?;
        let mut releases = Vec::new();
        let mut told: Vec<(TaskId, &str)> = Vec::new();
        for ((dep, how), members) in finished.iter().zip(&children) {
            for m in members {
                told.push((*dep, m));
                let Some((q, id)) = parse_member(m) else {
                    tracing::warn!(member = %m, "unreadable member of a dependents set");
                    continue;
                };
                releases.push(Release {
                    queue: q,
                    id,
                    dependency: *dep,
                    died: match how {
                        Finished::Succeeded => None,
                        Finished::Died(why) => Some(why.clone()),
                    },
                });
            }
        }
        if told.is_empty() {
            return Ok((0, 0));
        }
        let counts = self.flow_release(&releases).await?;
        self.flow_forget(queue, &told).await?;
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        let q: QueueName = "emails.v2".parse().unwrap_or_default();
        let id = TaskId::new();
        assert_eq!(parse_member(&member(&q, id)), Some((q, id)));
        assert_eq!(parse_member("nope"), None);
    }

    #[test]
    fn a_cancelled_dependency_passes_on_the_reason() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let died = Finished::of(a, TaskStatus::Dead, Some("boom"));
        assert_eq!(died, Some(Finished::Died(format!("dependency {a} died"))));
        let why = format!("dependency {a} died");
        assert_eq!(
            Finished::of(b, TaskStatus::Cancelled, Some(&why)),
            Some(Finished::Died(why))
        );
        assert_eq!(Finished::of(b, TaskStatus::Running, None), None);
    }
}
