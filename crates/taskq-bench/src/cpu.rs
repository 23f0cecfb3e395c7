//! CPU accounting per phase: how much of the machine each process used, so a slow phase
//! points at its bottleneck.
//!
//! A [`Snapshot`] reads the CPU time of the tracked processes (`/proc/<pid>/stat`) and of
//! the whole machine (`/proc/stat`); the difference of two snapshots is a [`PhaseCpu`] in
//! cores (CPU seconds per wall second). Whatever the machine spent outside the tracked
//! processes is `other`: on the reference machine that is mostly the MongoDB server,
//! plus anything else running there.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::procs::pid_cpu_ticks;

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU times at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// Ticks per tracked role (`api`, `worker`, ...); `None` when the process is not running.
    procs: Vec<(&'static str, Option<u64>)>,
    /// Busy and total ticks of the machine (all cores).
    system: Option<(u64, u64)>,
}

impl Snapshot {
    /// Reads the CPU times of `procs` (role and pid; `None` for "not running") and of the
    /// bench itself.
    pub fn take(procs: &[(&'static str, Option<u32>)]) -> Self {
        let mut out: Vec<(&'static str, Option<u64>)> = procs
            .iter()
            .map(|(role, pid)| (*role, pid.and_then(|p| pid_cpu_ticks(&p.to_string()))))
            .collect();
        out.push(("bench", pid_cpu_ticks("self")));
        Self {
            at: Instant::now(),
            procs: out,
            system: system_ticks(),
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// What happened between `self` and the later `end`.
    pub fn until(&self, end: &Snapshot, phase: &str) -> PhaseCpu {
        let seconds = end.at.saturating_duration_since(self.at).as_secs_f64();
        let cores = |ticks: u64| {
            if seconds > 0.0 {
                ticks as f64 / TICKS_PER_SECOND / seconds
            } else {
                0.0
            }
        };
        let mut by_role = BTreeMap::new();
        let mut tracked = 0_u64;
        for (role, start) in &self.procs {
            let stop = end
                .procs
                .iter()
                .find(|(r, _)| r == role)
                .and_then(|(_, t)| *t);
            let d = match (start, stop) {
                (Some(a), Some(b)) => Some(b.saturating_sub(*a)),
                _ => None,
            };
            if let Some(d) = d {
                tracked += d;
            }
            by_role.insert((*role).to_owned(), d.map(cores));
        }
        let (other, idle) = match (self.system, end.system) {
            (Some((b0, t0)), Some((b1, t1))) => {
                let busy = b1.saturating_sub(b0);
                let total = t1.saturating_sub(t0);
                (
                    Some(cores(busy.saturating_sub(tracked))),
                    Some(cores(total.saturating_sub(busy))),
                )
            }
            _ => (None, None),
        };
        by_role.insert("other".to_owned(), other);
        by_role.insert("idle".to_owned(), idle);
        PhaseCpu {
            phase: phase.to_owned(),
            seconds,
            cores: by_role,
        }
    }
}

/// CPU use of one phase, in cores (1.0 = one core busy for the whole phase).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCpu {
    pub phase: String,
    pub seconds: f64,
    /// Per role (`api`, `worker`, `redis`, `mongodb`, `bench`, `other`, `idle`); `None` =
    /// unknown.
    pub cores: BTreeMap<String, Option<f64>>,
}

impl PhaseCpu {
    /// CPU time of `role` in the phase, in seconds.
    pub fn cpu_seconds(&self, role: &str) -> Option<f64> {
        self.cores
            .get(role)
            .copied()
            .flatten()
            .map(|c| c * self.seconds)
    }
}

/// Busy and total ticks of the machine, from the first line of `/proc/stat`.
fn system_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_accounts_for_the_bench_and_the_machine() {
        let start = Snapshot::take(&[("api", None)]);
        let mut x = 0_u64;
        let deadline = Instant::now() + std::time::Duration::from_millis(100);
        while Instant::now() < deadline {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let cpu = start.until(&Snapshot::take(&[("api", None)]), "spin");
        assert!(cpu.seconds >= 0.1);
        assert_eq!(cpu.cores.get("api"), Some(&None));
        assert!(cpu.cores.get("bench").copied().flatten().is_some());
        assert!(cpu.cores.get("idle").copied().flatten().is_some());
        assert!(x > 0);
    }
}
