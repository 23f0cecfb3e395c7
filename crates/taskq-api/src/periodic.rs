//! Periodic tasks: cron schedules declared in config (`TASKQ_PERIODIC`,
//! `TASKQ_PERIODIC_FILE`), each enqueueing one task per tick.
//!
//! Invariants:
//! - **Exactly once per tick, however many api replicas run the schedules.** A tick's task
//!   is submitted with the idempotency key `periodic:<name>:<tick>`, where the tick is the
//!   scheduled fire time (RFC 3339, UTC, whole seconds), never "now", so every replica
//!   computes the same key. It goes through the same path as an idempotent
//!   `POST /v1/tasks`: MongoDB's unique index on (queue, key) admits one record and the
//!   other replicas get the existing task.
//! - No tick is submitted before the store's indexes exist: without the unique index,
//!   replicas could not tell each other's submits apart.
//! - A replica submits a tick only within its window: until the schedule's next tick or
//!   [`TICK_WINDOW`] after the tick, whichever comes first. Failures (Redis or MongoDB
//!   down) are logged and retried within the window, then the tick is given up. Ticks
//!   missed while no replica ran are not backfilled.
//! - Schedules are validated when the api starts ([`parse_schedules`]); it refuses to
//!   start on invalid config, so a schedule's task can only fail at a tick for a reason
//!   outside the config.
//!
//! Cron expressions follow the `cron` crate: six or seven fields with seconds first
//! (`sec min hour day-of-month month day-of-week [year]`), evaluated in UTC.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use taskq_core::{Limits, NewTask};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::AppState;
use crate::transitions::submit::{self, Submitted};

/// How long after its fire time a tick may still be submitted (if the schedule's next
/// tick does not come sooner). Bounds retries and keeps a late replica from submitting
/// a tick long after the others, when its key might no longer be retained.
pub const TICK_WINDOW: Duration = Duration::from_secs(30);

/// The shortest idempotency retention (`TASKQ_IDEMPOTENCY_TTL_SECONDS`) accepted with
/// periodic schedules: a tick's key must outlive [`TICK_WINDOW`] plus any clock skew
/// between replicas, or a late replica could submit the tick a second time.
pub const MIN_IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);

/// Longest accepted schedule name.
pub const MAX_NAME_LEN: usize = 64;

/// First delay between attempts to submit a failing tick; it doubles up to
/// [`RETRY_MAX_DELAY`].
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(500);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Longest single sleep of the scheduler, so a wall-clock jump is noticed within it.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// One validated periodic schedule: a name, a cron expression and the task it submits.
#[derive(Clone, Debug)]
pub struct Schedule {
    name: String,
    cron: cron::Schedule,
    task: NewTask,
}

impl Schedule {
    /// Checks one schedule: the name's charset, the cron expression, and the task as a
    /// dry-run submit against `limits` (without `delay_ms`, `run_at` or
    /// `idempotency_key`, which the scheduler decides). Says what to fix.
    pub fn new(name: &str, cron: &str, task: NewTask, limits: &Limits) -> Result<Self, String> {
        check_name(name)?;
        let cron = parse_cron(cron).map_err(|e| format!("schedule `{name}`: `cron`: {e}"))?;
        let s = Self {
            name: name.to_owned(),
            cron,
            task,
        };
        if s.next_after(Utc::now()).is_none() {
            return Err(format!(
                "schedule `{name}`: `cron` `{}` never fires again",
                s.cron.source()
            ));
        }
        s.check_task(limits)
            .map_err(|e| format!("schedule `{name}`: {e}"))?;
        Ok(s)
    }

    /// The schedule's name, unique among the configured schedules.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cron expression as configured.
    pub fn cron(&self) -> &str {
        self.cron.source()
    }

