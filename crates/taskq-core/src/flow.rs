//! Flows: tasks submitted together whose `depends_on` form a DAG. A task with
//! dependencies starts `waiting` and becomes `queued` once every dependency succeeded;
//! a dependency that dies (or is cancelled) cancels it with the reason
//! `dependency <id> died` (see `taskq-api`'s `transitions::flow` for the writes).
//!
//! This module only checks a flow request and plans its records ([`plan`]): names
//! unique and well formed, every `depends_on` naming a task of the request or the id of
//! an existing task, no self-dependency, no repeated dependency, no cycle, at most
//! [`MAX_FLOW_TASKS`] tasks.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{TaskId, TaskRecord, TaskStatus};

/// Most tasks in one flow.
pub const MAX_FLOW_TASKS: usize = 10_000;

/// Longest accepted task name inside a flow.
pub const MAX_NAME_LEN: usize = 128;

/// A task's place in its flow, kept in its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FlowLink {
    /// The flow's id (time-ordered, like a task id).
    pub id: TaskId,
    /// The task's name in the flow request, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tasks that must succeed before this one runs.
    #[serde(default)]
    pub depends_on: Vec<TaskId>,
    /// The flow's failure handler: it depends on every other task of the flow and runs
    /// as soon as one of them dies (or is cancelled because of a dependency); it is
    /// cancelled once they all succeeded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_failure: bool,
}

/// What one item of a flow request says about its place in the flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowRef {
    pub name: Option<String>,
    /// Names of tasks of the same request, or ids of existing tasks.
    pub depends_on: Vec<String>,
}

/// Why a flow request was refused; `index` is the task's position in the request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("the flow has no task")]
    Empty,
    #[error("{count} tasks in one flow; the limit is {limit}")]
    TooLarge { count: usize, limit: usize },
    #[error(
        "tasks[{index}].name: must be 1-{MAX_NAME_LEN} characters from letters, digits and `_ . : -`, and not a task id"
    )]
    BadName { index: usize },
    #[error("tasks[{index}].name: `{name}` names another task of the flow too")]
    DuplicateName { index: usize, name: String },
    #[error("tasks[{index}].depends_on: a task cannot depend on itself")]
    SelfDependency { index: usize },
    #[error("tasks[{index}].depends_on: `{dep}` is listed twice")]
    DuplicateDependency { index: usize, dep: String },
    #[error(
        "tasks[{index}].depends_on: `{dep}` is neither the name of a task of the flow nor a task id"
    )]
    Unknown { index: usize, dep: String },
    #[error("tasks[{index}]: its dependencies form a cycle")]
    Cycle { index: usize },
    #[error(
        "tasks[{index}] (the failure handler when it is past the last task): a task with dependencies runs when they succeed; `run_at`, `delay_ms` and `idempotency_key` are not accepted in a flow"
    )]
    NotInFlow { index: usize },
}

/// The records of a checked flow, in request order.
#[derive(Clone, Debug)]
pub struct FlowPlan {
    pub id: TaskId,
    /// Tasks without dependencies keep their status (`queued` or `scheduled`); the
    /// others are `waiting`.
    pub records: Vec<TaskRecord>,
    /// Existing tasks some task of the flow depends on (each once).
    pub external: Vec<TaskId>,
}

fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        && name.parse::<TaskId>().is_err()
}

/// Checks a flow request (admitted records with their [`FlowRef`]s, and its optional
/// failure handler) and links its records: each gets the flow's id, its name and its
/// dependencies' ids; the failure handler, last, depends on every other task.
pub fn plan(
    items: Vec<(TaskRecord, FlowRef)>,
    on_failure: Option<TaskRecord>,
) -> Result<FlowPlan, FlowError> {
    if items.is_empty() {
        return Err(FlowError::Empty);
    }
    if items.len() > MAX_FLOW_TASKS {
        return Err(FlowError::TooLarge {
            count: items.len(),
            limit: MAX_FLOW_TASKS,
        });
    }
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (index, (_, r)) in items.iter().enumerate() {
        if let Some(name) = &r.name {
            if !good_name(name) {
                return Err(FlowError::BadName { index });
            }
            if by_name.insert(name, index).is_some() {
                return Err(FlowError::DuplicateName {
                    index,
                    name: name.clone(),
                });
            }
        }
    }
    // Per task: dependencies inside the flow (indexes) and outside (ids).
    let mut inside: Vec<Vec<usize>> = vec![Vec::new(); items.len()];
    let mut deps: Vec<Vec<TaskId>> = vec![Vec::new(); items.len()];
    let mut external: Vec<TaskId> = Vec::new();
    for (index, (rec, r)) in items.iter().enumerate() {
        if rec.idempotency_key.is_some()
            || (!r.depends_on.is_empty() && rec.status != TaskStatus::Queued)
        {
            return Err(FlowError::NotInFlow { index });
        }
        for dep in &r.depends_on {
            let id = if let Some(&j) = by_name.get(dep.as_str()) {
                if j == index {
                    return Err(FlowError::SelfDependency { index });
                }
                inside[index].push(j);
                items[j].0.id
            } else if let Ok(id) = dep.parse::<TaskId>() {
                external.push(id);
                id
            } else {
                return Err(FlowError::Unknown {
                    index,
                    dep: dep.chars().take(MAX_NAME_LEN).collect(),
                });
            };
            if deps[index].contains(&id) {
                return Err(FlowError::DuplicateDependency {
                    index,
                    dep: dep.chars().take(MAX_NAME_LEN).collect(),
                });
            }
            deps[index].push(id);
        }
    }
    if let Some(index) = cycle(&inside) {
        return Err(FlowError::Cycle { index });
    }
    external.sort();
    external.dedup();
    let index = items.len();
    if let Some(h) = &on_failure
        && (h.idempotency_key.is_some() || h.status != TaskStatus::Queued)
    {
        return Err(FlowError::NotInFlow { index });
    }
    let id = TaskId::new();
    let all: Vec<TaskId> = items.iter().map(|(r, _)| r.id).collect();
    let mut records: Vec<TaskRecord> = items
        .into_iter()
        .zip(deps)
        .map(|((mut rec, r), depends_on)| {
            if !depends_on.is_empty() {
                waiting(&mut rec);
            }
            rec.flow = Some(FlowLink {
                id,
                name: r.name,
                depends_on,
                on_failure: false,
            });
            rec
        })
        .collect();
    if let Some(mut h) = on_failure {
        waiting(&mut h);
        h.flow = Some(FlowLink {
            id,
            name: None,
            depends_on: all,
            on_failure: true,
        });
        records.push(h);
    }
    Ok(FlowPlan {
        id,
        records,
        external,
    })
}

