//! Recording status updates: [`Store::apply`] turns a slice of updates into as few
//! `update` statements as it can (updates with identical documents share one
//! multi-document statement, see [`crate::update`]), sends them in unordered commands
//! within the server's size limits, and reports each update the server refused by its
//! task, never failing the others of its command.

use std::collections::HashMap;

use mongodb::bson::raw::{RawArrayBuf, RawDocumentBuf};
use mongodb::bson::{Bson, Document};
use taskq_core::TaskId;

use crate::store::TASKS;
use crate::{Error, Rejection, Result, StatusUpdate, Store};

/// Most statements sent in one `update` command.
const MAX_STATEMENTS: usize = 10_000;

/// Budget for the statements of one `update` command: the server accepts a command of
/// up to 16 MiB + 16 KiB; the rest of the command (name, flags, session, cluster time)
/// fits comfortably in what is left.
const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024 - 16 * 1024;

fn encode(u: &StatusUpdate, e: impl std::fmt::Display) -> Error {
    encode_id(u.id, e)
}

fn encode_id(id: TaskId, e: impl std::fmt::Display) -> Error {
    Error::Encode {
        id,
        reason: e.to_string(),
    }
}

/// Most records one multi-document statement addresses. Kept small: a server may match
/// each record it finds through the `_id` index against the whole `$in` list again
/// (mongo-java-server does, with a linear scan of the list), so a statement's cost can
/// grow with the square of its size; the release of thousands of flow dependents at
/// once made single statements of thousands of ids that took most of a flow's MongoDB
/// time. A hundred ids keep that small while still saving most statements.
const MAX_GROUP: usize = 100;

/// Statements of one `update` command, the tasks each addresses and its update document.
#[derive(Default)]
struct Chunk {
    statements: RawArrayBuf,
    ids: Vec<Vec<TaskId>>,
    docs: Vec<Document>,
    bytes: usize,
}

impl Chunk {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn push(&mut self, ids: Vec<TaskId>, u: Document, statement: RawDocumentBuf, size: usize) {
        self.statements.push(statement);
        self.ids.push(ids);
        self.docs.push(u);
        // Element overhead in the array: type byte, decimal index, NUL.
        self.bytes += size + 8;
    }
}

/// Checks the reply of an `update` command: `ok` must be 1; each entry of
/// `writeErrors` becomes a [`Rejection`] (of the first task its statement addresses),
/// with the statement's index; a `writeConcernError` fails the whole command
/// (retryable).
pub(crate) fn check_write_reply(
    reply: &Document,
    ids: &[Vec<TaskId>],
    rejected: &mut Vec<(usize, Rejection)>,
) -> Result<()> {
    let bad = |reason: String| Error::Reply {
        command: "update",
        reason,
    };
    let ok = match reply.get("ok") {
        Some(Bson::Double(x)) => *x == 1.0,
        Some(Bson::Int32(n)) => *n == 1,
        Some(Bson::Int64(n)) => *n == 1,
        Some(Bson::Boolean(b)) => *b,
        _ => false,
    };
    if !ok {
        return Err(bad(format!("not ok: {reply}")));
    }
    if let Some(wce) = reply.get("writeConcernError") {
        return Err(bad(format!("write concern error: {wce}")));
    }
    let errors = match reply.get("writeErrors") {
        None | Some(Bson::Null) => return Ok(()),
        Some(Bson::Array(a)) => a,
        Some(other) => return Err(bad(format!("`writeErrors` is {other}"))),
    };
    for e in errors {
        let Bson::Document(e) = e else {
            return Err(bad(format!("write error {e} is not a document")));
        };
        let index = match e.get("index") {
            Some(Bson::Int32(i)) => usize::try_from(*i).ok(),
            Some(Bson::Int64(i)) => usize::try_from(*i).ok(),
            _ => None,
        };
        let Some((index, id)) = index.and_then(|i| Some((i, ids.get(i)?.first()?))) else {
            return Err(bad(format!("write error without a valid index: {e}")));
        };
        let code = match e.get("code") {
            Some(Bson::Int32(c)) => Some(i64::from(*c)),
            Some(Bson::Int64(c)) => Some(*c),
            _ => None,
        };
        let message = e.get_str("errmsg").unwrap_or("no message").to_owned();
        rejected.push((
            index,
            Rejection {
                id: *id,
                code,
                message,
            },
        ));
    }
    Ok(())
}

