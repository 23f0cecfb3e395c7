//! The fetch loops: each leases as many tasks as there are free slots, in one script
//! call, from the first queue (in weighted or strict order) that has work, and blocks on
//! the queues' wake lists (a connection of its own) when all are empty.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use taskq_core::QueueName;
use taskq_redis::{CallId, Dequeued};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use taskq_telemetry::metrics::Metrics;

use crate::executor;
use crate::worker::RunCtx;

/// Longest idle wait before the queues are checked again without a wake-up.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Longest wait while a queue's rate or concurrency limit holds its tasks back.
const LIMITED_WAIT: Duration = Duration::from_millis(50);
/// Pause after a Redis error, so an outage does not become a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Fetch loops per worker, sharing the slots. A loop holds the slots it took while its
/// dequeue is in flight, and slots that free up meanwhile wait for its next round; a
/// second loop takes them while the first one waits, so at a high rate of short tasks
/// fewer slots sit idle.
const LOOPS: usize = 2;

pub(crate) async fn run(ctx: Arc<RunCtx>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(ctx.shared.settings.concurrency));
    futures::future::join_all((0..LOOPS).map(|_| fetch_loop(&ctx, &slots, &shutdown))).await;
}

async fn fetch_loop(ctx: &Arc<RunCtx>, slots: &Arc<Semaphore>, shutdown: &CancellationToken) {
    let shared = &ctx.shared;
    let settings = &shared.settings;
    let queues: Vec<_> = settings.queues.weights().names().cloned().collect();
    let mut wake = loop {
        match shared.broker.wake_listener(&queues).await {
            Ok(w) => break w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the wake-up connection; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
        }
    };
    let mut rng = SmallRng::from_os_rng();
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = vec![first];
        while permits.len() < settings.fetch_batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut leased = Vec::new();
        let mut failed = false;
        let mut limited = false;
        for queue in settings.queues.order(&mut rng) {
            match dequeue(ctx, queue, permits.len(), shutdown).await {
                Ok(d) if d.tasks.is_empty() => {
                    limited |= d.limited;
                    continue;
                }
                Ok(d) => {
                    if d.key_held > 0 {
                        shared
                            .metrics
                            .key_limit_holds
                            .get_or_create(&Metrics::queue(queue.as_str()))
                            .inc_by(u64::from(d.key_held));
                    }
                    leased = d.tasks;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %queue, "dequeue failed");
                    failed = true;
                    break;
                }
            }
        }
        if leased.is_empty() {
            drop(permits);
            // A queue held back by its limits frees up without a wake-up: look again soon.
            let wait = if limited { LIMITED_WAIT } else { IDLE_WAIT };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ERROR_PAUSE), if failed => {}
                _ = wake.wait(wait), if !failed => {}
            }
            continue;
        }
        for task in leased {
            // The script never returns more tasks than permits were asked for.
            let Some(permit) = permits.pop() else { break };
            ctx.tracker.spawn(executor::run(ctx.clone(), task, permit));
        }
    }
}

/// Leases up to `n` tasks of `queue`. A failed call is repeated under the same
/// [`CallId`] for up to half a lease (every [`ERROR_PAUSE`]): if the first run took tasks
/// and only its reply was lost, the repeat answers with them, so they run now instead of
/// waiting, leased to nobody, for the reaper to count an attempt they never ran. Half,
/// so that an attempt begun from a repeat is heartbeated (every third of a lease) before
/// the lease the first run took expires. The last error is returned after that (the
/// tasks are then the reaper's) or at shutdown.
async fn dequeue(
    ctx: &RunCtx,
    queue: &QueueName,
    n: usize,
    shutdown: &CancellationToken,
) -> taskq_redis::Result<Dequeued> {
    let settings = &ctx.shared.settings;
    let mut call = CallId::new();
    let give_up = Instant::now() + settings.lease / 2;
    loop {
        let result = ctx
            .shared
            .broker
            .dequeue(
                &mut call,
                queue,
                n,
                settings.lease,
                &settings.worker_id,
                settings.write_buffer,
            )
            .await;
        let Err(e) = result else { return result };
        if Instant::now() + ERROR_PAUSE >= give_up || shutdown.is_cancelled() {
            return Err(e);
        }
        tracing::warn!(error = %e, %queue, "dequeue failed; repeating the call in case it leased tasks");
        tokio::select! {
            _ = shutdown.cancelled() => return Err(e),
            _ = tokio::time::sleep(ERROR_PAUSE) => {}
        }
    }
}
