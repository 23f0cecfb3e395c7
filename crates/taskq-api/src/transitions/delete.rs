//! Delete: a finished task's record leaves MongoDB.
//!
//! Only a finished task (succeeded, dead or cancelled) can be deleted: Redis holds
//! nothing of it, so the record is the task's only trace and one MongoDB statement
//! removes it (`delete_many` on its id and a finished status, so a task that a retry
//! has just queued again is never deleted). An unfinished task is a conflict: cancel it
//! first. A later status update of a deleted task (none is expected once it finished)
//! finds no record and is dropped by the store.
//!
//! What a caller sees: `Done`, or `NotFound`, or `Unfinished` with the task's status,
//! or `503` when MongoDB fails (nothing or the whole record was deleted; calling again
//! is safe: a second call answers `NotFound`).

use taskq_core::{TaskId, TaskStatus};

use crate::AppState;
use crate::error::ApiError;

/// What [`delete`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Deletion {
    Done,
    NotFound,
    /// The task has not finished; nothing was deleted.
    Unfinished(TaskStatus),
}

/// Deletes the record of task `id` if the task has finished.
pub(crate) async fn delete(state: &AppState, id: TaskId) -> Result<Deletion, ApiError> {
    if state.store.delete_finished(&[id]).await? > 0 {
        return Ok(Deletion::Done);
    }
    Ok(match state.store.get(id).await? {
        None => Deletion::NotFound,
        Some(t) if !t.record.status.is_final() => Deletion::Unfinished(t.record.status),
        // It finished between the two statements: delete it now (none deleted: another
        // call did).
        Some(_) if state.store.delete_finished(&[id]).await? > 0 => Deletion::Done,
        Some(_) => Deletion::NotFound,
    })
}
