//! One handling of a `start`, as a pure state machine: facts in (the sequencer's answers, what
//! the executors said), the next step out. The I/O shell (`crate::launch`) carries the steps out;
//! the model test drives the same machine.

use std::collections::BTreeSet;

use super::table::{Answer, Build, Millis, Question, Version};

/// Why a create certainly did not land, or may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreateFailure {
    /// Not sent, or refused before anything was written (connection refused, 429 after the
    /// call's retries): try another executor; the attempt is used up.
    NotSent,
    /// As `NotSent`, and the executor's breaker is open now: it is down, which is not the
    /// build's fault (waiting for it uses up no attempt).
    Down,
    /// The call's retries ran past the send deadline S: nothing more was sent. Asking again
    /// renews the permission (a few times, then it counts as `NotSent`).
    Expired,
    /// The executor refused it and will refuse it again (RBAC, missing namespace, unknown
    /// RuntimeClass): try another executor, and tell the operator.
    Misconfigured(Misconfiguration),
    /// A ResourceQuota is exhausted: try another executor, or wait.
    Quota,
    /// The API server says the pod is invalid: no executor will take it.
    Invalid,
    /// A pod of that name belongs to another build.
    NameTaken,
    /// It may have been written (timeout, 5xx, a broken connection after sending).
    Ambiguous,
}

/// What about an executor refuses a build's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misconfiguration {
    /// The executor's RuntimeClass does not exist there.
    RuntimeClassMissing,
    /// Credentials or RBAC refuse the worker, or the namespace is missing.
    Refused,
}

/// A fact the shell reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fact<E, P> {
    /// The sequencer answered.
    Answered(Answer<E>),
    /// The sequencer could not be asked (no connection, no answer in time).
    Unanswered,
    /// The pod was created (`P`: what the shell needs to announce it).
    Created(P),
    /// The create answered 409 and the existing pod carries this build's label: adopt it.
    Exists(P),
    /// The create failed.
    CreateFailed(CreateFailure),
    /// A look on an executor found this pod of the build, or none.
    Found(Option<P>),
    /// The executor could not be asked.
    LookFailed,
    /// `build.launched` was confirmed.
    Announced,
    /// `build.launched` was not confirmed.
    AnnounceFailed,
    /// What the pod needs before it is announced (its token Secret) could not be made.
    PrepareFailed,
    /// The pod was deleted (or was gone), or could not be.
    Deleted,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step<E, P> {
    /// Ask the sequencer.
    Ask(Question<E>),
    /// Create the pod on `exec` (sent within S of the question that permitted it).
    Create {
        /// Where.
        exec: E,
    },
    /// List the build's pods on `exec`.
    Look {
        /// Where.
        exec: E,
    },
    /// Publish `build.launched` for this pod (confirmed).
    Announce {
        /// Where.
        exec: E,
        /// The pod.
        pod: P,
        /// It existed before this handling.
        adopted: bool,
    },
    /// Delete this pod: the build was stopped while it was being created.
    Delete {
        /// Where.
        exec: E,
        /// The pod.
        pod: P,
    },
    /// The handling is over.
    Done(Outcome<E, P>),
}

/// How a handling ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome<E, P> {
    /// The pod exists and its launch is announced.
    Launched {
        /// Where.
        exec: E,
        /// The pod.
        pod: P,
        /// It existed before this handling.
        adopted: bool,
    },
    /// The build was stopped: nothing to launch (or the pod just created was deleted).
    Stopped,
    /// The build launched earlier and its pod is gone: a late copy of a finished build.
    Finished,
    /// The build launched earlier on `exec` (its `build.launched` was confirmed before that was
    /// recorded), and `exec` cannot be looked at now: a copy with nothing left to do. Waiting
    /// for `exec` would end, at `maxWait`, in a dead letter of a build that runs.
    Duplicate {
        /// Where it launched.
        exec: E,
    },
    /// Come back later.
    Later {
        /// Why.
        reason: WaitReason,
        /// At the earliest after this long (0: the caller's default).
        wait: Millis,
        /// It used up an attempt (a failure, not a wait).
        consumes_attempt: bool,
    },
    /// Give up on the build (dead-letter it).
    Dead(DeadReason),
    /// Return the message to the queue untouched (an event could not be confirmed).
    Requeue,
}

