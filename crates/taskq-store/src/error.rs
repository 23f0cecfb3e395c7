//! The store's one error type.

use taskq_core::TaskId;

/// Everything that can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver failed: the server is unreachable, timed out, or refused a command.
    /// Usually transient; the batched writer retries these forever.
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),

    /// A stored document does not map to a task record (missing field, wrong type,
    /// unknown status, payload that is not JSON, ...). Never a panic.
    #[error("task record `{id}` is corrupt: {reason}")]
    Corrupt { id: String, reason: String },

    /// A value cannot be written (for example a counter beyond the range of a BSON
    /// Int64). Nothing was written.
    #[error("cannot store task `{id}`: {reason}")]
    Encode { id: TaskId, reason: String },

    /// The server (or the encoder, for a statement too large to send) refused some
    /// status updates for good. Every update of the slice that is not listed here was
    /// applied.
    #[error("{} status update(s) rejected; first: {}", .0.len(), first_rejection(.0))]
    Rejected(Vec<Rejection>),

    /// The server answered a command with something this crate does not understand.
    #[error("unexpected reply to `{command}`: {reason}")]
    Reply {
        command: &'static str,
        reason: String,
    },
}

impl Error {
    /// Whether a unique index refused the write (MongoDB error 11000).
    pub fn is_duplicate_key(&self) -> bool {
        use mongodb::error::{ErrorKind, WriteFailure};
        match self {
            Error::Mongo(e) => match e.kind.as_ref() {
                ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
                ErrorKind::InsertMany(im) => im
                    .write_errors
                    .as_ref()
                    .is_some_and(|ws| ws.iter().any(|w| w.code == 11000)),
                _ => false,
            },
            _ => false,
        }
    }
}

/// One update the server refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The task the update was for.
    pub id: TaskId,
    /// The server's error code, when the server refused it (`None` when the update was
    /// refused locally, e.g. for its size).
    pub code: Option<i64>,
    pub message: String,
}

fn first_rejection(rs: &[Rejection]) -> String {
    match rs.first() {
        Some(r) => match r.code {
            Some(code) => format!("task {}: {} (code {code})", r.id, r.message),
            None => format!("task {}: {}", r.id, r.message),
        },
        None => "none".to_owned(),
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
