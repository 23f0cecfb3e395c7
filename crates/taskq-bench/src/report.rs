//! The bench's results: metric rows (value, ceiling, fraction, target), CPU per phase and
//! notes, printed as tables or as JSON.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::cpu::PhaseCpu;

/// What a metric is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub name: String,
    pub value: f64,
}

/// A goal from the issue.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Target {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
    /// The fraction of the ceiling must be at least this.
    FractionAtLeast(f64),
}

/// One result row.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    /// Stable machine name, e.g. `processed_tasks_per_s`.
    pub key: String,
    /// What a person reads.
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub ceiling: Option<Ceiling>,
    /// `value / ceiling.value`.
    pub fraction: Option<f64>,
    pub target: Option<Target>,
    /// Whether the target is met; `None` without a target.
    pub met: Option<bool>,
}

impl Metric {
    pub fn new(key: &str, name: &str, value: f64, unit: &str) -> Self {
        Self {
            key: key.to_owned(),
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            ceiling: None,
            fraction: None,
            target: None,
            met: None,
        }
    }

    /// Compares the value with `ceiling` (named `name`).
    pub fn of(mut self, name: &str, ceiling: f64) -> Self {
        self.fraction = (ceiling > 0.0).then(|| self.value / ceiling);
        self.ceiling = Some(Ceiling {
            name: name.to_owned(),
            value: ceiling,
        });
        self.evaluate()
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self.evaluate()
    }

    fn evaluate(mut self) -> Self {
        self.met = self.target.map(|t| match t {
            Target::AtLeast(x) => self.value >= x,
            Target::AtMost(x) => self.value <= x,
            Target::FractionAtLeast(x) => self.fraction.is_some_and(|f| f >= x),
        });
        self
    }
}

/// Everything a run found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub config: Value,
    pub metrics: Vec<Metric>,
    pub cpu: Vec<PhaseCpu>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn push(&mut self, m: Metric) {
        self.metrics.push(m);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// The tables a person reads.
    pub fn to_text(&self) -> String {
        let mut rows = vec![[
            "metric".to_owned(),
            "value".to_owned(),
            "unit".to_owned(),
            "ceiling".to_owned(),
            "fraction".to_owned(),
            "target".to_owned(),
        ]];
        for m in &self.metrics {
            rows.push([
                m.name.clone(),
                num(m.value),
                m.unit.clone(),
                m.ceiling
                    .as_ref()
                    .map_or_else(String::new, |c| format!("{} ({})", num(c.value), c.name)),
                m.fraction
                    .map_or_else(String::new, |f| format!("{:.1}%", f * 100.0)),
                match (m.target, m.met) {
                    (Some(t), Some(met)) => format!(
                        "{} {}",
                        target_text(t, &m.unit),
                        if met { "ok" } else { "MISSED" }
                    ),
                    _ => String::new(),
                },
            ]);
        }
        let mut out = table(&rows, &[false, true, false, false, true, false]);

        let roles = [
            "api", "worker", "redis", "mongodb", "bench", "other", "idle",
        ];
        let mut cpu_rows = vec![
            std::iter::once("phase (CPU in cores)".to_owned())
                .chain(std::iter::once("seconds".to_owned()))
                .chain(roles.iter().map(|r| (*r).to_owned()))
                .collect::<Vec<_>>(),
        ];
        for p in &self.cpu {
            let mut row = vec![p.phase.clone(), format!("{:.2}", p.seconds)];
            for r in roles {
                row.push(
                    p.cores
                        .get(r)
                        .copied()
                        .flatten()
                        .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
                );
            }
            cpu_rows.push(row);
        }
        out.push('\n');
        let mut right = vec![false];
        right.extend([true; 8]);
        out.push_str(&table(&cpu_rows, &right));
        if !self.notes.is_empty() {
            out.push_str("\nnotes:\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

fn target_text(t: Target, unit: &str) -> String {
    match t {
        Target::AtLeast(x) => format!(">= {} {unit}", num(x)),
        Target::AtMost(x) => format!("<= {} {unit}", num(x)),
        Target::FractionAtLeast(x) => format!(">= {:.0}%", x * 100.0),
    }
}

/// Aligned columns separated by two spaces.
fn table<R: AsRef<[String]>>(rows: &[R], right: &[bool]) -> String {
    let cols = rows.first().map_or(0, |r| r.as_ref().len());
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref()[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .as_ref()
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if right.get(c).copied().unwrap_or(false) {
                    format!("{s:>w$}", w = width[c])
                } else {
                    format!("{s:<w$}", w = width[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let total: usize = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

/// A number as people read it: thousands separated at 100 and above, two decimals below.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() < 100.0 {
        return format!("{v:.2}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if v < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// The `p`-th percentile (0 < p ≤ 1) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1_234_567.4), "1,234,567");
        assert_eq!(num(100.0), "100");
        assert_eq!(num(99.456), "99.46");
        assert_eq!(num(-12_345.0), "-12,345");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn targets_are_judged() {
        let m = Metric::new("x", "x", 30.0, "tasks/s")
            .of("c", 40.0)
            .target(Target::FractionAtLeast(0.7));
        assert_eq!(m.met, Some(true));
        let m = Metric::new("y", "y", 6.0, "ms").target(Target::AtMost(5.0));
        assert_eq!(m.met, Some(false));
        let text = Report {
            metrics: vec![m],
            ..Report::default()
        }
        .to_text();
        assert!(text.contains("<= 5.00 ms MISSED"), "{text}");
    }
}
