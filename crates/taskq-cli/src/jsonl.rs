//! Reading a JSON-lines file of tasks for `taskq submit --file`.
//!
//! Invariant: either every non-blank line is a JSON object and all of them are returned
//! with their 1-based line numbers, or the first bad line is reported and nothing is
//! returned, so a file with a typo is never half-submitted. Whether an object is a valid
//! task is left to the api, which reports each item on its own.

use serde_json::Value;

/// One task read from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    /// The task object, sent as is.
    pub task: Value,
}

/// The first line that is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {number}: {message}")]
pub struct LineError {
    pub number: usize,
    pub message: String,
}

/// Parses `bytes` as JSON lines: blank lines (also `\r\n` endings and a leading UTF-8
/// byte-order mark) are skipped, every other line must be one JSON object.
pub fn parse(bytes: &[u8]) -> Result<Vec<Line>, LineError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut tasks = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = i + 1;
        let err = |message: String| LineError { number, message };
        let text = std::str::from_utf8(raw)
            .map_err(|e| err(format!("not valid UTF-8 (byte {})", e.valid_up_to() + 1)))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let task: Value = serde_json::from_str(text).map_err(|e| err(json_error(&e)))?;
        if !task.is_object() {
            return Err(err(format!(
                "expected a JSON object (one task), found {}",
                kind(&task)
            )));
        }
        tasks.push(Line { number, task });
    }
    Ok(tasks)
}

/// serde_json's message with the column instead of its "line 1 column N" suffix, which
/// would be misleading for one line of a bigger file.
fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    format!("not valid JSON: {message} (column {})", e.column())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_lines_and_skips_blank_ones() {
        let input = b"\xEF\xBB\xBF{\"type\":\"a\"}\r\n\n   \n{\"type\":\"b\",\"payload\":[1]}\n\n";
        let lines = parse(input).expect("valid");
        assert_eq!(
            lines,
            vec![
                Line {
                    number: 1,
                    task: json!({"type": "a"})
                },
                Line {
                    number: 4,
                    task: json!({"type": "b", "payload": [1]})
                },
            ]
        );
    }

    #[test]
    fn empty_input_has_no_tasks() {
        assert_eq!(parse(b""), Ok(vec![]));
        assert_eq!(parse(b"\n\n"), Ok(vec![]));
    }

    #[test]
    fn reports_the_first_line_that_is_not_json() {
        let e = parse(b"{\"type\":\"a\"}\n\n{\"type\": nope}\n{oops").expect_err("bad line");
        assert_eq!(e.number, 3);
        assert!(e.message.starts_with("not valid JSON: "), "{e}");
        assert!(e.message.ends_with("(column 11)"), "{e}");
        assert!(!e.message.contains("line 1"), "{e}");
        assert!(e.to_string().starts_with("line 3: "), "{e}");
    }

    #[test]
    fn a_line_must_hold_one_object() {
        let e = parse(b"{\"type\":\"a\"}\n[1,2]").expect_err("array");
        assert_eq!(
            e,
            LineError {
                number: 2,
                message: "expected a JSON object (one task), found an array".into()
            }
        );
        let e = parse(b"{\"type\":\"a\"} {\"type\":\"b\"}").expect_err("two values");
        assert_eq!(e.number, 1);
    }

    #[test]
    fn reports_invalid_utf8_with_its_line() {
        let e = parse(b"{\"type\":\"a\"}\n{\"type\":\"\xff\"}").expect_err("utf8");
        assert_eq!(e.number, 2);
        assert!(e.message.contains("UTF-8"), "{e}");
    }
}
