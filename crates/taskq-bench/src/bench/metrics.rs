//! What the bench reads from the worker's `/metrics`: the write-buffer depth sampled
//! during a processing phase, and the batched MongoDB writes once its records settled.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Bench;
use crate::report::Metric;

/// The worker's metrics read by the bench.
const WRITE_BUFFER_DEPTH: &str = "taskq_store_write_buffer_depth";
const FLUSH_SECONDS_SUM: &str = "taskq_store_flush_duration_seconds_sum";
const FLUSH_SECONDS_COUNT: &str = "taskq_store_flush_duration_seconds_count";
/// `TASKQ_WRITE_BUFFER` of taskq-worker when not set.
const DEFAULT_WRITE_BUFFER: f64 = 10_000.0;

/// Samples the worker's `store_write_buffer_depth` gauge until stopped; yields the peak.
pub(super) struct DepthWatch {
    stop: Arc<AtomicBool>,
    peak: tokio::task::JoinHandle<Option<f64>>,
    metrics_url: String,
}

impl DepthWatch {
    pub(super) fn start(http: reqwest::Client, metrics_url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = tokio::spawn({
            let (stop, url) = (stop.clone(), metrics_url.clone());
            async move {
                let mut peak: Option<f64> = None;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = scrape(&http, &url).await
                        && let Some(d) = m.get(WRITE_BUFFER_DEPTH)
                    {
                        peak = Some(peak.map_or(*d, |p| p.max(*d)));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                peak
            }
        });
        Self {
            stop,
            peak,
            metrics_url,
        }
    }

    pub(super) async fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.await.ok().flatten()
    }
}

/// The samples of a Prometheus text exposition, keyed by name with labels.
pub(super) async fn scrape(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<HashMap<String, f64>> {
    let text = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_metrics(&text))
}

/// The `q` quantile of what a histogram observed between the scrapes `before` and
/// `after`, in its unit: the upper bound of the bucket that holds it (the buckets double,
/// so the true value lies between half of it and it). `series` picks the histogram's
/// `_bucket` samples: its name, then label pairs (`key="value"`) they must carry.
pub(super) fn bucket_quantile(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    series: &[&str],
    q: f64,
) -> Option<f64> {
    let [name, labels @ ..] = series else {
        return None;
    };
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && labels.iter().all(|l| k.contains(l)))
        .filter_map(|(k, v)| {
            let le = k.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .into_iter()
        .find(|(_, cumulative)| *cumulative >= q * total)
        .map(|(le, _)| le)
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim().to_owned(), v.parse().ok()?))
        })
        .collect()
}

impl Bench {
    /// Adds what the worker's metrics say about its MongoDB writer for a processing phase
    /// of `n` tasks (read once its records have settled): the peak write-buffer depth
    /// against its capacity (at capacity, task processing waits for MongoDB), and the
    /// number and mean time of its batched writes.
    pub(super) async fn writer_figures(
        &mut self,
        depth: Option<DepthWatch>,
        n: usize,
        key: &str,
        label: &str,
    ) {
        let Some(depth) = depth else { return };
        let url = depth.metrics_url.clone();
        let peak = depth.finish().await;
        let capacity = self
            .cfg
            .worker_env
            .iter()
            .rev()
            .find(|(k, _)| k == "TASKQ_WRITE_BUFFER")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(DEFAULT_WRITE_BUFFER);
        // The gauge also counts the batch being written, so a full buffer reads up to one
        // batch (2,000 by default) above the capacity.
        match peak {
            Some(peak) => self.report.push(
                Metric::new(
                    &format!("worker_write_buffer_peak{key}"),
                    &format!("worker write buffer peak depth{label}"),
                    peak,
                    "updates",
                )
                .of("TASKQ_WRITE_BUFFER", capacity),
            ),
            None => self.report.note(format!(
                "could not read {WRITE_BUFFER_DEPTH} from the worker's {url}"
            )),
        }
        let Ok(m) = scrape(&self.http, &url).await else {
            self.report
                .note(format!("could not read the worker's {url}"));
            return;
        };
        if let (Some(sum), Some(count)) = (m.get(FLUSH_SECONDS_SUM), m.get(FLUSH_SECONDS_COUNT))
            && *count > 0.0
        {
            self.report.push(Metric::new(
                &format!("worker_flushes{key}"),
                &format!("worker MongoDB writes (batched){label}"),
                *count,
                "writes",
            ));
            self.report.push(Metric::new(
                &format!("worker_flush_mean_ms{key}"),
                &format!("worker MongoDB write, mean time{label}"),
                sum / count * 1e3,
                "ms",
            ));
            // With a backlog the worker also writes updates of backlog tasks by then;
            // every other phase starts a fresh worker.
            if key != "_backlog" {
                self.report.push(Metric::new(
                    &format!("worker_updates_per_flush{key}"),
                    &format!("status updates per write (2 per task){label}"),
                    2.0 * n as f64 / count,
                    "updates",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_the_bound_of_the_bucket_that_holds_it() {
        let sample = |counts: [f64; 4]| {
            parse_metrics(&format!(
                "h_bucket{{stage=\"a\",le=\"0.001\"}} {}\n\
                 h_bucket{{stage=\"a\",le=\"0.002\"}} {}\n\
                 h_bucket{{stage=\"a\",le=\"0.004\"}} {}\n\
                 h_bucket{{stage=\"a\",le=\"+Inf\"}} {}\n\
                 h_bucket{{stage=\"b\",le=\"+Inf\"}} 7\n",
                counts[0], counts[1], counts[2], counts[3]
            ))
        };
        // Between the scrapes: 90 in the first bucket, 8 in the second, 2 in the third.
        let before = sample([10.0, 10.0, 10.0, 10.0]);
        let after = sample([100.0, 108.0, 110.0, 110.0]);
        let q = |p| bucket_quantile(&before, &after, &["h", "stage=\"a\""], p);
        assert_eq!(q(0.5), Some(0.001));
        assert_eq!(q(0.95), Some(0.002));
        assert_eq!(q(0.99), Some(0.004));
        assert_eq!(
            bucket_quantile(&before, &before, &["h", "stage=\"a\""], 0.5),
            None
        );
    }

    #[test]
    fn reads_prometheus_samples() {
        let m = parse_metrics(
            "# HELP x y\n# TYPE taskq_store_write_buffer_depth gauge\n\
             taskq_store_write_buffer_depth 42\n\
             taskq_store_flush_duration_seconds_sum 1.5e-1\n\
             taskq_http_requests_total{method=\"GET\",status=\"200\"} 3\n# EOF\n",
        );
        assert_eq!(m.get(WRITE_BUFFER_DEPTH), Some(&42.0));
        assert_eq!(m.get(FLUSH_SECONDS_SUM), Some(&0.15));
        assert_eq!(
            m.get("taskq_http_requests_total{method=\"GET\",status=\"200\"}"),
            Some(&3.0)
        );
        assert_eq!(m.len(), 3);
    }
}