impl Store {
    /// Records status updates in one round trip (more only beyond 10,000 updates or
    /// 16 MiB), one statement per update, each addressing its record by `_id` alone.
    /// Updates may come in any order: the record keeps the status and attempts of the
    /// update with the largest `seq`, each date moves forward to the latest one seen,
    /// and events are always appended (see [`crate::update`]). Applying the same slice
    /// twice has the effect of applying it once.
    ///
    /// Updates for tasks that do not exist are ignored. [`Error::Rejected`] lists the
    /// updates the server refused; all others were applied. Any other error means some
    /// unknown part was applied, and the whole slice may simply be retried.
    pub async fn apply(&self, updates: &[StatusUpdate]) -> Result<()> {
        let mut rejected = Vec::new();
        // Updates with identical documents (one transition of several tasks) become one
        // multi-document statement; the groups keep the order of their first update.
        let mut groups: Vec<(Vec<TaskId>, Document, usize)> = Vec::new();
        let mut slot: HashMap<Vec<u8>, usize> = HashMap::new();
        for u in updates {
            let encoded = u.update_doc().and_then(|d| {
                RawDocumentBuf::from_document(&d)
                    .map(|raw| (d, raw.into_bytes()))
                    .map_err(|e| encode(u, e))
            });
            let (document, bytes) = match encoded {
                Ok(x) => x,
                Err(e) => {
                    rejected.push(Rejection {
                        id: u.id,
                        code: None,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let size = bytes.len();
            if size > MAX_STATEMENT_BYTES - 256 {
                rejected.push(Rejection {
                    id: u.id,
                    code: None,
                    message: format!(
                        "the update is {size} bytes; one update may be at most {MAX_STATEMENT_BYTES}"
                    ),
                });
                continue;
            }
            match slot.get(&bytes) {
                // A group's statement grows by one id (about 45 bytes) per update; a
                // group never outgrows what one command can carry.
                Some(&i) if groups[i].0.len() < MAX_GROUP => groups[i].0.push(u.id),
                _ => {
                    slot.insert(bytes, groups.len());
                    groups.push((vec![u.id], document, size));
                }
            }
        }
        let mut chunk = Chunk::default();
        for (ids, u, size) in groups {
            let size = size + ids.len() * 48 + 64;
            let statement = crate::update::statement(&ids, u.clone());
            let statement = match RawDocumentBuf::from_document(&statement) {
                Ok(st) => st,
                Err(e) => {
                    for id in ids {
                        rejected.push(Rejection {
                            id,
                            code: None,
                            message: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            if chunk.len() == MAX_STATEMENTS || chunk.bytes + size > MAX_STATEMENT_BYTES {
                self.send_updates(std::mem::take(&mut chunk), &mut rejected)
                    .await?;
            }
            chunk.push(ids, u, statement, size);
        }
        if chunk.len() > 0 {
            self.send_updates(chunk, &mut rejected).await?;
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(Error::Rejected(rejected))
        }
    }

    /// Sends one `update` command and collects its per-statement errors.
    /// A multi-document statement the server refused may have updated some of its
    /// records; its records are sent again one statement each, so only the records the
    /// server really refuses are reported (one poisoned record never holds back the
    /// others of its group).
    async fn send_updates(&self, chunk: Chunk, rejected: &mut Vec<Rejection>) -> Result<()> {
        let mut cmd = RawDocumentBuf::new();
        cmd.append("update", TASKS);
        cmd.append("updates", chunk.statements);
        cmd.append("ordered", false);
        let reply = self.db.run_raw_command(cmd).await?;
        let mut refused = Vec::new();
        check_write_reply(&reply, &chunk.ids, &mut refused)?;
        let mut singles = Chunk::default();
        for (index, r) in refused {
            let ids = &chunk.ids[index];
            if ids.len() == 1 {
                rejected.push(r);
                continue;
            }
            for id in ids {
                let u = chunk.docs[index].clone();
                let statement = crate::update::statement(&[*id], u.clone());
                let statement =
                    RawDocumentBuf::from_document(&statement).map_err(|e| encode_id(*id, e))?;
                let size = statement.as_bytes().len();
                if singles.len() == MAX_STATEMENTS || singles.bytes + size > MAX_STATEMENT_BYTES {
                    Box::pin(self.send_updates(std::mem::take(&mut singles), rejected)).await?;
                }
                singles.push(vec![*id], u, statement, size);
            }
        }
        if singles.len() > 0 {
            Box::pin(self.send_updates(singles, rejected)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn write_errors_name_their_task() {
        let ids = [
            vec![TaskId::new()],
            vec![TaskId::new()],
            vec![TaskId::new()],
        ];
        let mut rejected = Vec::new();
        let reply = doc! {
            "n": 2, "nModified": 2, "ok": 1.0,
            "writeErrors": [ { "index": 2, "code": 17419, "errmsg": "too large" } ],
        };
        assert!(check_write_reply(&reply, &ids, &mut rejected).is_ok());
        assert_eq!(
            rejected,
            vec![(
                2,
                Rejection {
                    id: ids[2][0],
                    code: Some(17419),
                    message: "too large".into()
                }
            )]
        );
        assert!(check_write_reply(&doc! { "ok": 0.0 }, &ids, &mut rejected).is_err());
        assert!(
            check_write_reply(
                &doc! { "ok": 1, "writeConcernError": { "code": 64 } },
                &ids,
                &mut rejected
            )
            .is_err()
        );
        let bad_index = doc! { "ok": 1, "writeErrors": [ { "index": 9, "code": 1 } ] };
        assert!(check_write_reply(&bad_index, &ids, &mut rejected).is_err());
    }
}
