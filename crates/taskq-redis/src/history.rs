//! Per-minute throughput of the last hour, for the dashboard's charts.
//!
//! The ack and fail scripts count finished attempts per second (`stats:ok:<second>`,
//! `stats:err:<second>`, expiring after two minutes). [`Broker::roll_up_minute`] sums
//! the sixty counters of a finished minute into `stats:m:ok:<minute>` and
//! `stats:m:err:<minute>`, kept for a little over an hour. Workers call it every few
//! seconds for each queue they serve; the sums are written only if absent (`SET NX`),
//! so any number of workers may do it at once. A minute that ends while no worker runs
//! is never rolled up and shows as zero. Keys share the queue's hash tag.

use crate::{Broker, Counter, QueueKeys, Result};

/// How long a minute's sums are kept, in seconds.
const MINUTE_TTL_SECONDS: u64 = 65 * 60;

/// Finished attempts of one minute of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinuteStats {
    /// Start of the minute, ms since the epoch.
    pub minute_ms: i64,
    pub succeeded: u64,
    pub failed: u64,
}

fn second_key(keys: &QueueKeys, kind: Counter, second: i64) -> String {
    keys.counter(kind, second * 1000)
}

fn minute_key(keys: &QueueKeys, kind: Counter, minute: i64) -> String {
    keys.minute_counter(kind, minute)
}

impl Broker {
    /// Sums the per-second counters of the minute before the one of `now_ms` into its
    /// per-minute counters, unless they exist. Waits two seconds into a minute, so
    /// attempts acknowledged at the end of the previous one are counted.
    pub async fn roll_up_minute(&self, queue: &taskq_core::QueueName, now_ms: i64) -> Result<()> {
        let keys = QueueKeys::new(queue);
        let now_s = now_ms.div_euclid(1000);
        if now_s.rem_euclid(60) < 2 {
            return Ok(());
        }
        let minute = now_s.div_euclid(60) - 1;
        let mut c = self.conn.clone();
        let exists: bool = redis::cmd("EXISTS")
            .arg(minute_key(&keys, Counter::Succeeded, minute))
            .query_async(&mut c)
            .await?;
        if exists {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for kind in Counter::ALL {
            let names: Vec<String> = (0..60)
                .map(|s| second_key(&keys, kind, minute * 60 + s))
                .collect();
            pipe.mget(names);
        }
        let (ok, err): (Vec<Option<u64>>, Vec<Option<u64>>) = pipe.query_async(&mut c).await?;
        let sum = |v: Vec<Option<u64>>| -> u64 { v.into_iter().flatten().sum() };
        let mut pipe = redis::pipe();
        for (kind, n) in [(Counter::Succeeded, sum(ok)), (Counter::Failed, sum(err))] {
            pipe.cmd("SET")
                .arg(minute_key(&keys, kind, minute))
                .arg(n)
                .arg("NX")
                .arg("EX")
                .arg(MINUTE_TTL_SECONDS)
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Finished attempts per minute of `queue` over the last `minutes` minutes, oldest
    /// first, ending with the current (partial) minute. The current and the previous
    /// minute are summed from the per-second counters, older ones read from the
    /// per-minute sums.
    pub async fn throughput_history(
        &self,
        queue: &taskq_core::QueueName,
        now_ms: i64,
        minutes: u32,
    ) -> Result<Vec<MinuteStats>> {
        let keys = QueueKeys::new(queue);
        let now_s = now_ms.div_euclid(1000);
        let current = now_s.div_euclid(60);
        let minutes = i64::from(minutes.max(2));
        let first = current - minutes + 1;
        let mut pipe = redis::pipe();
        for kind in Counter::ALL {
            let rolled: Vec<String> = (first..current - 1)
                .map(|m| minute_key(&keys, kind, m))
                .collect();
            pipe.mget(rolled);
            let recent: Vec<String> = ((current - 1) * 60..=now_s)
                .map(|s| second_key(&keys, kind, s))
                .collect();
            pipe.mget(recent);
        }
        let mut c = self.conn.clone();
        #[allow(clippy::type_complexity)]
        let (ok_m, ok_s, err_m, err_s): (
            Vec<Option<u64>>,
            Vec<Option<u64>>,
            Vec<Option<u64>>,
            Vec<Option<u64>>,
        ) = pipe.query_async(&mut c).await?;
        let mut out: Vec<MinuteStats> = (first..=current)
            .map(|m| MinuteStats {
                minute_ms: m * 60_000,
                ..MinuteStats::default()
            })
            .collect();
        for (i, (ok, err)) in ok_m.into_iter().zip(err_m).enumerate() {
            out[i].succeeded = ok.unwrap_or(0);
            out[i].failed = err.unwrap_or(0);
        }
        let base = (current - 1) * 60;
        let len = out.len();
        for (i, (ok, err)) in ok_s.into_iter().zip(err_s).enumerate() {
            let slot = if (base + i as i64) < current * 60 {
                len - 2
            } else {
                len - 1
            };
            out[slot].succeeded += ok.unwrap_or(0);
            out[slot].failed += err.unwrap_or(0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_keys_share_the_queue_tag_and_differ_from_second_keys() {
        let q: taskq_core::QueueName = "emails".parse().unwrap_or_default();
        let k = QueueKeys::new(&q);
        let m = minute_key(&k, Counter::Succeeded, 5);
        let s = second_key(&k, Counter::Succeeded, 5);
        assert!(m.starts_with("taskq:{emails}:"), "{m}");
        assert_ne!(m, s);
    }
}