/// Why a build waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// No candidate executor is usable now.
    NoExecutor,
    /// The build is placed on an executor this replica cannot use, or that has not answered.
    Unconfirmed,
    /// Every usable executor's quota is exhausted.
    QuotaExceeded,
    /// The sequencer could not be asked.
    Unanswered,
    /// A create failed and may be tried again (uses up an attempt).
    Unavailable,
}

/// Why a build is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// The API server refused the pod as invalid.
    InvalidPod,
    /// A pod of the build's name belongs to another build.
    NameCollision,
    /// Every candidate refuses the build's pods because of its configuration.
    ExecutorMisconfigured,
    /// Every candidate refused it for a missing RuntimeClass.
    RuntimeClassMissing,
}

impl WaitReason {
    /// A bounded label (metrics, `x-bcw-reason`-like log fields, `build.retrying`).
    pub fn label(self) -> &'static str {
        match self {
            WaitReason::NoExecutor => "no_executor",
            WaitReason::Unconfirmed => "unconfirmed",
            WaitReason::QuotaExceeded => "quota_exceeded",
            WaitReason::Unanswered => "sequencer_unavailable",
            WaitReason::Unavailable => "unavailable",
        }
    }
}

impl DeadReason {
    /// A bounded label (`x-bcw-reason`, metrics).
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::InvalidPod => "invalid_pod",
            DeadReason::NameCollision => "name_collision",
            DeadReason::ExecutorMisconfigured => "executor_misconfigured",
            DeadReason::RuntimeClassMissing => "runtime_class_not_found",
        }
    }
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Phase<E, P> {
    Asking,
    Creating {
        exec: E,
        version: Version,
    },
    /// Looking after an ambiguous create.
    Confirming {
        exec: E,
        version: Version,
    },
    /// Looking because the sequencer said Look.
    Vacating {
        exec: E,
        version: Version,
    },
    /// Looking because the build was launched there earlier.
    Rejoining {
        exec: E,
    },
    Announcing {
        exec: E,
        pod: P,
        adopted: bool,
        version: Option<Version>,
    },
    Noting {
        exec: E,
        pod: P,
        adopted: bool,
    },
    Deleting,
    Over,
}

/// One handling of a `start`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Start<E, P> {
    build: Build,
    /// The build's candidates, best first (routing).
    candidates: Vec<E>,
    /// Executors whose create failed certainly in this handling, with why.
    failed: Vec<(E, CreateFailure)>,
    /// Executors an earlier handling of this message sent a create to: asked for only when
    /// nothing else is usable (a create there failed; trying it again would only extend its
    /// busy window, and the build moves once that has passed).
    avoid: BTreeSet<E>,
    /// Permissions renewed after their send deadline passed.
    renewed: u8,
    phase: Phase<E, P>,
}

/// Permissions a handling renews after their deadline passed, at most.
const RENEWALS: u8 = 3;

impl<E: Clone + Eq + Ord + std::fmt::Debug, P: Clone + std::fmt::Debug> Start<E, P> {
    /// A handling of `build` whose routing gave these candidates, best first.
    pub fn new(build: Build, candidates: Vec<E>) -> Self {
        Start {
            build,
            candidates,
            failed: Vec::new(),
            avoid: BTreeSet::new(),
            renewed: 0,
            phase: Phase::Asking,
        }
    }

    /// Executors earlier handlings of this message sent creates to (asked for last).
    pub fn avoiding(mut self, executors: BTreeSet<E>) -> Self {
        self.avoid = executors;
        self
    }

