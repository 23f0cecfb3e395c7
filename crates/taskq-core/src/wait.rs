//! The `wait` of `GET /v1/tasks/{id}?wait=…` (and of the CLI's `--wait`): how long a
//! read may wait for its task to finish, parsed the same way everywhere.

use std::time::Duration;

/// The longest wait one request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Parses a wait: a whole number of seconds (`30`) or a humantime duration (`30s`,
/// `1500ms`, `1m`), from 0 to [`MAX_WAIT`]. The error says what is accepted.
pub fn parse_wait(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| {
            format!("`wait` must be seconds or a duration such as 30s or 1500ms ({e})")
        })?,
    };
    if d > MAX_WAIT {
        return Err(format!("`wait` must be at most {}s", MAX_WAIT.as_secs()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_durations_up_to_the_maximum() {
        assert_eq!(parse_wait("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_wait("1m"), Ok(MAX_WAIT));
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        for bad in ["", "-1", "61", "61s", "2m", "soon", "30 parsecs", "1e3"] {
            assert!(parse_wait(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