/// Makes a new record `waiting`.
fn waiting(rec: &mut TaskRecord) {
    rec.status = TaskStatus::Waiting;
    for e in &mut rec.events {
        e.status = TaskStatus::Waiting;
    }
}

/// A task on a cycle of `deps` (task → the tasks it depends on), if there is one
/// (Kahn's algorithm: what never runs out of unmet dependencies is on or behind a cycle).
fn cycle(deps: &[Vec<usize>]) -> Option<usize> {
    let mut unmet: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); deps.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..deps.len()).filter(|&i| unmet[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &j in &dependents[i] {
            unmet[j] -= 1;
            if unmet[j] == 0 {
                ready.push(j);
            }
        }
    }
    (done < deps.len()).then(|| (0..deps.len()).find(|&i| unmet[i] > 0))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, NewTask};

    fn admitted() -> TaskRecord {
        Limits::default()
            .admit(
                NewTask {
                    kind: "noop".into(),
                    ..NewTask::default()
                },
                crate::now(),
                None,
            )
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn item(name: Option<&str>, deps: &[&str]) -> (TaskRecord, FlowRef) {
        (
            admitted(),
            FlowRef {
                name: name.map(str::to_owned),
                depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            },
        )
    }

    #[test]
    fn a_chain_links_ids_and_waits() {
        let p = plan(
            vec![
                item(Some("a"), &[]),
                item(Some("b"), &["a"]),
                item(Some("c"), &["b"]),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = &p.records;
        assert_eq!(r[0].status, TaskStatus::Queued);
        assert_eq!(r[1].status, TaskStatus::Waiting);
        assert_eq!(r[1].events[0].status, TaskStatus::Waiting);
        let link = r[2].flow.as_ref().map(|f| f.depends_on.clone());
        assert_eq!(link, Some(vec![r[1].id]));
        assert!(
            r.iter()
                .all(|t| t.flow.as_ref().map(|f| f.id) == Some(p.id))
        );
        assert!(p.external.is_empty());
    }

    #[test]
    fn bad_flows_are_refused() {
        let err = |items| plan(items, None).err();
        assert_eq!(err(vec![]), Some(FlowError::Empty));
        assert_eq!(
            err(vec![item(Some("a"), &["b"]), item(Some("b"), &["a"])]),
            Some(FlowError::Cycle { index: 0 })
        );
        assert_eq!(
            err(vec![item(Some("a"), &["a"])]),
            Some(FlowError::SelfDependency { index: 0 })
        );
        assert!(matches!(
            err(vec![item(Some("a"), &["nope"])]),
            Some(FlowError::Unknown { index: 0, .. })
        ));
        assert!(matches!(
            err(vec![item(Some("a"), &[]), item(Some("a"), &[])]),
            Some(FlowError::DuplicateName { index: 1, .. })
        ));
        assert!(matches!(
            err(vec![item(Some("a"), &[]), item(None, &["a", "a"])]),
            Some(FlowError::DuplicateDependency { index: 1, .. })
        ));
        assert_eq!(
            err(vec![item(Some("a b"), &[])]),
            Some(FlowError::BadName { index: 0 })
        );
        let many = (0..=MAX_FLOW_TASKS).map(|_| item(None, &[])).collect();
        assert!(matches!(err(many), Some(FlowError::TooLarge { .. })));
    }

    #[test]
    fn an_existing_task_id_is_an_external_dependency() {
        let dep = TaskId::new();
        let p = plan(vec![item(None, &[&dep.to_string()])], None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.external, vec![dep]);
        assert_eq!(p.records[0].status, TaskStatus::Waiting);
    }

    #[test]
    fn the_failure_handler_depends_on_every_task() {
        let p = plan(
            vec![item(Some("a"), &[]), item(Some("b"), &["a"])],
            Some(admitted()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let h = &p.records[2];
        assert_eq!(h.status, TaskStatus::Waiting);
        let link = h
            .flow
            .as_ref()
            .map(|f| (f.on_failure, f.depends_on.clone()));
        assert_eq!(link, Some((true, vec![p.records[0].id, p.records[1].id])));
        // Its message names the flow, not every task of it; the others name their own
        // dependencies.
        let m = h.message();
        assert_eq!((m.depends_on.len(), m.failure_handler_of), (0, Some(p.id)));
        let m = p.records[1].message();
        assert_eq!(
            (m.depends_on, m.failure_handler_of),
            (vec![p.records[0].id], None)
        );
    }
}
