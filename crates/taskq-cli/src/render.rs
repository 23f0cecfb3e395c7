//! Human-readable rendering of the api's JSON: column tables for lists, field tables for
//! one object.
//!
//! Everything here reads `serde_json::Value`s rather than the api's Rust types, so a
//! field the api adds later is simply not shown and one it leaves out shows as `-`.
//! Every cell goes through [`one_line`]: text from the api can neither break a table's
//! layout nor send escape sequences to the terminal. Output ends with a newline.

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Table, presets};
use serde_json::Value;

use crate::error::one_line;

/// Longest error or payload shown in a list cell, in characters.
const CLIP: usize = 60;

/// Aligned columns under an upper-case header, kubectl style.
pub fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().map(Cell::new));
    for row in rows {
        t.add_row(row.iter().map(|c| one_line(c)));
    }
    finish(t)
}

/// `name value` pairs, one a line, values aligned.
pub fn fields(rows: Vec<(&str, String)>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    for (name, value) in rows {
        t.add_row(vec![name.to_owned(), one_line(&value)]);
    }
    finish(t)
}

fn finish(mut t: Table) -> String {
    let n = t.column_count();
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i + 1 == n { 0 } else { 2 }));
    }
    let mut out = String::new();
    for line in t.lines() {
        let line = line.trim_end();
        if !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `s` without control characters other than line breaks: the last guard, over a whole
/// rendered table, against escape sequences in text from the api.
pub fn terminal_safe(s: &str) -> String {
    s.chars()
        .filter(|&c| c == '\n' || !c.is_control())
        .collect()
}

/// A scalar as text: strings bare, `null` or missing as `-`, anything else as compact JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The fields of `v` named by `fields`, each as [`text`] shows it: a table row's plain
/// columns.
pub fn texts(v: &Value, fields: &[&str]) -> Vec<String> {
    fields.iter().map(|f| text(&v[*f])).collect()
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` in UTC (milliseconds when not zero);
/// anything else as [`text`].
pub fn time(v: &Value) -> String {
    match v.as_str().map(DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => {
            let t = t.with_timezone(&Utc);
            if t.timestamp_subsec_millis() == 0 {
                t.format("%Y-%m-%d %H:%M:%S").to_string()
            } else {
                t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
            }
        }
        _ => text(v),
    }
}

/// At most `max` characters of `s`, with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn attempts(t: &Value) -> String {
    format!("{}/{}", text(&t["attempts"]), text(&t["max_attempts"]))
}

/// The fields that identify a task and say where it stands; used after submit, retry
/// and cancel, under `headline`.
pub fn task_summary(headline: &str, t: &Value) -> String {
    let mut out = format!("{}\n", one_line(headline));
    let mut rows = standing(t);
    rows.push(("scheduled (UTC)", time(&t["scheduled_at"])));
    out.push_str(&fields(rows));
    out
}

/// A task's identity and where it stands: the first rows of [`task_summary`] and
/// [`task_detail`].
fn standing(t: &Value) -> Vec<(&'static str, String)> {
    vec![
        ("id", text(&t["id"])),
        ("type", text(&t["type"])),
        ("queue", text(&t["queue"])),
        ("status", text(&t["status"])),
        ("priority", text(&t["priority"])),
        ("attempts", attempts(t)),
    ]
}

/// One task in full, then its history.
pub fn task_detail(t: &Value) -> String {
    let ms = |v: &Value| match v.as_u64() {
        Some(n) => format!("{n} ms"),
        None => text(v),
    };
    let mut rows = standing(t);
    rows.extend([
        ("timeout", ms(&t["timeout_ms"])),
        ("backoff", text(&t["backoff"])),
        ("created (UTC)", time(&t["created_at"])),
        ("scheduled (UTC)", time(&t["scheduled_at"])),
        ("started (UTC)", time(&t["started_at"])),
        ("finished (UTC)", time(&t["finished_at"])),
        ("updated (UTC)", time(&t["updated_at"])),
        ("last error", text(&t["last_error"])),
        ("payload", text(&t["payload"])),
        ("result", text(&t["result"])),
        ("progress", progress(&t["progress"])),
    ]);
    let mut out = fields(rows);
    let events = t["events"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if events.is_empty() {
        out.push_str("\nno events\n");
    } else {
        out.push_str("\nevents:\n");
        out.push_str(&columns(
            &["AT (UTC)", "STATUS", "ATTEMPT", "WORKER", "ERROR"],
            events
                .iter()
                .map(|e| {
                    let mut row = vec![time(&e["at"])];
                    row.extend(texts(e, &["status", "attempt", "worker", "error"]));
                    row
                })
                .collect(),
        ));
    }
    out
}

/// A handler's progress report: its value, then the attempt that made it and when.
fn progress(p: &Value) -> String {
    if p.is_null() {
        return text(p);
    }
    format!(
        "{} (attempt {}, {} UTC)",
        text(&p["value"]),
        text(&p["attempt"]),
        time(&p["at"])
    )
}

/// A page (or all pages) of tasks, with how to get the next page.
pub fn task_list(tasks: &[Value], next_cursor: Option<&str>) -> String {
    let mut out = if tasks.is_empty() {
        "no tasks\n".to_owned()
    } else {
        columns(
            &[
                "ID",
                "TYPE",
                "QUEUE",
                "STATUS",
                "PRIORITY",
                "ATTEMPTS",
                "CREATED (UTC)",
                "LAST ERROR",
            ],
            tasks
                .iter()
                .map(|t| {
                    let mut row = texts(t, &["id", "type", "queue", "status", "priority"]);
                    row.extend([
                        attempts(t),
                        time(&t["created_at"]),
                        clip(&one_line(&text(&t["last_error"])), CLIP),
                    ]);
                    row
                })
                .collect(),
        )
    };
    if let Some(c) = next_cursor {
        out.push_str(&format!(
            "more tasks: add --cursor {} for the next page, or --all\n",
            one_line(c)
        ));
    }
    out
}

/// Queues with their counts.
pub fn queue_list(queues: &[Value]) -> String {
    if queues.is_empty() {
        return "no queues\n".to_owned();
    }
    let yes_no = |v: &Value| match v.as_bool() {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => text(v),
    };
    columns(
        &[
            "NAME",
            "PAUSED",
            "SCHEDULED",
            "QUEUED",
            "RUNNING",
            "RETRYING",
            "DEAD",
            "PROCESSED/1M",
            "FAILED/1M",
            "KEYS",
        ],
        queues
            .iter()
            .map(|q| {
                let c = &q["counts"];
                vec![
                    text(&q["name"]),
                    yes_no(&q["paused"]),
                    text(&c["scheduled"]),
                    text(&c["queued"]),
                    text(&c["running"]),
                    text(&c["retrying"]),
                    text(&c["dead"]),
                    text(&q["processed_1m"]),
                    text(&q["failed_1m"]),
                    text(&q["keys"]["active"]),
                ]
            })
            .collect(),
    )
}

/// One queue: its counts, then its limits and its busiest keys.
pub fn queue_detail(q: &Value) -> String {
    let mut out = queue_list(std::slice::from_ref(q));
    let limits: Vec<String> = q["limits"]
        .as_object()
        .map(|l| {
            l.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect()
        })
        .unwrap_or_default();
    let limits = if limits.is_empty() {
        "none".to_owned()
    } else {
        limits.join(" ")
    };
    out.push_str(&format!(
        "limits: {limits}
"
    ));
    let busiest = q["keys"]["busiest"].as_array().cloned().unwrap_or_default();
    if !busiest.is_empty() {
        out.push_str(
            "busiest keys:
",
        );
        out.push_str(&columns(
            &["KEY", "TASKS", "RUNNING"],
            busiest
                .iter()
                .map(|k| vec![text(&k["key"]), text(&k["tasks"]), text(&k["running"])])
                .collect(),
        ));
    }
    out
}

/// One rejected item of a batch submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub line: usize,
    pub code: String,
    pub message: String,
}

/// The outcome of `taskq submit --file`.
pub fn batch_summary(
    total: usize,
    accepted: usize,
    rejected: &[Rejected],
    not_sent: Option<usize>,
) -> String {
    let mut out = format!(
        "{accepted} of {total} tasks accepted, {} rejected\n",
        rejected.len()
    );
    if let Some(line) = not_sent {
        out.push_str(&format!(
            "not sent: the tasks from line {line} on (resume from there)\n"
        ));
    }
    if !rejected.is_empty() {
        out.push_str(&columns(
            &["LINE", "CODE", "ERROR"],
            rejected
                .iter()
                .map(|r| vec![r.line.to_string(), r.code.clone(), r.message.clone()])
                .collect(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "id": "01a20816-3f28-702c-b4cc-aff1a7daf865",
            "queue": "critical",
            "type": "email",
            "payload": {"to": "a@example.test"},
            "priority": "high",
            "status": "dead",
            "attempts": 3,
            "max_attempts": 3,
            "timeout_ms": 30000,
            "backoff": {"initial_ms": 1000},
            "last_error": "smtp said no\nat all",
            "result": null,
            "created_at": "2026-03-21T10:00:00Z",
            "scheduled_at": "2026-03-21T10:00:05.250Z",
            "started_at": null,
            "finished_at": "2026-03-21T10:01:00+02:00",
            "updated_at": "2026-03-21T10:01:00Z",
            "events": [
                {"status": "queued", "at": "2026-03-21T10:00:00Z", "attempt": 0},
                {"status": "dead", "at": "2026-03-21T10:01:00Z", "attempt": 3, "worker": "w-1", "error": "smtp said no"}
            ]
        })
    }

    #[test]
    fn columns_align_under_the_header_without_trailing_space() {
        let out = columns(
            &["ID", "STATUS"],
            vec![
                vec!["a".into(), "queued".into()],
                vec!["long-id".into(), "dead".into()],
            ],
        );
        assert_eq!(out, "ID       STATUS\na        queued\nlong-id  dead\n");
    }

    #[test]
    fn cells_cannot_break_lines_or_carry_escapes() {
        let out = columns(&["X"], vec![vec!["two\nlines\x1b[2J".into()]]);
        assert_eq!(out, "X\ntwo lines [2J\n");
    }

    #[test]
    fn terminal_safe_keeps_only_line_breaks() {
        assert_eq!(terminal_safe("a\x1b[2J\tb\nc\r"), "a[2Jb\nc");
    }

    #[test]
    fn scalars_and_times() {
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&json!("s")), "s");
        assert_eq!(text(&json!({"a": 1})), "{\"a\":1}");
        assert_eq!(time(&json!("2026-03-21T10:00:00Z")), "2026-03-21 10:00:00");
        assert_eq!(
            time(&json!("2026-03-21T12:00:00.5+02:00")),
            "2026-03-21 10:00:00.500"
        );
        assert_eq!(time(&json!("yesterday")), "yesterday");
        assert_eq!(time(&Value::Null), "-");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn detail_shows_fields_and_events() {
        let out = task_detail(&record());
        assert!(
            out.starts_with("id               01a20816-3f28-702c-b4cc-aff1a7daf865\n"),
            "{out}"
        );
        assert!(out.contains("\nstatus           dead\n"), "{out}");
        assert!(out.contains("\nattempts         3/3\n"), "{out}");
        assert!(out.contains("\ntimeout          30000 ms\n"), "{out}");
        assert!(
            out.contains("\nscheduled (UTC)  2026-03-21 10:00:05.250\n"),
            "{out}"
        );
        assert!(
            out.contains("\nfinished (UTC)   2026-03-21 08:01:00\n"),
            "{out}"
        );
        assert!(out.contains("\nstarted (UTC)    -\n"), "{out}");
        assert!(
            out.contains("\nlast error       smtp said no at all\n"),
            "{out}"
        );
        assert!(
            out.contains("\npayload          {\"to\":\"a@example.test\"}\n"),
            "{out}"
        );
        assert!(
            out.ends_with(
                "events:\n\
                 AT (UTC)             STATUS  ATTEMPT  WORKER  ERROR\n\
                 2026-03-21 10:00:00  queued  0        -       -\n\
                 2026-03-21 10:01:00  dead    3        w-1     smtp said no\n"
            ),
            "{out}"
        );
        assert!(out.contains("\nprogress         -\n"), "{out}");
        let mut bare = record();
        bare["events"] = json!([]);
        assert!(task_detail(&bare).ends_with("\nno events\n"));
        let mut reported = record();
        reported["progress"] =
            json!({"attempt": 2, "value": {"done": 40}, "at": "2026-03-21T10:00:30Z"});
        let out = task_detail(&reported);
        assert!(
            out.contains("\nprogress         {\"done\":40} (attempt 2, 2026-03-21 10:00:30 UTC)\n"),
            "{out}"
        );
    }

    #[test]
    fn list_shows_one_row_per_task_and_the_next_cursor() {
        let mut long = record();
        long["last_error"] = json!("x".repeat(100));
        let out = task_list(&[record(), long], Some("abc"));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("ID  "), "{out}");
        assert!(
            lines[0].ends_with("CREATED (UTC)        LAST ERROR"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("01a20816-3f28-702c-b4cc-aff1a7daf865  email  critical  dead"),
            "{out}"
        );
        assert!(lines[1].ends_with("smtp said no at all"), "{out}");
        assert!(
            lines[2].ends_with(&format!("{}…", "x".repeat(CLIP - 1))),
            "{out}"
        );
        assert_eq!(
            lines[3],
            "more tasks: add --cursor abc for the next page, or --all"
        );
        assert_eq!(task_list(&[], None), "no tasks\n");
    }

    #[test]
    fn queues_show_counts() {
        let out = queue_list(&[json!({
            "name": "default", "paused": true,
            "counts": {"scheduled": 1, "queued": 2, "running": 3, "retrying": 4, "dead": 5},
            "processed_1m": 60, "failed_1m": 7, "keys": {"active": 8, "busiest": []}
        })]);
        assert_eq!(
            out,
            "NAME     PAUSED  SCHEDULED  QUEUED  RUNNING  RETRYING  DEAD  PROCESSED/1M  FAILED/1M  KEYS\n\
             default  yes     1          2       3        4         5     60            7          8\n"
        );
        assert_eq!(queue_list(&[]), "no queues\n");
    }

    #[test]
    fn summary_of_a_submit() {
        let out = task_summary("created", &record());
        assert!(out.starts_with("created\nid "), "{out}");
        assert!(out.contains("\nstatus           dead\n"), "{out}");
    }

    #[test]
    fn batch_summary_lists_rejected_lines() {
        let out = batch_summary(
            5,
            3,
            &[Rejected {
                line: 4,
                code: "invalid_field".into(),
                message: "`type`: empty".into(),
            }],
            Some(9),
        );
        assert_eq!(
            out,
            "3 of 5 tasks accepted, 1 rejected\n\
             not sent: the tasks from line 9 on (resume from there)\n\
             LINE  CODE           ERROR\n\
             4     invalid_field  `type`: empty\n"
        );
        assert_eq!(
            batch_summary(2, 2, &[], None),
            "2 of 2 tasks accepted, 0 rejected\n"
        );
    }
}
