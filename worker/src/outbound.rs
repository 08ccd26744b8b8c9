//! One call path for every outbound request (the Kubernetes API of each executor, the
//! Screwdriver API's status updates): the breaker's permit, the client-side budget, the send
//! deadline, then attempts retried on the backoff schedule or the server's `Retry-After`, until
//! one is done or refused, the attempts are used up, or the breaker opens.
//!
//! What an attempt sends and how its answer is classified belongs to the caller: a refusal (a
//! 4xx other than 408 and 429) is returned at once and never retried; only [`Tried::Transient`]
//! is tried again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::breaker::{Admission, Outcome, SharedBreaker, Transition};
use crate::budget::Budget;

/// Longest `Retry-After` honoured; a longer one is shortened to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How one attempt went.
#[derive(Debug)]
pub enum Tried<T, E> {
    /// An answer to return (counts as a success for the breaker).
    Done(T),
    /// A refusal to return at once: the same request would be refused again (neutral for the
    /// breaker: the server works).
    Refused(E),
    /// Worth another try: a server error, 408, 429, a transport failure or no answer in time.
    Transient(Transient),
}

/// A failed attempt that may be tried again.
#[derive(Debug, Clone)]
pub struct Transient {
    /// HTTP status, if one came.
    pub status: Option<u16>,
    /// What happened.
    pub message: String,
    /// The request may have been carried out (sent, then no answer or a server error).
    pub ambiguous: bool,
    /// When the server asked to be tried again.
    pub retry_after: Option<Duration>,
}

/// Why a call ended without an answer or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The breaker refused the permit (nothing was sent by this attempt).
    BreakerOpen {
        /// When a call may be tried again.
        retry_in: Duration,
        /// An earlier attempt may have been carried out.
        ambiguous: bool,
    },
    /// The last attempt failed and no other is allowed.
    Unavailable {
        /// HTTP status of the last attempt, if any.
        status: Option<u16>,
        /// What happened last.
        message: String,
        /// An attempt may have been carried out.
        ambiguous: bool,
    },
    /// The send deadline passed before the next attempt: not sent.
    Expired {
        /// An earlier attempt may have been carried out.
        ambiguous: bool,
    },
}

/// How a call ended when it did not end with an answer.
#[derive(Debug)]
pub enum Ended<E> {
    /// Refused by the server.
    Refused(E),
    /// Failed.
    Failed(Failure),
}

/// What the caller is told between attempts (logs, metrics, events).
pub trait Observer {
    /// The breaker changed state.
    fn transition(&self, transition: Transition);
    /// An attempt failed and the next one follows after `delay`.
    fn retrying(&self, attempt: u32, failed: &Transient, delay: Duration);
    /// The budget made the call wait.
    fn budget_waited(&self, _waited: Duration) {}
}

/// The policy of one destination: its breaker, its budget, its retry schedule.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The destination's breaker.
    pub breaker: SharedBreaker,
    /// Its request budget, if it has one.
    pub budget: Option<Arc<Budget>>,
    /// Its retry schedule.
    pub backoff: Backoff,
}

