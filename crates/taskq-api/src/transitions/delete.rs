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
    // Twice at most: a task that finishes between the delete and the read is deleted by
    // the second round.
    for _ in 0..2 {
        if state.store.delete_finished(&[id]).await? > 0 {
            return Ok(Deletion::Done);
        }
        match state.store.get(id).await? {
            None => return Ok(Deletion::NotFound),
            Some(t) if !t.record.status.is_final() => {
                return Ok(Deletion::Unfinished(t.record.status));
            }
            Some(_) => {}
        }
    }
    // Finished, yet not deleted twice: deleted by another call in between.
    Ok(Deletion::NotFound)
}
