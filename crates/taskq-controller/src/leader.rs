//! Leader election on a `coordination.k8s.io/v1` Lease, so that several controller
//! replicas can run and only one scales.
//!
//! The algorithm is client-go's: a candidate reads the Lease; it takes it when nobody
//! holds it, or when the holder's record (holder, renew time, transitions) has not changed
//! for the lease duration *as measured by the candidate's own monotonic clock* (no trust
//! in other machines' wall clocks). Every write is a `replace` carrying the
//! `resourceVersion` that was read, so two candidates racing for the same Lease cannot
//! both win: the loser gets 409 Conflict. The leader renews every retry period and
//! considers itself leader only until `renew_deadline` after its last successful renewal;
//! because `renew_deadline < lease_duration`, it stops acting before anyone else may take
//! over. On shutdown the leader releases the Lease (empty holder), so a standby takes
//! over within one retry period instead of one lease duration.
//!
//! API calls: `get`, `create` and `update` (replace) on `leases`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;

/// Where the Lease is, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This candidate's identity (the pod name in a cluster).
    pub identity: String,
    /// How long others wait after the last change of the record before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Checks `retry_period < renew_deadline < lease_duration` (and whole seconds for
    /// the lease duration, which is what a Lease stores).
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err("the lease duration must be at least 1 second".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline || self.retry_period.is_zero() {
            return Err(format!(
                "the retry period ({:?}) must be positive and shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.identity.is_empty() || self.name.is_empty() {
            return Err("the lease name and the identity must not be empty".into());
        }
        Ok(())
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// A shared, cheap view of whether this process may act as the leader right now, and of
/// when the API server last answered the election.
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    /// Until when the last successful renewal makes us leader; `None` when not leader.
    valid_until: Arc<std::sync::Mutex<Option<Instant>>>,
    /// When the last Lease read or write succeeded.
    last_contact: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Leadership {
    /// A view that is never leader until an [`Elector`] says so.
    pub fn new() -> Self {
        Self::default()
    }

    /// A view that is always leader (one controller without election, and unit tests).
    pub fn always() -> Self {
        let l = Self::new();
        l.set(Some(
            Instant::now() + Duration::from_secs(100 * 365 * 86_400),
        ));
        l
    }

    /// Whether the last renewal is recent enough to act on.
    pub fn is_leader(&self) -> bool {
        self.get().is_some_and(|until| Instant::now() < until)
    }

    /// When the API server last answered a Lease read or write (`None`: never).
    pub fn last_contact(&self) -> Option<Instant> {
        *self
            .last_contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn touch(&self) {
        *self
            .last_contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    fn get(&self) -> Option<Instant> {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, until: Option<Instant>) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = until;
    }
}

/// The part of a Lease whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
    resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.clone()),
            transitions: spec.and_then(|s| s.lease_transitions),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// How a term of leadership ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermEnd {
    /// Renewal failed for longer than the renew deadline, or another holder took over.
    Lost,
    /// The stop token was cancelled.
    Stopped,
}

/// One candidate for the Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    leadership: Leadership,
    /// The last record read and when (our clock) it was first seen with that content.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig, leadership: Leadership) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        Self {
            api,
            config,
            leadership,
            observed: None,
        }
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Notes what was read; the clock restarts only when the record changed.
    fn observe(&mut self, lease: &Lease, read_at: Instant) {
        let record = Record::of(lease);
        match &self.observed {
            Some((r, _)) if *r == record => {}
            _ => self.observed = Some((record, read_at)),
        }
    }

    /// One attempt: takes the Lease when free or expired, renews it when ours. Returns
    /// whether we hold it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let read = self.api.get_opt(&self.config.name).await?;
        self.leadership.touch();
        let Some(mut lease) = read else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.config.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, started);
                    self.renewed(started);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease, started);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.config.identity.as_str());
        if let Some(other) = holder
            && !mine
        {
            // The holder's own duration decides when its record goes stale.
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.config.lease_duration);
            let seen_since = self.observed.as_ref().map_or(started, |(_, at)| *at);
            if seen_since.elapsed() < duration {
                tracing::trace!(holder = other, "lease held by another candidate");
                return Ok(false);
            }
            tracing::info!(holder = other, "lease expired; taking it over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.duration_seconds()),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if mine {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // `lease` carries the resourceVersion we read: a concurrent writer makes this 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated, started);
                self.renewed(started);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn renewed(&self, attempt_started: Instant) {
        self.leadership
            .set(Some(attempt_started + self.config.renew_deadline));
    }

    /// Tries every retry period (with jitter) until this candidate holds the Lease
    /// (`true`) or `stop` is cancelled (`false`). Errors are logged and retried.
    pub async fn acquire(&mut self, stop: &CancellationToken) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(
                        lease = %self.config.name,
                        identity = %self.config.identity,
                        "became the leader"
                    );
                    return true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reading or taking the lease failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(jittered(self.config.retry_period)) => {}
            }
        }
    }

    /// Renews the Lease every retry period while leader. Returns [`TermEnd::Lost`] as soon
    /// as another holder shows up or no renewal has succeeded for the renew deadline
    /// (leadership is withdrawn first), [`TermEnd::Stopped`] when `stop` is cancelled.
    pub async fn hold(&mut self, stop: &CancellationToken) -> TermEnd {
        loop {
            tokio::select! {
                () = stop.cancelled() => return TermEnd::Stopped,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
            let Some(until) = self.leadership.get() else {
                return TermEnd::Lost;
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.lost("no renewal within the renew deadline");
                return TermEnd::Lost;
            }
            let attempt = tokio::time::timeout(left, self.try_acquire_or_renew());
            let outcome = tokio::select! {
                () = stop.cancelled() => return TermEnd::Stopped,
                r = attempt => r,
            };
            match outcome {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    self.lost("another candidate holds the lease");
                    return TermEnd::Lost;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease failed; retrying"),
                Err(_) => {
                    self.lost("renewal did not finish within the renew deadline");
                    return TermEnd::Lost;
                }
            }
        }
    }

    fn lost(&self, why: &str) {
        self.leadership.set(None);
        tracing::warn!(lease = %self.config.name, reason = why, "lost leadership");
    }

    /// Gives the Lease up (empty holder, 1 s duration) if we hold it, so a standby takes
    /// over at once. Leadership is withdrawn first, whatever the outcome.
    pub async fn release(&mut self) {
        self.leadership.set(None);
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok::<bool, kube::Error>(false);
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let now = MicroTime(Timestamp::now());
            lease.spec = Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(now),
                ..spec
            });
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await?;
            Ok(true)
        };
        match tokio::time::timeout(self.config.renew_deadline, result).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.config.name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }
}

/// `d` plus up to 20 % (so candidates started together do not stay in lockstep).
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn timings_must_nest() {
        assert!(config().validate().is_ok());
        for bad in [
            LeaseConfig {
                renew_deadline: Duration::from_secs(15),
                ..config()
            },
            LeaseConfig {
                retry_period: Duration::from_secs(10),
                ..config()
            },
            LeaseConfig {
                lease_duration: Duration::from_millis(500),
                renew_deadline: Duration::from_millis(400),
                retry_period: Duration::from_millis(100),
                ..config()
            },
            LeaseConfig {
                identity: String::new(),
                ..config()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn leadership_expires_on_its_own() {
        let l = Leadership::new();
        assert!(!l.is_leader());
        l.set(Some(Instant::now() + Duration::from_secs(60)));
        assert!(l.is_leader());
        l.set(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!l.is_leader());
        assert!(Leadership::always().is_leader());
    }
}
