//! Polling helpers: wait for a condition with a deadline instead of sleeping a fixed time.
//!
//! Deadlines are measured on the wall clock (`std::time::Instant`), not tokio's clock,
//! because the conditions depend on real processes: a test that pauses tokio time still
//! gives the services the full timeout to get there.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `check` every `interval` until it returns `Some`, and returns that value; `None`
/// if `timeout` passes first. `check` runs at least once, and once more at the deadline;
/// a single call that outlives the remaining time counts as `None` for that round.
pub async fn wait_for<T, F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(value)) = tokio::time::timeout(remaining.max(interval), check()).await {
            return Some(value);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return None;
        }
        tokio::time::sleep(interval.min(remaining)).await;
    }
}

/// Calls `check` every `interval` until it returns `true` (then returns `true`), or until
/// `timeout` passes (then returns `false`). Typical use:
///
/// ```
/// # async fn demo(queue_len: impl Fn() -> usize) {
/// use std::time::Duration;
/// use taskq_testkit::wait_until;
///
/// let drained = wait_until(Duration::from_secs(10), Duration::from_millis(50), || async {
///     queue_len() == 0
/// })
/// .await;
/// assert!(drained, "the queue did not drain within 10 s");
/// # }
/// ```
pub async fn wait_until<F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, interval, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Blocking [`wait_until`] for synchronous code: calls `check` every `interval` until it
/// returns `true` or `timeout` passes.
pub fn wait_until_blocking(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return false;
        }
        std::thread::sleep(interval.min(remaining));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn wait_until_polls_until_true() {
        let calls = AtomicU32::new(0);
        let done = wait_until(Duration::from_secs(5), MS, || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 3
        })
        .await;
        assert!(done);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn wait_until_gives_up_after_the_timeout() {
        let start = Instant::now();
        let done = wait_until(50 * MS, 10 * MS, || async { false }).await;
        assert!(!done);
        assert!(start.elapsed() >= 50 * MS);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_hanging_check_does_not_outlive_the_timeout() {
        let start = Instant::now();
        let done = wait_until(50 * MS, 10 * MS, std::future::pending::<bool>).await;
        assert!(!done);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn wait_for_returns_the_value() {
        let calls = AtomicU32::new(0);
        let value = wait_for(Duration::from_secs(5), MS, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            (n == 2).then_some("ready")
        })
        .await;
        assert_eq!(value, Some("ready"));
        assert_eq!(wait_for(10 * MS, MS, || async { None::<()> }).await, None);
    }

    #[test]
    fn blocking_variant() {
        let mut n = 0;
        assert!(wait_until_blocking(Duration::from_secs(5), MS, || {
            n += 1;
            n == 3
        }));
        assert!(!wait_until_blocking(20 * MS, 5 * MS, || false));
    }
}
