//! The scaling decision, as a pure function of the queue depth, the current replica count,
//! the scaler's policy and the recent recommendations.
//!
//! - The recommendation is `clamp(ceil(depth / targetTasksPerReplica), min, max)`; with
//!   `minReplicas: 0` it is 0 while the depth is below `activationTasks` (the scaler is
//!   inactive), so a Deployment at zero starts only once `depth >= activationTasks`.
//! - Scale-up is immediate but adds at most `maxScaleUpStep` replicas per decision.
//! - Scale-down follows the highest recommendation of the stabilization window (the
//!   Kubernetes HPA's rule): replicas go down only once every recommendation of the last
//!   `scaleDownStabilization` seconds is below the current count, so a noisy depth never
//!   makes the replica count flap.
//! - `min` and `max` always win: a count outside them is corrected at once.
//!
//! [`Recommendations`] holds the window. A fresh one (a new leader, a restarted
//! controller, a Deployment that was paused or missing) is seeded with the current replica
//! count, so nothing is scaled down before one full window has been observed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The bounds and pace of one scaler, validated (see [`crate::crd::TaskQueueScalerSpec::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Fewest replicas (0 allows scaling to zero).
    pub min: i32,
    /// Most replicas; at least `min` and at least 1.
    pub max: i32,
    /// Pending tasks one replica should carry; at least 1.
    pub target: u64,
    /// Pending tasks needed to be active (to leave zero) when `min` is 0.
    pub activation: u64,
    /// Most replicas added by one decision; at least 1.
    pub max_step: i32,
    /// How long a lower recommendation must persist before replicas are removed.
    pub stabilization: Duration,
}

/// Why a decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Desired equals current.
    Steady,
    /// More replicas, as many as recommended.
    ScaleUp,
    /// More replicas, but fewer than recommended: `maxScaleUpStep` capped the step.
    ScaleUpLimited,
    /// Fewer replicas: the whole window recommended at most the new count.
    ScaleDown,
    /// The recommendation is lower, but a higher one is still inside the window.
    Stabilizing,
    /// The current count was outside `[min, max]`.
    OutOfBounds,
}

impl Reason {
    /// A CamelCase name for conditions and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Steady => "Steady",
            Reason::ScaleUp => "ScaleUp",
            Reason::ScaleUpLimited => "ScaleUpLimited",
            Reason::ScaleDown => "ScaleDown",
            Reason::Stabilizing => "Stabilizing",
            Reason::OutOfBounds => "OutOfBounds",
        }
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The replica count to set.
    pub desired: i32,
    /// What the depth alone calls for (before stabilization and step limits).
    pub recommended: i32,
    /// Whether the depth makes the scaler active (`depth >= activationTasks`, and > 0).
    pub active: bool,
    pub reason: Reason,
}

/// What the depth alone calls for: `clamp(ceil(depth / target), min, max)`, or `min` when
/// the depth is below the activation threshold.
pub fn recommend(depth: u64, policy: &Policy) -> i32 {
    let raw = if is_active(depth, policy) {
        let replicas = depth.div_ceil(policy.target.max(1));
        i32::try_from(replicas).unwrap_or(i32::MAX)
    } else {
        0
    };
    raw.clamp(policy.min, policy.max.max(policy.min))
}

/// Whether the depth calls for any replica at all.
pub fn is_active(depth: u64, policy: &Policy) -> bool {
    depth > 0 && depth >= policy.activation
}

/// The recommendations of the stabilization window, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Recommendations {
    entries: VecDeque<(Instant, i32)>,
}

impl Recommendations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything (the next decision seeds the window again).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push(&mut self, at: Instant, replicas: i32) {
        self.entries.push_back((at, replicas));
    }

    /// Drops the entries older than `window` at `now`, keeping at least the newest.
    fn expire(&mut self, now: Instant, window: Duration) {
        while self.entries.len() > 1
            && self
                .entries
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
        {
            self.entries.pop_front();
        }
    }

    /// The highest recommendation at most `window` old at `now`.
    fn highest_within(&self, now: Instant, window: Duration) -> Option<i32> {
        self.entries
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
            .map(|(_, r)| *r)
            .max()
    }
}

