//! Fault injection: which API requests fail, hang or slow down, and for how long.
//!
//! Owns the [`Fault`] description (match by RBAC verb and resource; a status with its proper
//! `Status` body, `Retry-After`, latency, hang; deterministic rate, count and duration) and the
//! per-cluster set that decides, request by request, what applies. It never performs the
//! effect itself: the API layer sleeps, answers or hangs.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::ms_opt;
use super::status::ApiError;

/// The RBAC verb of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    Deletecollection,
}

impl Verb {
    /// The verb as RBAC spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::Deletecollection => "deletecollection",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault to inject into one cluster's API.
///
/// Build one with [`Fault::status`], [`Fault::hang`] or [`Fault::latency`] and narrow it with
/// the builder methods; as JSON (control API) every field is optional:
/// `{"verbs":["create"],"resources":["pods"],"status":504,"after_commit":true,"count":1}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Verbs it applies to; `None` = all.
    pub verbs: Option<Vec<Verb>>,
    /// Resources it applies to (`pods`, `secrets`, `leases`); `None` = all.
    pub resources: Option<Vec<String>>,
    /// HTTP status to answer.
    pub status: Option<u16>,
    /// Status reason instead of the usual one for the code.
    pub reason: Option<String>,
    /// Status message instead of the usual one for the code.
    pub message: Option<String>,
    /// `Retry-After` header (and `details.retryAfterSeconds`).
    pub retry_after_secs: Option<u32>,
    /// Delay added before the request is handled.
    #[serde(rename = "latency_ms", with = "ms_opt")]
    pub latency: Option<Duration>,
    /// Never answer; the connection stays open until the client gives up.
    pub hang: bool,
    /// Carry the request out first, then answer the failure (or hang): the write happened
    /// but the client sees an error.
    pub after_commit: bool,
    /// Fraction of matching requests affected, deterministic (0.25 = every 4th).
    pub rate: Option<f64>,
    /// Only the next N affected requests.
    pub count: Option<u32>,
    /// The fault expires this long after injection.
    #[serde(rename = "duration_ms", with = "ms_opt")]
    pub duration: Option<Duration>,
}

impl Fault {
    /// Answer `code` with the usual Status body for it.
    pub fn status(code: u16) -> Self {
        Self {
            status: Some(code),
            ..Self::default()
        }
    }

    /// Never answer.
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::default()
        }
    }

    /// Add `d` before handling the request normally.
    pub fn latency(d: Duration) -> Self {
        Self {
            latency: Some(d),
            ..Self::default()
        }
    }

    /// Only for these verbs.
    #[must_use]
    pub fn on_verbs(mut self, verbs: impl IntoIterator<Item = Verb>) -> Self {
        self.verbs = Some(verbs.into_iter().collect());
        self
    }

    /// Only for these resources.
    #[must_use]
    pub fn on_resources<I, S>(mut self, resources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.resources = Some(resources.into_iter().map(Into::into).collect());
        self
    }

    /// Send `Retry-After: secs`.
    #[must_use]
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Override the Status reason and message.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>, message: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self.message = Some(message.into());
        self
    }

    /// Also delay the answer by `d`.
    #[must_use]
    pub fn with_latency(mut self, d: Duration) -> Self {
        self.latency = Some(d);
        self
    }

    /// Carry the request out before failing.
    #[must_use]
    pub fn after_commit(mut self) -> Self {
        self.after_commit = true;
        self
    }

    /// Affect only this fraction of matching requests.
    #[must_use]
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Affect only the next `n` matching requests.
    #[must_use]
    pub fn count(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }

    /// Expire after `d`.
    #[must_use]
    pub fn lasting(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }

    /// Problems that make the fault meaningless.
    pub fn check(&self) -> Result<(), String> {
        if self.hang && self.status.is_some() {
            return Err("a fault either hangs or answers a status, not both".into());
        }
        if let Some(code) = self.status
            && !(400..=599).contains(&code)
        {
            return Err(format!("status {code} is not an error status"));
        }
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            return Err(format!("rate {rate} is not in (0, 1]"));
        }
        if !self.hang && self.status.is_none() && self.latency.is_none() {
            return Err("a fault needs a status, hang or latency".into());
        }
        Ok(())
    }

    fn matches(&self, verb: Verb, resource: &str) -> bool {
        self.verbs.as_ref().is_none_or(|v| v.contains(&verb))
            && self
                .resources
                .as_ref()
                .is_none_or(|r| r.iter().any(|x| x == resource))
    }
}

/// Handle of an injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FaultId(pub u64);

/// What a request suffers.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Answer this error (after carrying the request out when `after_commit`).
    Fail {
        /// The answer.
        error: ApiError,
        /// Carry the request out first.
        after_commit: bool,
    },
    /// Never answer (after carrying the request out when `after_commit`).
    Hang {
        /// Carry the request out first.
        after_commit: bool,
    },
}

/// The faults that apply to one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Delay before handling.
    pub latency: Duration,
    /// Failure or hang, if any.
    pub effect: Option<Effect>,
}

#[derive(Debug)]
struct Active {
    id: FaultId,
    fault: Fault,
    credit: f64,
    remaining: Option<u32>,
    expires: Option<Instant>,
}

