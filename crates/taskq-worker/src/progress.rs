//! Progress reports of running attempts. A handler reports as often as it likes
//! ([`TaskContext::report_progress`](crate::TaskContext::report_progress) returns at once);
//! the latest report of each task waits in [`Reports`], and one loop per worker writes
//! whatever waits every [`FLUSH_EVERY`], in one command (taskq-store's
//! `Store::set_progress`, which drops a report whose attempt already ended in the
//! record).
//!
//! Reports are best effort: a report replaced by a newer one before a flush is never
//! written, a flush MongoDB fails is tried again at the next one (unless a newer report
//! replaced it), and what waits when the worker stops is written once more at exit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use taskq_core::TaskId;
use taskq_store::{Error, ProgressReport};
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// How often waiting reports are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// The latest report of each task, waiting for the next flush.
#[derive(Default)]
pub(crate) struct Reports {
    latest: Mutex<HashMap<TaskId, ProgressReport>>,
}

impl std::fmt::Debug for Reports {
    /// Only how many wait: a handler that prints its context prints no other task's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("waiting", &self.lock().len())
            .finish()
    }
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, ProgressReport>> {
        // Every operation on the map is one insert or one swap: a panic elsewhere while
        // holding the lock leaves it consistent.
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `report` as its task's latest, replacing any waiting one.
    pub(crate) fn put(&self, report: ProgressReport) {
        self.lock().insert(report.id, report);
    }

    /// The waiting report of task `id`.
    pub(crate) fn get(&self, id: TaskId) -> Option<ProgressReport> {
        self.lock().get(&id).cloned()
    }

    fn take(&self) -> Vec<ProgressReport> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    /// Puts back reports a flush could not write, unless newer ones replaced them.
    fn restore(&self, reports: Vec<ProgressReport>) {
        let mut latest = self.lock();
        for r in reports {
            latest.entry(r.id).or_insert(r);
        }
    }
}

/// Writes the waiting reports every [`FLUSH_EVERY`] until `stop`, then once more.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => false,
            () = stop.cancelled() => true,
        };
        flush(&shared).await;
        if stopping {
            return;
        }
    }
}

async fn flush(shared: &Shared) {
    let reports = shared.progress.take();
    if reports.is_empty() {
        return;
    }
    match shared.store.set_progress(&reports).await {
        Ok(_) => {}
        // Refused for good (none is expected: the values are bounded): drop them.
        Err(Error::Rejected(refused)) => {
            tracing::warn!(
                refused = refused.len(),
                first = refused.first().map_or("", |r| r.message.as_str()),
                "MongoDB refused progress reports; dropped"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, reports = reports.len(), "progress reports not written; trying again");
            shared.progress.restore(reports);
        }
    }
}