/// Decides the replica count for a reading of `depth` at `now`, with the Deployment at
/// `current` replicas; records the recommendation in `history`.
pub fn decide(
    history: &mut Recommendations,
    now: Instant,
    depth: u64,
    current: i32,
    policy: &Policy,
) -> Decision {
    let max = policy.max.max(policy.min);
    let active = is_active(depth, policy);
    let recommended = recommend(depth, policy);
    if history.is_empty() {
        // Nothing observed yet: behave as if the current count had just been recommended.
        history.push(now, current);
    }
    history.push(now, recommended);
    history.expire(now, policy.stabilization);

    let (desired, reason) = if current < policy.min || current > max {
        // Bounds first; a scale-up from below min still respects the step only above min.
        let target = if current < policy.min {
            recommended
                .min(current.saturating_add(policy.max_step))
                .max(policy.min)
        } else {
            // Above max: come down to the highest recommendation the window allows, capped.
            history
                .highest_within(now, policy.stabilization)
                .unwrap_or(recommended)
                .clamp(policy.min, max)
        };
        (target, Reason::OutOfBounds)
    } else if recommended > current {
        let stepped = current.saturating_add(policy.max_step);
        if recommended > stepped {
            (stepped, Reason::ScaleUpLimited)
        } else {
            (recommended, Reason::ScaleUp)
        }
    } else if recommended < current {
        let highest = history
            .highest_within(now, policy.stabilization)
            .unwrap_or(recommended)
            .clamp(policy.min, max);
        if highest < current {
            (highest, Reason::ScaleDown)
        } else {
            (current, Reason::Stabilizing)
        }
    } else {
        (current, Reason::Steady)
    };
    Decision {
        desired,
        recommended,
        active,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 10,
            target: 10,
            activation: 1,
            max_step: 4,
            stabilization: Duration::from_secs(60),
        }
    }

    #[test]
    fn recommendation_table() {
        let zero = Policy {
            min: 0,
            activation: 5,
            ..policy()
        };
        // (policy, depth, expected recommendation)
        let cases = [
            (policy(), 0, 1),
            (policy(), 1, 1),
            (policy(), 10, 1),
            (policy(), 11, 2),
            (policy(), 95, 10),
            (policy(), 1_000_000, 10),
            (policy(), u64::MAX, 10),
            (zero, 0, 0),
            (zero, 4, 0),
            (zero, 5, 1),
            (zero, 21, 3),
            (
                Policy {
                    activation: 0,
                    ..zero
                },
                0,
                0,
            ),
            (
                Policy {
                    activation: 0,
                    ..zero
                },
                1,
                1,
            ),
            (
                Policy {
                    min: 3,
                    max: 3,
                    ..policy()
                },
                500,
                3,
            ),
        ];
        for (i, (p, depth, want)) in cases.iter().enumerate() {
            assert_eq!(
                recommend(*depth, p),
                *want,
                "case {i}: depth {depth}, {p:?}"
            );
        }
    }

    #[test]
    fn decision_table() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let zero = Policy {
            min: 0,
            activation: 5,
            ..policy()
        };
        // (policy, earlier readings as (seconds, depth, current), now, depth, current, want desired, want reason)
        type Case = (Policy, Vec<(u64, u64, i32)>, u64, u64, i32, i32, Reason);
        let cases: Vec<Case> = vec![
            // Steady.
            (policy(), vec![], 0, 15, 2, 2, Reason::Steady),
            // Up, within the step.
            (policy(), vec![], 0, 45, 2, 5, Reason::ScaleUp),
            // Up, capped by the step.
            (policy(), vec![], 0, 95, 1, 5, Reason::ScaleUpLimited),
            // Up to max, never beyond.
            (policy(), vec![], 0, 10_000, 8, 10, Reason::ScaleUp),
            // Down: a fresh window is seeded with the current count, so no drop yet.
            (policy(), vec![], 0, 0, 5, 5, Reason::Stabilizing),
            // Down: still inside the window after a high reading.
            (policy(), vec![(0, 50, 5)], 59, 0, 5, 5, Reason::Stabilizing),
            // Down: the window has passed.
            (policy(), vec![(0, 50, 5)], 61, 0, 5, 1, Reason::ScaleDown),
            // Down only as far as the highest recommendation in the window.
            (
                policy(),
                vec![(0, 50, 5), (30, 30, 5)],
                61,
                0,
                5,
                3,
                Reason::ScaleDown,
            ),
            // From zero: below activation stays at zero.
            (zero, vec![(0, 0, 0)], 1, 4, 0, 0, Reason::Steady),
            // From zero: at activation starts.
            (zero, vec![(0, 0, 0)], 1, 5, 0, 1, Reason::ScaleUp),
            // From zero: far above, limited by the step.
            (zero, vec![(0, 0, 0)], 1, 1000, 0, 4, Reason::ScaleUpLimited),
            // To zero: below activation, after the window.
            (zero, vec![(0, 20, 2)], 61, 3, 2, 0, Reason::ScaleDown),
            // To zero: not before the window.
            (zero, vec![(0, 20, 2)], 30, 0, 2, 2, Reason::Stabilizing),
            // Below min (someone scaled to 0): back to min at once.
            (policy(), vec![], 0, 0, 0, 1, Reason::OutOfBounds),
            // Above max (someone scaled to 30): down to max at once.
            (policy(), vec![], 0, 0, 30, 10, Reason::OutOfBounds),
            // Zero-length window: down at once.
            (
                Policy {
                    stabilization: Duration::ZERO,
                    ..policy()
                },
                vec![(0, 100, 10)],
                1,
                15,
                10,
                2,
                Reason::ScaleDown,
            ),
        ];
        for (i, (p, earlier, now, depth, current, want, reason)) in cases.into_iter().enumerate() {
            let mut h = Recommendations::new();
            for (at, d, c) in earlier {
                decide(&mut h, s(at), d, c, &p);
            }
            let got = decide(&mut h, s(now), depth, current, &p);
            assert_eq!(
                (got.desired, got.reason),
                (want, reason),
                "case {i}: depth {depth} current {current} at {now}s: {got:?}"
            );
            assert!(got.desired >= p.min && got.desired <= p.max, "case {i}");
        }
    }

    #[test]
    fn active_flag_follows_activation() {
        let p = Policy {
            min: 0,
            activation: 3,
            ..policy()
        };
        let mut h = Recommendations::new();
        assert!(!decide(&mut h, Instant::now(), 2, 0, &p).active);
        assert!(decide(&mut h, Instant::now(), 3, 0, &p).active);
        assert!(!decide(&mut h, Instant::now(), 0, 0, &Policy { activation: 0, ..p }).active);
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (0i32..5, 1i32..30, 1u64..100, 0u64..20, 1i32..8, 1u64..600).prop_map(
            |(min, extra, target, activation, max_step, window)| Policy {
                min,
                max: min + extra,
                target,
                activation,
                max_step,
                stabilization: Duration::from_secs(window),
            },
        )
    }

    proptest! {
        /// After a reading that sets the replica count, any depth sequence read within the
        /// stabilization window never lowers it.
        #[test]
        fn oscillating_depth_inside_the_window_never_scales_down(
            p in arb_policy(),
            peak in 0u64..10_000,
            start in 0i32..40,
            readings in proptest::collection::vec((0u64..10_000, 0.0f64..1.0), 1..60),
        ) {
            let t0 = Instant::now();
            let mut h = Recommendations::new();
            // The peak reading, applied.
            let mut current = decide(&mut h, t0, peak, start, &p).desired;
            let floor = current;
            // Readings at increasing times strictly inside the window after the peak.
            let window = p.stabilization.as_secs_f64();
            let mut offsets: Vec<f64> = readings.iter().map(|(_, f)| f * window).collect();
            offsets.sort_by(f64::total_cmp);
            for ((depth, _), offset) in readings.iter().zip(offsets) {
                let d = decide(&mut h, t0 + Duration::from_secs_f64(offset), *depth, current, &p);
                prop_assert!(
                    d.desired >= floor,
                    "scaled down from {} to {} at {:.1}s of a {:.0}s window (depth {})",
                    current, d.desired, offset, window, depth
                );
                prop_assert!(d.desired >= current);
                prop_assert!(d.desired <= p.max && d.desired >= p.min);
                current = d.desired;
            }
        }

        /// Scale-up never adds more than the step, and the result always lies in [min, max].
        #[test]
        fn scale_up_respects_step_and_bounds(
            p in arb_policy(),
            depth in 0u64..100_000,
            current in 0i32..40,
        ) {
            let mut h = Recommendations::new();
            let d = decide(&mut h, Instant::now(), depth, current, &p);
            prop_assert!(d.desired >= p.min && d.desired <= p.max);
            if current >= p.min && d.desired > current {
                prop_assert!(d.desired - current <= p.max_step);
            }
        }

        /// Once the window has passed with a constant depth, replicas settle on the
        /// recommendation of that depth.
        #[test]
        fn constant_depth_settles_on_the_recommendation(
            p in arb_policy(),
            depth in 0u64..10_000,
            start in 0i32..40,
        ) {
            let t0 = Instant::now();
            let mut h = Recommendations::new();
            let mut current = start;
            let step = (p.stabilization / 4).max(Duration::from_millis(1));
            for i in 0..(8 + 40) {
                current = decide(&mut h, t0 + step * i, depth, current, &p).desired;
            }
            prop_assert_eq!(current, recommend(depth, &p));
        }
    }
}