    /// The first step: ask for a claim.
    pub fn begin(&mut self, usable: &BTreeSet<E>) -> Step<E, P> {
        self.phase = Phase::Asking;
        Step::Ask(Question::Claim {
            build: self.build,
            prefs: self.prefs(usable),
            failed: None,
        })
    }

    /// True once the handling is over.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Over)
    }

    /// The next step after `fact`; `usable` are the executors whose breaker admits calls now.
    pub fn next(&mut self, fact: Fact<E, P>, usable: &BTreeSet<E>) -> Step<E, P> {
        let phase = std::mem::replace(&mut self.phase, Phase::Over);
        let step = match (phase, fact) {
            (Phase::Over, _) => Step::Done(Outcome::Requeue),
            (_, Fact::Unanswered) => later(WaitReason::Unanswered, 0, false),
            (Phase::Asking, Fact::Answered(a)) => self.answered(a),
            (Phase::Creating { exec, version }, fact) => self.created(exec, version, fact, usable),
            (Phase::Confirming { exec, version }, Fact::Found(found)) => match found {
                Some(pod) => self.announce(exec, pod, true, Some(version)),
                // No pod now, but the create may still land: only time or a look after the busy
                // window can tell, so this attempt is over and the next asks again.
                None => later(WaitReason::Unavailable, 0, true),
            },
            (Phase::Vacating { exec, version }, Fact::Found(found)) => match found {
                Some(pod) => self.announce(exec, pod, true, None),
                None => self.ask(Question::Vacate {
                    build: self.build,
                    exec,
                    version,
                    prefs: self.prefs(usable),
                }),
            },
            (Phase::Rejoining { exec }, Fact::Found(found)) => match found {
                Some(pod) => self.announce(exec, pod, true, None),
                None => Step::Done(Outcome::Finished),
            },
            (Phase::Rejoining { exec }, Fact::LookFailed) => {
                Step::Done(Outcome::Duplicate { exec })
            }
            (Phase::Confirming { .. } | Phase::Vacating { .. }, Fact::LookFailed) => {
                later(WaitReason::Unconfirmed, 0, false)
            }
            (
                Phase::Announcing {
                    exec,
                    pod,
                    adopted,
                    version,
                },
                Fact::Announced,
            ) => {
                self.phase = Phase::Noting {
                    exec: exec.clone(),
                    pod,
                    adopted,
                };
                Step::Ask(Question::Launched {
                    build: self.build,
                    exec,
                    version,
                })
            }
            (Phase::Announcing { .. }, Fact::AnnounceFailed) => Step::Done(Outcome::Requeue),
            (Phase::Announcing { .. }, Fact::PrepareFailed) => {
                later(WaitReason::Unavailable, 0, true)
            }
            (Phase::Noting { exec, pod, adopted }, Fact::Answered(a)) => match a {
                // Stopped meanwhile: delete the pod, unless another create may still land
                // (deleting would free its name); the stop's re-check deletes it then.
                Answer::StopNoted { busy_for: 0, .. } => {
                    self.phase = Phase::Deleting;
                    Step::Delete { exec, pod }
                }
                Answer::StopNoted { .. } | Answer::Stopped => Step::Done(Outcome::Stopped),
                _ => Step::Done(Outcome::Launched { exec, pod, adopted }),
            },
            (Phase::Deleting, Fact::Deleted) => Step::Done(Outcome::Stopped),
            (phase, fact) => unreachable!("fact {fact:?} does not answer step {phase:?}"),
        };
        if matches!(step, Step::Done(_)) {
            self.phase = Phase::Over;
        }
        step
    }

    /// The build's candidates usable now, best first, without those that failed certainly
    /// in this handling, and without those to avoid unless nothing else is left.
    fn prefs(&self, usable: &BTreeSet<E>) -> Vec<E> {
        let open: Vec<E> = self
            .candidates
            .iter()
            .filter(|e| usable.contains(e) && !self.failed.iter().any(|(f, _)| f == *e))
            .cloned()
            .collect();
        let fresh: Vec<E> = open
            .iter()
            .filter(|e| !self.avoid.contains(e))
            .cloned()
            .collect();
        if fresh.is_empty() { open } else { fresh }
    }

    fn ask(&mut self, q: Question<E>) -> Step<E, P> {
        self.phase = Phase::Asking;
        Step::Ask(q)
    }

    fn answered(&mut self, answer: Answer<E>) -> Step<E, P> {
        match answer {
            Answer::Go { exec, version } => {
                self.phase = Phase::Creating {
                    exec: exec.clone(),
                    version,
                };
                Step::Create { exec }
            }
            Answer::Look { exec, version } => {
                self.phase = Phase::Vacating {
                    exec: exec.clone(),
                    version,
                };
                Step::Look { exec }
            }
            Answer::Launched { exec } => {
                self.phase = Phase::Rejoining { exec: exec.clone() };
                Step::Look { exec }
            }
            Answer::Wait { wait, .. } => later(WaitReason::Unconfirmed, wait, false),
            Answer::Nowhere => self.nowhere(),
            Answer::Stopped => Step::Done(Outcome::Stopped),
            other => unreachable!("{other:?} does not answer a claim"),
        }
    }

    fn created(
        &mut self,
        exec: E,
        version: Version,
        fact: Fact<E, P>,
        usable: &BTreeSet<E>,
    ) -> Step<E, P> {
        match fact {
            Fact::Created(pod) => self.announce(exec, pod, false, Some(version)),
            Fact::Exists(pod) => self.announce(exec, pod, true, Some(version)),
            Fact::CreateFailed(CreateFailure::Ambiguous) => {
                self.phase = Phase::Confirming {
                    exec: exec.clone(),
                    version,
                };
                Step::Look { exec }
            }
            Fact::CreateFailed(CreateFailure::Invalid) => {
                Step::Done(Outcome::Dead(DeadReason::InvalidPod))
            }
            Fact::CreateFailed(CreateFailure::NameTaken) => {
                Step::Done(Outcome::Dead(DeadReason::NameCollision))
            }
            Fact::CreateFailed(CreateFailure::Expired) if self.renewed < RENEWALS => {
                self.renewed += 1;
                self.ask(Question::Claim {
                    build: self.build,
                    prefs: self.prefs(usable),
                    failed: Some((exec, version)),
                })
            }
            Fact::CreateFailed(why) => {
                let why = match why {
                    CreateFailure::Expired => CreateFailure::NotSent,
                    other => other,
                };
                self.failed.push((exec.clone(), why));
                self.ask(Question::Claim {
                    build: self.build,
                    prefs: self.prefs(usable),
                    failed: Some((exec, version)),
                })
            }
            other => unreachable!("{other:?} does not answer a create"),
        }
    }

    fn announce(&mut self, exec: E, pod: P, adopted: bool, version: Option<Version>) -> Step<E, P> {
        self.phase = Phase::Announcing {
            exec: exec.clone(),
            pod: pod.clone(),
            adopted,
            version,
        };
        Step::Announce { exec, pod, adopted }
    }

    /// Nothing usable is left: what the failures of this handling say.
    fn nowhere(&self) -> Step<E, P> {
        let misconfigured = |f: &CreateFailure| matches!(f, CreateFailure::Misconfigured(_));
        if self.failed.iter().any(|(_, f)| *f == CreateFailure::Quota) {
            return later(WaitReason::QuotaExceeded, 0, false);
        }
        if self
            .failed
            .iter()
            .any(|(_, f)| *f == CreateFailure::NotSent)
        {
            return later(WaitReason::Unavailable, 0, true);
        }
        // Every candidate refused the pod for its configuration: give up, unless some
        // candidate was not tried (its breaker is open): it may take the build later.
        let tried_all = self
            .candidates
            .iter()
            .all(|c| self.failed.iter().any(|(f, _)| f == c));
        if !self.failed.is_empty() && self.failed.iter().all(|(_, f)| misconfigured(f)) && tried_all
        {
            let rc = self.failed.iter().all(|(_, f)| {
                *f == CreateFailure::Misconfigured(Misconfiguration::RuntimeClassMissing)
            });
            return Step::Done(Outcome::Dead(if rc {
                DeadReason::RuntimeClassMissing
            } else {
                DeadReason::ExecutorMisconfigured
            }));
        }
        later(WaitReason::NoExecutor, 0, false)
    }
}

