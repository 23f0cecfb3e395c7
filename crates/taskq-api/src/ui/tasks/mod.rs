//! The task pages: the search list (filters in the URL, so a filtered view is a link
//! to share), the detail of one task, and the actions on tasks: retry, cancel and
//! delete, on one task, on a selection, or on everything a filter matches. Bulk actions
//! first answer with a confirmation stating how many tasks they touch, and never touch
//! more than that number.
//!
//! Retry goes through `transitions::retry::retry` (the function behind `POST /v1/tasks/{id}/retry`
//! and `retry-dead`), cancel through the `POST /v1/tasks/{id}/cancel` handler, delete
//! through [`taskq_store::Store::delete_finished`] (finished tasks only: Redis holds
//! nothing of them).

use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{Markup, html};
use taskq_core::TaskStatus;
use taskq_store::Search;

use super::layout::UiError;
use super::session::url_encode;

mod actions;
mod detail;
mod list;

pub use actions::{action, bulk};
pub use detail::detail;
pub use list::list;

/// The list's filters, as they appear in its URL.
#[derive(Clone, Debug, Default)]
struct Filter {
    queue: String,
    status: String,
    kind: String,
    from: String,
    to: String,
    text: String,
    oldest: bool,
}

const FILTER_KEYS: [&str; 7] = ["queue", "status", "type", "from", "to", "q", "sort"];

fn pairs_of(query: &str) -> Vec<(String, String)> {
    super::session::form_urlencoded_parse(query.as_bytes())
}

impl Filter {
    fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let val = |k: &str| get(k).map(str::trim).unwrap_or_default().to_owned();
        Self {
            queue: val("queue"),
            status: val("status"),
            kind: val("type"),
            from: val("from"),
            to: val("to"),
            text: get("q").unwrap_or_default().to_owned(),
            oldest: get("sort") == Some("oldest"),
        }
    }

    /// The text fields of this filter with their URL query names.
    fn fields(&self) -> [(&'static str, &str); 6] {
        [
            ("queue", &self.queue),
            ("status", &self.status),
            ("type", &self.kind),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.text),
        ]
    }

    /// The URL query of this filter (without cursor).
    fn query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in self.fields() {
            if !v.is_empty() {
                parts.push(format!("{k}={}", url_encode(v)));
            }
        }
        if self.oldest {
            parts.push("sort=oldest".into());
        }
        parts.join("&")
    }

    /// The store's search for this filter; a bad value is a 400 naming it.
    fn search(&self) -> Result<Search, UiError> {
        let bad = |m: String| UiError::bad_request(m);
        let queue = (!self.queue.is_empty())
            .then(|| {
                self.queue
                    .parse()
                    .map_err(|e: taskq_core::queue::InvalidQueueName| bad(e.to_string()))
            })
            .transpose()?;
        let status = (!self.status.is_empty())
            .then(|| {
                self.status
                    .parse::<TaskStatus>()
                    .map_err(|e| bad(e.to_string()))
            })
            .transpose()?;
        if self.kind.len() > taskq_core::validate::MAX_TYPE_LEN {
            return Err(bad("`type` is longer than 128 characters".into()));
        }
        if self.text.len() > 256 {
            return Err(bad("the search text is longer than 256 characters".into()));
        }
        Ok(Search {
            queue,
            status,
            kind: (!self.kind.is_empty()).then(|| self.kind.clone()),
            from: parse_time(&self.from, "from")?,
            to: parse_time(&self.to, "to")?,
            text: (!self.text.is_empty()).then(|| self.text.clone()),
            oldest_first: self.oldest,
        })
    }

    fn hidden(&self) -> Markup {
        html! {
            @for (k, v) in [("queue", &self.queue), ("status", &self.status), ("type", &self.kind),
                            ("from", &self.from), ("to", &self.to), ("q", &self.text)] {
                @if !v.is_empty() { input type="hidden" name=(k) value=(v); }
            }
            @if self.oldest { input type="hidden" name="sort" value="oldest"; }
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in self.fields() {
            if !v.is_empty() {
                let k = if k == "q" { "text" } else { k };
                parts.push(format!("{k} = {v}"));
            }
        }
        if parts.is_empty() {
            "every task".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A time of a filter: `YYYY-MM-DDTHH:MM[:SS]` (the browser's `datetime-local`, taken
/// as UTC) or RFC 3339.
fn parse_time(s: &str, field: &str) -> Result<Option<DateTime<Utc>>, UiError> {
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(UiError::bad_request(format!(
        "`{field}` must be a time like 2026-12-01T06:30 (UTC)"
    )))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn filters_round_trip_through_the_url() {
        let f = Filter {
            queue: "emails".into(),
            status: "dead".into(),
            kind: "send mail".into(),
            text: "a&b=c".into(),
            oldest: true,
            ..Filter::default()
        };
        let q = f.query();
        let pairs = pairs_of(&q);
        let back =
            Filter::from_lookup(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()));
        assert_eq!(back.query(), q);
        assert_eq!(back.text, "a&b=c");
        assert!(back.oldest);
    }

    #[test]
    fn bad_filter_values_are_refused() {
        for f in [
            Filter {
                status: "finished".into(),
                ..Filter::default()
            },
            Filter {
                queue: "bad queue".into(),
                ..Filter::default()
            },
            Filter {
                from: "yesterday".into(),
                ..Filter::default()
            },
        ] {
            let e = f.search().err().map(|e| e.status);
            assert_eq!(e, Some(StatusCode::BAD_REQUEST), "{f:?}");
        }
        let ok = Filter {
            from: "2026-12-01T06:30".into(),
            ..Filter::default()
        };
        assert!(ok.search().is_ok());
    }
}