    /// The first tick strictly after `t`, in whole seconds; `None` when the schedule
    /// never fires again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The crate looks from the next whole second of its argument on; truncating
        // first keeps sub-second parts out of the tick (and so out of the key).
        self.cron
            .after(&t.trunc_subsecs(0))
            .next()
            .map(|t| t.trunc_subsecs(0))
    }

    /// The task each tick submits (its idempotency key is the tick's).
    pub fn task(&self) -> &NewTask {
        &self.task
    }

    /// The idempotency key of the tick at `tick`: the same on every replica.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "periodic:{}:{}",
            self.name,
            tick.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }

    fn check_task(&self, limits: &Limits) -> Result<(), String> {
        let refuse = |field: &str, why: &str| Err(format!("`task.{field}` is not allowed: {why}"));
        if self.task.delay_ms.is_some() {
            return refuse(
                "delay_ms",
                "a periodic task is enqueued at its tick; shift the cron expression instead",
            );
        }
        if self.task.run_at.is_some() {
            return refuse(
                "run_at",
                "a periodic task is enqueued at its tick; shift the cron expression instead",
            );
        }
        if self.task.idempotency_key.is_some() {
            return refuse(
                "idempotency_key",
                "the scheduler sets `periodic:<name>:<tick>`",
            );
        }
        let now = Utc::now();
        limits
            .admit(self.request(now), now, None)
            .map(drop)
            .map_err(|e| format!("invalid `task`: {e}"))
    }

    /// The submit request of the tick at `tick`.
    fn request(&self, tick: DateTime<Utc>) -> NewTask {
        NewTask {
            idempotency_key: Some(self.tick_key(tick)),
            ..self.task.clone()
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "schedule name {name:?} must be 1-{MAX_NAME_LEN} characters from letters, digits and `_ . -`"
        ))
    }
}

fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    if fields == 5 && !expr.trim_start().starts_with('@') {
        return Err(format!(
            "`{expr}` has 5 fields; taskq's cron has seconds first: \
             `sec min hour day-of-month month day-of-week [year]` (e.g. `0 {expr}`)"
        ));
    }
    cron::Schedule::from_str(expr).map_err(|e| {
        // The crate's message echoes the expression and a caret before the reason.
        let text = e.to_string();
        let reason = text.rsplit('^').next().unwrap_or_default();
        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        let reason = if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        };
        format!(
            "`{expr}` is not a valid cron expression{reason}; expected \
             `sec min hour day-of-month month day-of-week [year]`, e.g. `0 0 3 * * *`"
        )
    })
}

/// One entry of the periodic config as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    cron: String,
    task: serde_json::Value,
}

/// Parses and validates the periodic config: each source is `(where it came from,
/// JSON text)`, the text an array of `{"name", "cron", "task"}` (an empty text means no
/// schedules). Names must be unique across all sources. Errors name the source, the
/// entry and what to fix.
pub fn parse_schedules(sources: &[(&str, &str)], limits: &Limits) -> Result<Vec<Schedule>, String> {
    let mut out: Vec<Schedule> = Vec::new();
    for (origin, text) in sources {
        if text.trim().is_empty() {
            continue;
        }
        let entries: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            format!("{origin}: not a JSON array of {{\"name\", \"cron\", \"task\"}} objects: {e}")
        })?;
        for (i, raw) in entries.into_iter().enumerate() {
            let at = format!("{origin}[{i}]");
            let entry: Entry = serde_json::from_value(raw).map_err(|e| {
                format!("{at}: {e}; a schedule is {{\"name\", \"cron\", \"task\"}}")
            })?;
            check_name(&entry.name).map_err(|e| format!("{at}: {e}"))?;
            let task: NewTask = serde_json::from_value(entry.task).map_err(|e| {
                format!(
                    "{at}: schedule `{}`: invalid `task` (a submit body): {e}",
                    entry.name
                )
            })?;
            let s = Schedule::new(&entry.name, &entry.cron, task, limits)
                .map_err(|e| format!("{at}: {e}"))?;
            if out.iter().any(|p| p.name == s.name) {
                return Err(format!(
                    "{at}: schedule name `{}` is used twice; names must be unique \
                     (they are part of each tick's idempotency key)",
                    s.name
                ));
            }
            out.push(s);
        }
    }
    Ok(out)
}

