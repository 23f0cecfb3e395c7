//! Progress reports: what a handler says of its running attempt, kept in the record's
//! `progress` (`{ attempt, value: "<JSON text>", at }`, see [`crate::doc`]).
//!
//! A report is not a transition: it carries no `seq` of its own and never changes the
//! record's state. It lands only while the record has not moved past the attempt that
//! made it: its statement matches `{ _id, "st.seq": { $lte: S } }`, where S is the
//! `seq` of that attempt's `running` transition. Every later transition of the task (the
//! attempt's success, failure, retry, death, cancellation or reaping) has a larger `seq`,
//! so once its update is in the record, a report of the attempt still on its way matches
//! nothing and is dropped: a finished task keeps the last report written while it ran.
//! The same report applied twice leaves the record as once.

use mongodb::bson::{Bson, Document, doc};
use taskq_core::{Progress, TaskId};

use crate::apply::check_write_reply;
use crate::doc::{f, progress_doc};
use crate::store::TASKS;
use crate::{Error, Rejection, Result, Store};

/// One handler's latest report for the attempt whose `running` transition had `seq`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressReport {
    pub id: TaskId,
    pub seq: u64,
    pub progress: Progress,
}

/// Most statements in one `update` command (each report is at most
/// [`Progress::MAX_BYTES`] of JSON, so 256 stay far below a command's 16 MiB).
const STATEMENTS_PER_COMMAND: usize = 256;

impl Store {
    /// Records `reports` (one per task at most, for one round trip per 256), each only
    /// while its attempt has not ended in the record (see the [module](self)
    /// documentation). Returns how many records took their report; the others had
    /// moved on or no longer exist. [`Error::Rejected`] lists reports the server
    /// refused, all others were applied.
    pub async fn set_progress(&self, reports: &[ProgressReport]) -> Result<u64> {
        let mut taken = 0;
        let mut rejected = Vec::new();
        for chunk in reports.chunks(STATEMENTS_PER_COMMAND) {
            let mut statements = Vec::with_capacity(chunk.len());
            for r in chunk {
                let seq = i64::try_from(r.seq).map_err(|_| Error::Encode {
                    id: r.id,
                    reason: format!("progress seq {} is out of range", r.seq),
                })?;
                statements.push(doc! {
                    "q": { f::ID: r.id.to_string(), f::ST_SEQ: { "$lte": seq } },
                    "u": { "$set": { f::PROGRESS: progress_doc(r.id, &r.progress)? } },
                    "upsert": false,
                    "multi": false,
                });
            }
            let reply = self
                .database()
                .run_command(doc! { "update": TASKS, "updates": statements, "ordered": false })
                .await?;
            let ids: Vec<Vec<TaskId>> = chunk.iter().map(|r| vec![r.id]).collect();
            let mut refused = Vec::new();
            check_write_reply(&reply, &ids, &mut refused)?;
            rejected.extend(refused.into_iter().map(|(_, r): (usize, Rejection)| r));
            taken += matched(&reply);
        }
        if rejected.is_empty() {
            Ok(taken)
        } else {
            Err(Error::Rejected(rejected))
        }
    }
}

/// The records an `update` command's statements matched (`n`).
fn matched(reply: &Document) -> u64 {
    match reply.get("n") {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if *n >= 0.0 => *n as u64,
        _ => 0,
    }
}