impl Guard {
    /// Runs `attempt` (given the attempt number, from 1) until it is done or refused, or the
    /// call fails; no attempt starts after `send_by`. Each attempt asks the breaker as
    /// `admission` says.
    pub async fn call<T, E, F, Fut>(
        &self,
        send_by: Option<Instant>,
        admission: Admission,
        observer: &impl Observer,
        mut attempt: F,
    ) -> Result<T, Ended<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Tried<T, E>>,
    {
        let mut ambiguous = false;
        let mut n = 0u32;
        loop {
            n += 1;
            let permit = match self.breaker.admit(admission).await {
                Ok(p) => p,
                Err(rejected) => {
                    return Err(Ended::Failed(Failure::BreakerOpen {
                        retry_in: rejected.retry_in,
                        ambiguous,
                    }));
                }
            };
            if let Some(t) = permit.transition() {
                observer.transition(t);
            }
            if let Some(budget) = &self.budget {
                let waited = budget.acquire().await;
                if !waited.is_zero() {
                    observer.budget_waited(waited);
                }
            }
            if send_by.is_some_and(|by| Instant::now() > by) {
                permit.record(Outcome::Neutral, &mut rand::rng());
                return Err(Ended::Failed(Failure::Expired { ambiguous }));
            }
            // A side call through a breaker that is not closed gets one attempt: the protocol
            // asks again later, and the cluster is known to be in trouble.
            let side = permit.is_side();
            let tried = attempt(n).await;
            let outcome = match &tried {
                Tried::Done(_) => Outcome::Success,
                Tried::Refused(_) => Outcome::Neutral,
                Tried::Transient(_) => Outcome::Failure,
            };
            let transition = permit.record(outcome, &mut rand::rng());
            let opened = matches!(transition, Some(Transition::Opened { .. }));
            if let Some(t) = transition {
                observer.transition(t);
            }
            let failed = match tried {
                Tried::Done(answer) => return Ok(answer),
                Tried::Refused(e) => return Err(Ended::Refused(e)),
                Tried::Transient(failed) => failed,
            };
            ambiguous |= failed.ambiguous;
            if opened || side || !self.backoff.may_retry_after(n) {
                return Err(Ended::Failed(Failure::Unavailable {
                    status: failed.status,
                    message: failed.message,
                    ambiguous,
                }));
            }
            // The server's Retry-After wins over our own schedule (429, 503).
            let delay = match failed.retry_after {
                Some(ra) => ra.min(MAX_RETRY_AFTER),
                None => self.backoff.delay_with(n, &mut rand::rng()),
            };
            observer.retrying(n, &failed, delay);
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;
    use crate::breaker::BreakerPolicy;

    fn guard(max_failures: u32, attempts: u32) -> Guard {
        Guard {
            breaker: SharedBreaker::new(BreakerPolicy {
                max_failures,
                reset_timeout: Duration::from_secs(30),
                max_open: Duration::from_secs(300),
                jitter: 0.0,
                probe_timeout: Duration::from_secs(10),
            }),
            budget: None,
            backoff: Backoff::try_new(Duration::from_secs(1), Duration::from_secs(8), attempts)
                .unwrap(),
        }
    }

    /// Records what the call path tells, and answers attempts from a script.
    #[derive(Default)]
    struct Script {
        answers: RefCell<VecDeque<Tried<&'static str, u16>>>,
        delays: RefCell<Vec<Duration>>,
        opened: RefCell<u32>,
    }

    impl Script {
        fn new(answers: Vec<Tried<&'static str, u16>>) -> Script {
            Script {
                answers: RefCell::new(answers.into()),
                ..Default::default()
            }
        }

        async fn next(&self) -> Tried<&'static str, u16> {
            self.answers
                .borrow_mut()
                .pop_front()
                .expect("an answer left")
        }
    }

    impl Observer for Script {
        fn transition(&self, t: Transition) {
            if matches!(t, Transition::Opened { .. }) {
                *self.opened.borrow_mut() += 1;
            }
        }
        fn retrying(&self, _: u32, _: &Transient, delay: Duration) {
            self.delays.borrow_mut().push(delay);
        }
    }

    fn transient(retry_after: Option<u64>) -> Tried<&'static str, u16> {
        Tried::Transient(Transient {
            status: Some(503),
            message: "busy".into(),
            ambiguous: false,
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_returned_at_once_and_never_retried() {
        let s = Script::new(vec![Tried::Refused(400)]);
        let r = guard(5, 5)
            .call(None, Admission::Guarded, &s, |_| s.next())
            .await;
        assert!(matches!(r, Err(Ended::Refused(400))));
        assert!(s.delays.borrow().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_honouring_retry_after() {
        let s = Script::new(vec![transient(Some(7)), transient(None), Tried::Done("ok")]);
        let r = guard(5, 5)
            .call(None, Admission::Guarded, &s, |_| s.next())
            .await;
        assert_eq!(r.unwrap(), "ok");
        let delays = s.delays.borrow();
        assert_eq!(
            delays[0],
            Duration::from_secs(7),
            "the server's Retry-After"
        );
        assert!(
            delays[1] <= Duration::from_secs(2),
            "then the backoff: {delays:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_attempts_are_used_up_or_the_breaker_opens() {
        let s = Script::new(vec![transient(None), transient(None), transient(None)]);
        let r = guard(5, 3)
            .call(None, Admission::Guarded, &s, |_| s.next())
            .await;
        assert!(matches!(r, Err(Ended::Failed(Failure::Unavailable { .. }))));
        assert_eq!(s.delays.borrow().len(), 2, "three attempts, two waits");
        let s = Script::new(vec![transient(None), transient(None), transient(None)]);
        let r = guard(2, 5)
            .call(None, Admission::Guarded, &s, |_| s.next())
            .await;
        assert!(matches!(r, Err(Ended::Failed(Failure::Unavailable { .. }))));
        assert_eq!(*s.opened.borrow(), 1);
        assert_eq!(
            s.answers.borrow().len(),
            1,
            "no attempt after the breaker opened"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_call_passes_an_open_breaker_with_one_attempt() {
        let g = guard(1, 5);
        let s = Script::new(vec![transient(None)]);
        let r = g.call(None, Admission::Guarded, &s, |_| s.next()).await;
        assert!(matches!(r, Err(Ended::Failed(Failure::Unavailable { .. }))));
        assert_eq!(*s.opened.borrow(), 1);

        let s = Script::new(vec![transient(None), Tried::Done("second")]);
        let r = g.call(None, Admission::Side, &s, |_| s.next()).await;
        assert!(matches!(r, Err(Ended::Failed(Failure::Unavailable { .. }))));
        assert!(s.delays.borrow().is_empty(), "not retried while open");
        assert_eq!(s.answers.borrow().len(), 1, "one attempt");

        let s = Script::new(vec![Tried::Done("read")]);
        let r = g.call(None, Admission::Side, &s, |_| s.next()).await;
        assert_eq!(r.unwrap(), "read");
        let s = Script::new(vec![]);
        let r = g.call(None, Admission::Guarded, &s, |_| s.next()).await;
        assert!(
            matches!(r, Err(Ended::Failed(Failure::BreakerOpen { .. }))),
            "the side call's answer did not close the breaker"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_sent_after_the_send_deadline() {
        // A Retry-After, not the backoff, sets the wait: a random backoff may fall under the
        // deadline and send the second attempt in time.
        let s = Script::new(vec![transient(Some(1)), Tried::Done("late")]);
        let by = Instant::now() + Duration::from_millis(100);
        let r = guard(5, 5)
            .call(Some(by), Admission::Guarded, &s, |_| s.next())
            .await;
        assert!(matches!(r, Err(Ended::Failed(Failure::Expired { .. }))));
        assert_eq!(
            s.answers.borrow().len(),
            1,
            "the second attempt was not sent"
        );
    }
}