/// Starts the scheduler: one task that sleeps until the earliest next tick of
/// `schedules`, submits it (each tick in a task of its own, so a failing one delays no
/// other), and repeats until `shutdown` is cancelled. The handle resolves once the
/// scheduler and every tick it started have stopped. Several schedulers may run on the
/// same stores (and even the same state): each tick still yields one task.
pub fn spawn_periodic(
    state: AppState,
    schedules: Vec<Schedule>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(scheduler(state, schedules, shutdown))
}

async fn scheduler(state: AppState, schedules: Vec<Schedule>, shutdown: CancellationToken) {
    if schedules.is_empty() {
        return;
    }
    let schedules: Vec<Arc<Schedule>> = schedules.into_iter().map(Arc::new).collect();
    let ticks = TaskTracker::new();
    let start = Utc::now();
    let mut next: Vec<Option<DateTime<Utc>>> =
        schedules.iter().map(|s| s.next_after(start)).collect();
    loop {
        let Some(at) = next.iter().flatten().min().copied() else {
            tracing::info!("no periodic schedule fires again");
            break;
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = sleep_until(at) => {}
        }
        let now = Utc::now();
        for (s, n) in schedules.iter().zip(next.iter_mut()) {
            let Some(tick) = *n else { continue };
            if tick > at {
                continue;
            }
            // From the later of the tick and now: a scheduler that woke late skips the
            // ticks it overslept instead of catching up on them.
            *n = s.next_after(tick.max(now));
            let window = chrono::Duration::from_std(TICK_WINDOW).unwrap_or_default();
            let deadline = n.map_or(tick + window, |n| n.min(tick + window));
            ticks.spawn(fire(
                state.clone(),
                s.clone(),
                tick,
                deadline,
                shutdown.clone(),
            ));
        }
    }
    ticks.close();
    ticks.wait().await;
}

/// Sleeps until the wall clock reads `at` (which is what ticks are defined by), in steps
/// of at most [`MAX_SLEEP`] so a clock jump is noticed.
async fn sleep_until(at: DateTime<Utc>) {
    loop {
        match (at - Utc::now()).to_std() {
            Ok(left) if !left.is_zero() => tokio::time::sleep(left.min(MAX_SLEEP)).await,
            _ => return,
        }
    }
}