impl Active {
    /// The deterministic rate gate: credit accumulates `rate` per matching request and a
    /// request is affected whenever a whole unit is available.
    fn admit(&mut self) -> bool {
        match self.fault.rate {
            None => true,
            Some(rate) => {
                self.credit += rate;
                if self.credit >= 1.0 - 1e-9 {
                    self.credit -= 1.0;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// The faults injected into one cluster.
#[derive(Debug, Default)]
pub struct FaultSet {
    next: u64,
    active: Vec<Active>,
}

impl FaultSet {
    /// Adds a fault, active from `now`.
    pub fn inject(&mut self, fault: Fault, now: Instant) -> FaultId {
        self.next += 1;
        let id = FaultId(self.next);
        let expires = fault.duration.map(|d| now + d);
        self.active.push(Active {
            id,
            remaining: fault.count,
            fault,
            credit: 0.0,
            expires,
        });
        id
    }

    /// Removes one fault; false when it was already gone.
    pub fn remove(&mut self, id: FaultId) -> bool {
        let before = self.active.len();
        self.active.retain(|a| a.id != id);
        before != self.active.len()
    }

    /// Removes every fault.
    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// True when no fault is active.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Decides what a request with this verb and resource suffers. Latency-only faults add
    /// up; the first matching failing or hanging fault (in injection order) decides the rest.
    pub fn decide(&mut self, verb: Verb, resource: &str, now: Instant) -> Decision {
        self.active
            .retain(|a| a.expires.is_none_or(|e| now < e) && a.remaining != Some(0));
        let mut decision = Decision::default();
        for a in &mut self.active {
            if !a.fault.matches(verb, resource) || !a.admit() {
                continue;
            }
            if let Some(n) = a.remaining.as_mut() {
                *n -= 1;
            }
            if let Some(l) = a.fault.latency {
                decision.latency += l;
            }
            if a.fault.hang {
                decision.effect = Some(Effect::Hang {
                    after_commit: a.fault.after_commit,
                });
                break;
            }
            if let Some(code) = a.fault.status {
                let error = ApiError::injected(
                    code,
                    a.fault.reason.as_deref(),
                    a.fault.message.as_deref(),
                    a.fault.retry_after_secs,
                );
                decision.effect = Some(Effect::Fail {
                    error,
                    after_commit: a.fault.after_commit,
                });
                break;
            }
        }
        self.active.retain(|a| a.remaining != Some(0));
        decision
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn fails(d: &Decision) -> bool {
        matches!(d.effect, Some(Effect::Fail { .. }))
    }

    #[test]
    fn count_limits_the_affected_requests() {
        let mut set = FaultSet::default();
        let now = Instant::now();
        set.inject(Fault::status(500).count(2), now);
        let hits: Vec<bool> = (0..4)
            .map(|_| fails(&set.decide(Verb::Get, "pods", now)))
            .collect();
        assert_eq!(hits, vec![true, true, false, false]);
        assert!(set.is_empty());
    }

    #[test]
    fn verbs_and_resources_narrow_the_match() {
        let mut set = FaultSet::default();
        let now = Instant::now();
        set.inject(
            Fault::status(503)
                .on_verbs([Verb::Create])
                .on_resources(["pods"]),
            now,
        );
        assert!(!fails(&set.decide(Verb::Get, "pods", now)));
        assert!(!fails(&set.decide(Verb::Create, "secrets", now)));
        assert!(fails(&set.decide(Verb::Create, "pods", now)));
    }

    #[test]
    fn duration_expires_the_fault() {
        let mut set = FaultSet::default();
        let now = Instant::now();
        set.inject(Fault::status(500).lasting(Duration::from_secs(1)), now);
        assert!(fails(&set.decide(Verb::Get, "pods", now)));
        assert!(!fails(&set.decide(
            Verb::Get,
            "pods",
            now + Duration::from_secs(2)
        )));
    }

    #[test]
    fn latency_adds_up_and_the_first_failure_wins() {
        let mut set = FaultSet::default();
        let now = Instant::now();
        set.inject(Fault::latency(Duration::from_millis(5)), now);
        set.inject(Fault::status(429).retry_after(2), now);
        set.inject(Fault::status(500), now);
        let d = set.decide(Verb::List, "pods", now);
        assert_eq!(d.latency, Duration::from_millis(5));
        match d.effect {
            Some(Effect::Fail { error, .. }) => {
                assert_eq!(error.code, 429);
                assert_eq!(error.retry_after, Some(2));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn faults_read_from_json() {
        let f: Fault = serde_json::from_str(
            r#"{"verbs":["create"],"status":504,"after_commit":true,"latency_ms":10}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Fault::status(504)
                .on_verbs([Verb::Create])
                .after_commit()
                .with_latency(Duration::from_millis(10))
        );
        assert!(Fault::default().check().is_err());
        assert!(
            Fault {
                hang: true,
                status: Some(500),
                ..Fault::default()
            }
            .check()
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn rate_affects_exactly_its_share(k in 1u32..10, n in 1u32..200) {
            let mut set = FaultSet::default();
            let now = Instant::now();
            set.inject(Fault::status(500).rate(1.0 / f64::from(k)), now);
            let hits = (0..n * k).filter(|_| fails(&set.decide(Verb::Get, "pods", now))).count();
            prop_assert_eq!(hits, n as usize);
        }
    }
}
