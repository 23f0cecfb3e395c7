//! Retry delays: exponential growth with a cap and jitter.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How long a failed task waits before its next attempt.
///
/// The delay before attempt `n + 1` (after `n` failed attempts) is
/// `min(max_ms, initial_ms × multiplier^(n-1))`, then reduced by a random fraction of up
/// to `jitter` so that tasks failing together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay after the first failure, in milliseconds.
    pub initial_ms: u64,
    /// Upper bound of any delay, in milliseconds.
    pub max_ms: u64,
    /// Growth factor per failed attempt (≥ 1).
    pub multiplier: f64,
    /// Fraction of the delay (0 to 1) that is randomised away.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 600_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt, given how many attempts have failed (≥ 1).
    pub fn delay<R: Rng + ?Sized>(&self, failed_attempts: u32, rng: &mut R) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(1_000) as i32;
        let raw = self.initial_ms as f64 * self.multiplier.powi(exp);
        let capped = if raw.is_finite() {
            raw.min(self.max_ms as f64)
        } else {
            self.max_ms as f64
        };
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            1.0 - rng.random_range(0.0..=jitter)
        } else {
            1.0
        };
        Duration::from_millis((capped * factor).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A policy and a seeded random source.
    fn policy(initial_ms: u64, max_ms: u64, multiplier: f64, jitter: f64) -> (Backoff, StdRng) {
        let b = Backoff {
            initial_ms,
            max_ms,
            multiplier,
            jitter,
        };
        (b, StdRng::seed_from_u64(initial_ms))
    }

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let (b, mut rng) = policy(100, 1_000, 2.0, 0.0);
        let ms: Vec<u128> = (1..=6).map(|n| b.delay(n, &mut rng).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX, &mut rng).as_millis(), 1000);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let (b, mut rng) = policy(1_000, 10_000, 3.0, 0.5);
        let samples: Vec<u128> = (0..500).map(|_| b.delay(2, &mut rng).as_millis()).collect();
        assert!(samples.iter().all(|&d| (1_500..=3_000).contains(&d)));
        // Jitter actually spreads the delays.
        assert!(samples.iter().min() < samples.iter().max());
    }
}