/// Submits the tick at `tick`, retrying failures until `deadline` or shutdown. Never
/// panics; every outcome is logged.
async fn fire(
    state: AppState,
    schedule: Arc<Schedule>,
    tick: DateTime<Utc>,
    deadline: DateTime<Utc>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!(
        "periodic.tick",
        periodic.schedule = %schedule.name,
        periodic.tick = %tick.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    async move {
        let mut delay = RETRY_FIRST_DELAY;
        for attempt in 1u32.. {
            if Utc::now() > deadline {
                tracing::error!(
                    attempt,
                    "periodic tick not submitted within its window; skipped"
                );
                return;
            }
            let reason = match submit_tick(&state, &schedule, tick).await {
                Ok(Submitted::Created(rec)) => {
                    tracing::info!(task.id = %rec.id, task.queue = %rec.queue, "periodic task submitted");
                    return;
                }
                Ok(Submitted::Existing(rec)) => {
                    tracing::debug!(task.id = %rec.id, "periodic tick already submitted by another scheduler");
                    return;
                }
                Err(TickError::Invalid(e)) => {
                    // Validated at start-up, so only a change of limits gets here.
                    tracing::error!(error = %e, "periodic task refused; tick skipped");
                    return;
                }
                Err(TickError::Retry(reason)) => reason,
            };
            let retry_at =
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            if retry_at > deadline {
                tracing::error!(attempt, error = %reason, "periodic tick not submitted; skipped");
                return;
            }
            tracing::warn!(attempt, error = %reason, retry_in_ms = delay.as_millis() as u64, "periodic tick not submitted; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX_DELAY);
        }
    }
    .instrument(span)
    .await;
}

/// Why a tick was not submitted.
#[derive(Debug)]
enum TickError {
    /// The task does not pass the limits: retrying cannot help.
    Invalid(String),
    /// A backing service failed, or the indexes are not there yet.
    Retry(String),
}

async fn submit_tick(
    state: &AppState,
    schedule: &Schedule,
    tick: DateTime<Utc>,
) -> Result<Submitted, TickError> {
    if !state.indexes_ready.load(Ordering::Relaxed) {
        return Err(TickError::Retry(
            "the store's indexes are not created yet".into(),
        ));
    }
    let traceparent = taskq_telemetry::traceparent(&tracing::Span::current());
    let rec = state
        .limits
        .admit(schedule.request(tick), taskq_core::now(), traceparent)
        .map_err(|e| TickError::Invalid(e.to_string()))?;
    submit::submit_idempotent(state, rec)
        .await
        .map_err(|e| TickError::Retry(format!("{} ({})", e.message, e.code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn schedule(cron: &str) -> Schedule {
        let task = NewTask {
            kind: "noop".into(),
            ..NewTask::default()
        };
        Schedule::new("s", cron, task, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse(text: &str) -> Result<Vec<Schedule>, String> {
        parse_schedules(&[("TASKQ_PERIODIC", text)], &Limits::default())
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(s) => panic!("accepted {text}: {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn next_fire_is_the_first_whole_second_tick_after() {
        // (schedule, from, its next tick after `from`)
        let cases = [
            (
                "0 0 3 * * *",
                "2026-11-23T02:59:59.500Z",
                Some("2026-11-23T03:00:00Z"),
            ),
            // Strictly after: a tick is never its own successor.
            (
                "0 0 3 * * *",
                "2026-11-23T03:00:00Z",
                Some("2026-11-24T03:00:00Z"),
            ),
            (
                "*/1 * * * * *",
                "2026-11-23T12:00:00.250Z",
                Some("2026-11-23T12:00:01Z"),
            ),
            (
                "*/1 * * * * *",
                "2026-12-31T23:59:59.999Z",
                Some("2027-01-01T00:00:00Z"),
            ),
            // 2026-11-21 is a Saturday.
            (
                "0 30 9 * * Mon-Fri",
                "2026-11-21T10:00:00Z",
                Some("2026-11-23T09:30:00Z"),
            ),
            ("0 0 0 1 1 * 2026-2100", "2100-06-01T00:00:00Z", None),
        ];
        for (cron, from, want) in cases {
            let got = schedule(cron).next_after(at(from));
            assert_eq!(got, want.map(at), "{cron} after {from}");
        }
    }

    #[test]
    fn tick_keys_depend_only_on_name_and_tick() {
        let s = schedule("0 0 3 * * *");
        let tick = at("2026-11-23T03:00:00Z");
        assert_eq!(s.tick_key(tick), "periodic:s:2026-11-23T03:00:00Z");
        assert_eq!(
            s.request(tick).idempotency_key.as_deref(),
            Some("periodic:s:2026-11-23T03:00:00Z")
        );
    }

    #[test]
    fn a_valid_config_parses() {
        let s = parse(
            r#"[{"name": "nightly-report", "cron": "0 0 3 * * *",
                 "task": {"type": "http", "payload": {"url": "http://x/"}, "queue": "low",
                          "priority": "high", "max_attempts": 3, "timeout_ms": 1000,
                          "backoff": {"initial_ms": 100}}},
                {"name": "tick_2.x", "cron": "@hourly", "task": {"type": "noop"}}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = s.iter().map(Schedule::name).collect();
        assert_eq!(names, ["nightly-report", "tick_2.x"]);
        assert_eq!(s[0].cron(), "0 0 3 * * *");
        assert!(parse("").unwrap_or_else(|e| panic!("{e}")).is_empty());
        assert!(parse(" [] ").unwrap_or_else(|e| panic!("{e}")).is_empty());
    }

    #[test]
    fn invalid_configs_say_what_to_fix() {
        let cases = [
            ("{}", "not a JSON array"),
            (
                r#"[{"name": "a", "cron": "0 * * * * *"}]"#,
                "missing field `task`",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x"}, "every": 1}]"#,
                "unknown field `every`",
            ),
            (
                r#"[{"name": "a b", "cron": "0 * * * * *", "task": {"type": "x"}}]"#,
                "schedule name \"a b\" must be 1-64 characters",
            ),
            (
                r#"[{"name": "", "cron": "0 * * * * *", "task": {"type": "x"}}]"#,
                "must be 1-64 characters",
            ),
            (
                r#"[{"name": "a", "cron": "not cron", "task": {"type": "x"}}]"#,
                "TASKQ_PERIODIC[0]: schedule `a`: `cron`: `not cron` is not a valid cron expression",
            ),
            (
                r#"[{"name": "a", "cron": "0 61 * * * *", "task": {"type": "x"}}]"#,
                "is not a valid cron expression",
            ),
            (
                r#"[{"name": "a", "cron": "0 3 * * *", "task": {"type": "x"}}]"#,
                "has 5 fields; taskq's cron has seconds first",
            ),
            (
                r#"[{"name": "a", "cron": "0 0 0 1 1 * 2001", "task": {"type": "x"}}]"#,
                "never fires again",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x", "delay_ms": 5}}]"#,
                "`task.delay_ms` is not allowed",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x", "run_at": "2030-01-01T00:00:00Z"}}]"#,
                "`task.run_at` is not allowed",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x", "idempotency_key": "k"}}]"#,
                "`task.idempotency_key` is not allowed",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": ""}}]"#,
                "schedule `a`: invalid `task`: `type`: must be 1-128",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x", "max_attempts": 0}}]"#,
                "`max_attempts`: must be between 1 and 100",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x", "priorty": "high"}}]"#,
                "invalid `task` (a submit body): unknown field `priorty`",
            ),
            (
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x"}},
                    {"name": "a", "cron": "0 0 * * * *", "task": {"type": "y"}}]"#,
                "TASKQ_PERIODIC[1]: schedule name `a` is used twice",
            ),
        ];
        for (text, expected) in cases {
            let e = parse_err(text);
            assert!(
                e.contains(expected),
                "{text}\n  gave: {e}\n  want: {expected}"
            );
        }
    }

    #[test]
    fn names_are_unique_across_sources() {
        let one = r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x"}}]"#;
        let e = parse_schedules(
            &[
                ("TASKQ_PERIODIC", one),
                ("TASKQ_PERIODIC_FILE /etc/p.json", one),
            ],
            &Limits::default(),
        )
        .err()
        .unwrap_or_default();
        assert!(
            e.starts_with("TASKQ_PERIODIC_FILE /etc/p.json[0]: schedule name `a` is used twice"),
            "{e}"
        );
    }

    #[test]
    fn tasks_are_checked_against_the_configured_limits() {
        let limits = Limits {
            max_payload_bytes: 8,
            ..Limits::default()
        };
        let e = parse_schedules(
            &[(
                "TASKQ_PERIODIC",
                r#"[{"name": "a", "cron": "0 * * * * *", "task": {"type": "x", "payload": "0123456789"}}]"#,
            )],
            &limits,
        )
        .err()
        .unwrap_or_default();
        assert!(
            e.contains("payload is 12 bytes; the limit is 8 bytes"),
            "{e}"
        );
    }
}
