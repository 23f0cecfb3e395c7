//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>): reading a
//! header value, and the `traceparent` that new work carries so that it joins the trace.
//!
//! A value is accepted only in the form this crate itself writes: four `-`-separated
//! fields of lowercase hex, a version `00` to `fe` (2 digits), a trace id (32 digits) and
//! a parent id (16 digits) that are not all zeros, and flags (2 digits).

/// A well-formed `traceparent` value (see the module's rules), borrowed from the text it
/// was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent<'a> {
    /// The whole value, trimmed; its fields start at 0, 3, 36 and 53.
    value: &'a str,
}

impl<'a> TraceParent<'a> {
    /// `value`, trimmed of surrounding white space, when it is well-formed.
    pub fn parse(value: &'a str) -> Option<Self> {
        let value = value.trim();
        let mut fields = value.split('-');
        let (Some(version), Some(trace_id), Some(parent_id), Some(flags), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return None;
        };
        let ok = lower_hex(version, 2)
            && version != "ff"
            && lower_hex(trace_id, 32)
            && !all_zeros(trace_id)
            && lower_hex(parent_id, 16)
            && !all_zeros(parent_id)
            && lower_hex(flags, 2);
        ok.then_some(Self { value })
    }

    /// The value as it was given (trimmed).
    pub fn as_str(self) -> &'a str {
        self.value
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(self) -> &'a str {
        &self.value[3..35]
    }

    /// The id of the caller's span: 16 lowercase hex digits.
    pub fn parent_id(self) -> &'a str {
        &self.value[36..52]
    }
}

/// Whether `s` is `len` lowercase hex digits.
fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn all_zeros(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// The `traceparent` new work carries (a submitted task, so that its attempts join the
/// trace): `span`'s when it is being traced, so the work becomes its child; otherwise
/// `incoming` (the caller's header) when well-formed, passed through trimmed.
pub fn carried(span: &tracing::Span, incoming: Option<&str>) -> Option<String> {
    if let Some(tp) = crate::traceparent(span) {
        return Some(tp);
    }
    incoming
        .and_then(TraceParent::parse)
        .map(|tp| tp.as_str().to_owned())
}

/// The trace id to log for work in `span`: the span's own when it is being traced,
/// otherwise the one in `incoming` (the caller's `traceparent`) when well-formed.
pub fn trace_id(span: &tracing::Span, incoming: Option<&str>) -> Option<String> {
    crate::trace_id(span).or_else(|| {
        incoming
            .and_then(TraceParent::parse)
            .map(|tp| tp.trace_id().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_value_is_read_field_by_field() {
        let tp = TraceParent::parse(GOOD);
        assert_eq!(tp.map(TraceParent::as_str), Some(GOOD));
        assert_eq!(
            tp.map(TraceParent::trace_id),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(tp.map(TraceParent::parent_id), Some("00f067aa0ba902b7"));
        // Surrounding white space is dropped; other versions than 00 pass too.
        let padded = format!(" \t{GOOD} ");
        assert_eq!(
            TraceParent::parse(&padded).map(TraceParent::as_str),
            Some(GOOD)
        );
        let v1 = "fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(TraceParent::parse(v1).is_some());
    }

    /// Values refused, grouped by why.
    const REFUSED: [(&str, &[&str]); 4] = [
        (
            "version ff or malformed",
            &[
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ],
        ),
        (
            "an all-zero id",
            &[
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ],
        ),
        (
            "not lowercase hex",
            &[
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
                "00-4bf92f3577b34da6a3ce929d0e0é736-00f067aa0ba902b7-01",
            ],
        ),
        (
            "a wrong length or field count",
            &[
                "",
                "garbage",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b70-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab",
            ],
        ),
    ];

    #[test]
    fn malformed_values_are_refused() {
        for (why, values) in REFUSED {
            for bad in values {
                assert_eq!(TraceParent::parse(bad), None, "{why}: {bad:?}");
            }
        }
    }

    #[test]
    fn without_a_traced_span_the_incoming_trace_id_is_logged() {
        let span = tracing::Span::none();
        assert_eq!(trace_id(&span, None), None);
        assert_eq!(trace_id(&span, Some("garbage")), None);
        assert_eq!(
            trace_id(&span, Some(GOOD)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn without_a_traced_span_the_well_formed_incoming_value_is_carried() {
        let span = tracing::Span::none();
        assert_eq!(carried(&span, None), None);
        assert_eq!(carried(&span, Some(" garbage ")), None);
        assert_eq!(
            carried(&span, Some(&format!(" {GOOD}"))),
            Some(GOOD.to_owned())
        );
    }
}
