//! The CLI's one error type. Every variant renders as a single line (the binary prints it
//! after `error: `), so messages that come from the network are flattened on the way in.

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The api answered with its error body `{"error": {"code", "message"}}`.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No HTTP answer at all: refused, DNS, TLS, timeout.
    #[error("cannot reach the api at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// An HTTP answer that is not what the api sends (a proxy's HTML page, a truncated body).
    #[error("unexpected answer from the api at {url} (HTTP {status}): {what}")]
    BadResponse {
        url: String,
        status: u16,
        what: String,
    },
    /// Bad local input or setting found after argument parsing: a file, a jsonl line, the token.
    #[error("{0}")]
    Input(String),
}

impl Error {
    /// An [`Error::Input`], flattened to one line.
    pub fn input(message: impl AsRef<str>) -> Self {
        Error::Input(one_line(message.as_ref()))
    }

    /// An [`Error::Api`] from untrusted strings, flattened to one line.
    pub fn api(status: u16, code: &str, message: &str) -> Self {
        Error::Api {
            status,
            code: one_line(code),
            message: one_line(message),
        }
    }
}

/// `s` with line breaks and other control characters turned into spaces and runs of
/// whitespace collapsed, so text from the api or the OS can neither break the one-line
/// error contract nor send escape sequences to the terminal.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_render_as_the_contract_says() {
        let e = Error::api(404, "not_found", "no task 42");
        assert_eq!(e.to_string(), "no task 42 (not_found, HTTP 404)");
    }

    #[test]
    fn messages_are_flattened_to_one_line() {
        let e = Error::api(400, "bad\ncode", "line one\n  line two\r\n\x1b[31mred\t");
        assert_eq!(
            e.to_string(),
            "line one line two [31mred (bad code, HTTP 400)"
        );
        assert_eq!(one_line("  padded  "), "padded");
    }
}
