//! Queue names and the order in which a worker visits the queues it serves.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest queue name accepted.
pub const MAX_QUEUE_NAME_LEN: usize = 64;

/// A queue name: 1–64 characters from `[A-Za-z0-9_.:-]`. Braces are excluded because the
/// broker wraps the name in a Redis Cluster hash tag (`{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(
    value_type = String,
    pattern = "^[A-Za-z0-9_.:-]{1,64}$",
    example = "default"
)]
pub struct QueueName(String);

impl QueueName {
    /// The queue every task without an explicit queue goes to.
    pub fn default_queue() -> Self {
        Self("default".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for QueueName {
    fn default() -> Self {
        Self::default_queue()
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text is not a valid queue name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid queue name `{0}`: use 1-{MAX_QUEUE_NAME_LEN} characters from letters, digits, `_`, `.`, `:` and `-`"
)]
pub struct InvalidQueueName(pub String);

impl FromStr for QueueName {
    type Err = InvalidQueueName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_QUEUE_NAME_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidQueueName(s.chars().take(80).collect()))
        }
    }
}

impl TryFrom<String> for QueueName {
    type Error = InvalidQueueName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<QueueName> for String {
    fn from(q: QueueName) -> Self {
        q.0
    }
}

/// Queues with relative weights, parsed from `critical=6,default=3,low=1`. A queue
/// written without `=weight` has weight 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueWeights(Vec<(QueueName, u32)>);

/// The queue list could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidQueueWeights {
    #[error("no queues given")]
    Empty,
    #[error(transparent)]
    Name(#[from] InvalidQueueName),
    #[error("invalid weight `{0}`: use an integer from 1 to 1000")]
    Weight(String),
    #[error("queue `{0}` is listed twice")]
    Duplicate(String),
}

impl QueueWeights {
    /// The queues and their weights, in the order given.
    pub fn entries(&self) -> &[(QueueName, u32)] {
        &self.0
    }

    /// The queue names, in the order given.
    pub fn names(&self) -> impl Iterator<Item = &QueueName> {
        self.0.iter().map(|(q, _)| q)
    }
}

impl FromStr for QueueWeights {
    type Err = InvalidQueueWeights;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out: Vec<(QueueName, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => {
                    let w = w
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(|| InvalidQueueWeights::Weight(w.trim().to_owned()))?;
                    (n.trim(), w)
                }
                None => (part, 1),
            };
            let name: QueueName = name.parse()?;
            if out.iter().any(|(q, _)| *q == name) {
                return Err(InvalidQueueWeights::Duplicate(name.0));
            }
            out.push((name, weight));
        }
        if out.is_empty() {
            return Err(InvalidQueueWeights::Empty);
        }
        Ok(Self(out))
    }
}

/// How a worker picks the next queue to take work from.
#[derive(Clone, Debug)]
pub struct QueueSelection {
    weights: QueueWeights,
    strict: bool,
}

impl QueueSelection {
    /// `strict`: always drain higher-weight queues first (a lower queue is served only
    /// when every higher one is empty). Otherwise each fetch visits the queues in a random
    /// order where a queue comes first with probability proportional to its weight, so
    /// no queue starves.
    pub fn new(weights: QueueWeights, strict: bool) -> Self {
        Self { weights, strict }
    }

    pub fn weights(&self) -> &QueueWeights {
        &self.weights
    }

    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// The order in which to visit the queues for one fetch.
    pub fn order<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<&QueueName> {
        let mut pool: Vec<&(QueueName, u32)> = self.weights.0.iter().collect();
        if self.strict {
            // Stable: queues of equal weight keep their configured order.
            pool.sort_by_key(|e| std::cmp::Reverse(e.1));
            return pool.into_iter().map(|(q, _)| q).collect();
        }
        let mut out = Vec::with_capacity(pool.len());
        while !pool.is_empty() {
            let total: u32 = pool.iter().map(|(_, w)| *w).sum();
            let mut pick = rng.random_range(0..total);
            let idx = pool
                .iter()
                .position(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= *w;
                        false
                    }
                })
                .unwrap_or(0);
            out.push(&pool.remove(idx).0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn weights(s: &str) -> QueueWeights {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_weights() {
        let w = weights("critical=6, default=3,low");
        let got: Vec<(&str, u32)> = w.entries().iter().map(|(q, w)| (q.as_str(), *w)).collect();
        assert_eq!(got, vec![("critical", 6), ("default", 3), ("low", 1)]);
        let error = |text: &str| match text.parse::<QueueWeights>() {
            Ok(_) => "none",
            Err(InvalidQueueWeights::Empty) => "empty",
            Err(InvalidQueueWeights::Weight(_)) => "weight",
            Err(InvalidQueueWeights::Duplicate(_)) => "duplicate",
            Err(InvalidQueueWeights::Name(_)) => "name",
        };
        assert_eq!(error(""), "empty");
        assert_eq!(error("a=0"), "weight");
        assert_eq!(error("a=x"), "weight");
        assert_eq!(error("a,a"), "duplicate");
        assert_eq!(error("{a}"), "name");
    }

    #[test]
    fn strict_order_follows_weights() {
        let sel = QueueSelection::new(weights("low=1,critical=6,default=3"), true);
        let mut rng = StdRng::seed_from_u64(3);
        let order: Vec<&str> = sel.order(&mut rng).iter().map(|q| q.as_str()).collect();
        assert_eq!(order, vec!["critical", "default", "low"]);
    }

    #[test]
    fn weighted_order_is_proportional() {
        let sel = QueueSelection::new(weights("critical=6,default=3,low=1"), false);
        let mut rng = StdRng::seed_from_u64(11);
        let mut first = std::collections::HashMap::new();
        for _ in 0..10_000 {
            let order = sel.order(&mut rng);
            assert_eq!(order.len(), 3);
            *first.entry(order[0].as_str().to_owned()).or_insert(0u32) += 1;
        }
        let share = |q: &str| f64::from(first[q]) / 10_000.0;
        assert!((share("critical") - 0.6).abs() < 0.03, "{first:?}");
        assert!((share("default") - 0.3).abs() < 0.03, "{first:?}");
        assert!((share("low") - 0.1).abs() < 0.03, "{first:?}");
    }

    #[test]
    fn queue_names() {
        assert!("emails.v2:eu-west_1".parse::<QueueName>().is_ok());
        for bad in ["", "a b", "{x}", "é", &"q".repeat(65)] {
            assert!(bad.parse::<QueueName>().is_err(), "{bad}");
        }
    }
}