fn later<E, P>(reason: WaitReason, wait: Millis, consumes_attempt: bool) -> Step<E, P> {
    Step::Done(Outcome::Later {
        reason,
        wait,
        consumes_attempt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: u8 = 0;
    const Y: u8 = 1;
    const V: Version = Version {
        epoch: 1,
        counter: 1,
    };

    fn both() -> BTreeSet<u8> {
        [X, Y].into()
    }

    fn go(exec: u8) -> Fact<u8, &'static str> {
        Fact::Answered(Answer::Go { exec, version: V })
    }

    #[test]
    fn a_permitted_create_is_announced_then_noted_then_launched() {
        let mut m = Start::new(1, vec![X, Y]);
        assert_eq!(
            m.begin(&both()),
            Step::Ask(Question::Claim {
                build: 1,
                prefs: vec![X, Y],
                failed: None
            })
        );
        assert_eq!(m.next(go(X), &both()), Step::Create { exec: X });
        assert_eq!(
            m.next(Fact::Created("pod"), &both()),
            Step::Announce {
                exec: X,
                pod: "pod",
                adopted: false
            }
        );
        assert_eq!(
            m.next(Fact::Announced, &both()),
            Step::Ask(Question::Launched {
                build: 1,
                exec: X,
                version: Some(V)
            })
        );
        assert_eq!(
            m.next(Fact::Answered(Answer::Noted), &both()),
            Step::Done(Outcome::Launched {
                exec: X,
                pod: "pod",
                adopted: false
            })
        );
        assert!(m.is_over());
    }

    #[test]
    fn a_create_that_certainly_failed_is_quoted_and_the_next_executor_asked_for() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]);
        m.begin(&both());
        m.next(go(X), &both());
        assert_eq!(
            m.next(Fact::CreateFailed(CreateFailure::NotSent), &both()),
            Step::Ask(Question::Claim {
                build: 1,
                prefs: vec![Y],
                failed: Some((X, V))
            })
        );
        // Nothing else usable: an attempt is used up (the failure was real).
        assert_eq!(
            m.next(Fact::Answered(Answer::Nowhere), &both()),
            Step::Done(Outcome::Later {
                reason: WaitReason::Unavailable,
                wait: 0,
                consumes_attempt: true
            })
        );
    }

    #[test]
    fn an_ambiguous_create_is_looked_for_and_otherwise_retried_later() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X]);
        m.begin(&both());
        m.next(go(X), &both());
        assert_eq!(
            m.next(Fact::CreateFailed(CreateFailure::Ambiguous), &both()),
            Step::Look { exec: X }
        );
        assert_eq!(
            m.next(Fact::Found(None), &both()),
            Step::Done(Outcome::Later {
                reason: WaitReason::Unavailable,
                wait: 0,
                consumes_attempt: true
            })
        );
    }

    #[test]
    fn a_copy_told_to_look_adopts_what_it_finds_or_vacates() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]);
        m.begin(&[Y].into());
        let look = Fact::Answered(Answer::Look {
            exec: X,
            version: V,
        });
        assert_eq!(m.next(look.clone(), &[Y].into()), Step::Look { exec: X });
        assert_eq!(
            m.next(Fact::Found(None), &[Y].into()),
            Step::Ask(Question::Vacate {
                build: 1,
                exec: X,
                version: V,
                prefs: vec![Y]
            })
        );
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]);
        m.begin(&[Y].into());
        m.next(look, &[Y].into());
        assert_eq!(
            m.next(Fact::Found(Some("there")), &[Y].into()),
            Step::Announce {
                exec: X,
                pod: "there",
                adopted: true
            }
        );
    }

    #[test]
    fn a_late_copy_of_a_launched_build_adopts_its_pod_or_ends_as_finished() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]);
        m.begin(&both());
        assert_eq!(
            m.next(Fact::Answered(Answer::Launched { exec: Y }), &both()),
            Step::Look { exec: Y }
        );
        assert_eq!(
            m.next(Fact::Found(None), &both()),
            Step::Done(Outcome::Finished)
        );
    }

    #[test]
    fn a_copy_of_a_launched_build_whose_executor_cannot_be_looked_at_ends_as_a_duplicate() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]);
        m.begin(&[X].into());
        m.next(Fact::Answered(Answer::Launched { exec: Y }), &[X].into());
        assert_eq!(
            m.next(Fact::LookFailed, &[X].into()),
            Step::Done(Outcome::Duplicate { exec: Y }),
            "the launch is final: nothing to wait for"
        );
        assert!(m.is_over());
    }

    #[test]
    fn a_launch_of_a_stopped_build_deletes_its_pod_only_when_no_other_create_can_land() {
        for (busy_for, deletes) in [(0, true), (5, false)] {
            let mut m = Start::new(1, vec![X]);
            m.begin(&both());
            m.next(go(X), &both());
            m.next(Fact::Created("pod"), &both());
            m.next(Fact::Announced, &both());
            let step = m.next(
                Fact::Answered(Answer::StopNoted {
                    at: Some(X),
                    busy_for,
                }),
                &both(),
            );
            if deletes {
                assert_eq!(
                    step,
                    Step::Delete {
                        exec: X,
                        pod: "pod"
                    }
                );
                assert_eq!(m.next(Fact::Deleted, &both()), Step::Done(Outcome::Stopped));
            } else {
                assert_eq!(step, Step::Done(Outcome::Stopped));
            }
        }
    }

    #[test]
    fn every_candidate_refusing_for_its_configuration_gives_up_on_the_build() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]);
        m.begin(&both());
        let rc = CreateFailure::Misconfigured(Misconfiguration::RuntimeClassMissing);
        m.next(go(X), &both());
        m.next(Fact::CreateFailed(rc), &both());
        m.next(go(Y), &both());
        m.next(Fact::CreateFailed(rc), &both());
        assert_eq!(
            m.next(Fact::Answered(Answer::Nowhere), &both()),
            Step::Done(Outcome::Dead(DeadReason::RuntimeClassMissing))
        );
    }

    #[test]
    fn an_executor_an_earlier_handling_created_on_is_asked_for_only_when_nothing_else_is_usable() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]).avoiding([X].into());
        assert_eq!(
            m.begin(&both()),
            Step::Ask(Question::Claim {
                build: 1,
                prefs: vec![Y],
                failed: None
            })
        );
        let mut m: Start<u8, &str> = Start::new(1, vec![X, Y]).avoiding([X].into());
        assert_eq!(
            m.begin(&[X].into()),
            Step::Ask(Question::Claim {
                build: 1,
                prefs: vec![X],
                failed: None
            })
        );
    }

    #[test]
    fn a_stopped_build_or_an_unanswered_question_ends_the_handling() {
        let mut m: Start<u8, &str> = Start::new(1, vec![X]);
        m.begin(&both());
        assert_eq!(
            m.next(Fact::Answered(Answer::Stopped), &both()),
            Step::Done(Outcome::Stopped)
        );
        let mut m: Start<u8, &str> = Start::new(1, vec![X]);
        m.begin(&both());
        assert_eq!(
            m.next(Fact::Unanswered, &both()),
            Step::Done(Outcome::Later {
                reason: WaitReason::Unanswered,
                wait: 0,
                consumes_attempt: false
            })
        );
    }
}
