//! What this replica knows of an executor's set-up, judged from the answers its own calls get.
//!
//! A set-up problem (a certificate the worker cannot verify, a host that does not resolve,
//! refused credentials, a missing namespace or RuntimeClass, a verb the Role does not allow)
//! is said once, at ERROR, when the executor's first problem shows, naming the executor, the
//! host, the cause and the fix (further problems meanwhile at WARN); each is cleared, at INFO,
//! by the first answer that shows it gone. Every call of
//! the executor goes through [`Health::judge`], so the first calls at start-up (the reporter's
//! Lease) and the builds' own calls are judged the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tracing::{error, info, warn};

use super::call::{CallError, Verb};
use crate::preflight::Cause;

/// The part of the set-up a problem is about: an answer clears only the problems it shows gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Area {
    /// Reaching the API server: TLS, the host name, the credentials.
    Connection,
    /// The jobs namespace.
    Namespace,
    /// The RuntimeClass of the executor's pods.
    RuntimeClass,
    /// One verb on one resource (the Role).
    Access {
        /// The verb refused.
        verb: Verb,
        /// The resource (`pods`, `secrets`, `leases`).
        resource: String,
    },
}

/// One set-up problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What it is about.
    pub area: Area,
    /// Why.
    pub cause: Cause,
    /// What was seen (never a token).
    pub detail: String,
}

/// What one attempt of a call showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A set-up problem.
    Problem(Problem),
    /// A 2xx answer to `verb` on `resource`.
    Success {
        /// The verb.
        verb: Verb,
        /// The resource.
        resource: String,
    },
    /// Some other answer from the API server (it was reached, with accepted credentials).
    Answered,
    /// Nothing telling (a refused connection, a timeout: the breaker's business).
    Nothing,
}

/// What an HTTP answer to `verb` on `resource` says about the set-up (`refusal`: how the call
/// classified a non-2xx answer).
pub fn judge_answer(verb: Verb, resource: &str, status: u16, refusal: Option<&CallError>) -> Seen {
    let problem = |area, cause, detail: &str| {
        Seen::Problem(Problem {
            area,
            cause,
            detail: format!("{status}: {detail}"),
        })
    };
    match refusal {
        _ if status == 401 => problem(Area::Connection, Cause::Unauthorized, "Unauthorized"),
        Some(CallError::RuntimeClassMissing(m)) => {
            problem(Area::RuntimeClass, Cause::RuntimeClassMissing, m)
        }
        Some(CallError::Forbidden(m)) => problem(
            Area::Access {
                verb,
                resource: resource.to_string(),
            },
            Cause::Forbidden,
            m,
        ),
        // The API server names the namespace when it is the namespace that is missing.
        Some(CallError::NotFound(m)) if m.starts_with("namespaces ") => {
            problem(Area::Namespace, Cause::NamespaceMissing, m)
        }
        _ if (200..300).contains(&status) => Seen::Success {
            verb,
            resource: resource.to_string(),
        },
        _ => Seen::Answered,
    }
}

/// What a failure without an answer (transport, TLS, DNS) says about the set-up.
pub fn judge_transport(error: &(dyn std::error::Error + 'static)) -> (Seen, String) {
    let (cause, text) = crate::preflight::classify(error);
    let seen = match cause {
        Cause::TlsUnknownIssuer | Cause::TlsBadCertificate | Cause::UnknownHost => {
            Seen::Problem(Problem {
                area: Area::Connection,
                cause,
                detail: text.clone(),
            })
        }
        _ => Seen::Nothing,
    };
    (seen, text)
}

/// The problems an executor has now (pure: the decisions of [`Health`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Conditions {
    problems: Vec<Problem>,
}

/// What changed, to be said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The first problem of an executor that had none: said at ERROR.
    Appeared(Problem),
    /// Another problem of an executor already known to have one (often the same fault seen
    /// by another call, as RBAC refusing every verb in a namespace): said at WARN.
    AlsoAppeared(Problem),
    /// These problems are gone: said at INFO.
    Cleared(Vec<Problem>),
}

impl Conditions {
    /// Takes in what one attempt showed.
    pub fn apply(&mut self, seen: Seen) -> Option<Change> {
        match seen {
            Seen::Problem(p) => match self.problems.iter_mut().find(|q| q.area == p.area) {
                // Already said; keep the latest detail for /readyz.
                Some(q) => {
                    *q = p;
                    None
                }
                None => {
                    let first = self.problems.is_empty();
                    self.problems.push(p.clone());
                    Some(if first {
                        Change::Appeared(p)
                    } else {
                        Change::AlsoAppeared(p)
                    })
                }
            },
            Seen::Success { verb, resource } => self.clear(|area| match area {
                Area::Connection | Area::Namespace => true,
                Area::RuntimeClass => verb == Verb::Create && resource == "pods",
                Area::Access {
                    verb: v,
                    resource: r,
                } => *v == verb && *r == resource,
            }),
            Seen::Answered => self.clear(|area| *area == Area::Connection),
            Seen::Nothing => None,
        }
    }

    fn clear(&mut self, gone: impl Fn(&Area) -> bool) -> Option<Change> {
        let (cleared, kept) = std::mem::take(&mut self.problems)
            .into_iter()
            .partition::<Vec<_>, _>(|p| gone(&p.area));
        self.problems = kept;
        (!cleared.is_empty()).then_some(Change::Cleared(cleared))
    }

    /// The problems now.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// How an executor's problems are fixed (its keys and variables named).
pub type FixFor = Box<dyn Fn(Cause) -> String + Send + Sync>;

/// One executor's set-up conditions, shared by its calls; says each change once.
pub struct Health {
    executor: String,
    host: String,
    fix: FixFor,
    conditions: Mutex<Conditions>,
    /// True while any problem is known: the common case (none) takes no lock.
    troubled: AtomicBool,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("executor", &self.executor)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// No problem known yet.
    pub fn new(executor: &str, host: &str, fix: FixFor) -> Health {
        Health {
            executor: executor.into(),
            host: host.into(),
            fix,
            conditions: Mutex::new(Conditions::default()),
            troubled: AtomicBool::new(false),
        }
    }

    /// Takes in what one attempt showed, and says what changed.
    pub fn judge(&self, seen: Seen) {
        let quiet = matches!(seen, Seen::Success { .. } | Seen::Answered | Seen::Nothing);
        if quiet && !self.troubled.load(Ordering::Relaxed) {
            return;
        }
        let change = {
            let mut conditions = self
                .conditions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let change = conditions.apply(seen);
            self.troubled
                .store(!conditions.problems().is_empty(), Ordering::Relaxed);
            change
        };
        match change {
            Some(Change::Appeared(p)) => error!(
                executor = %self.executor,
                host = %self.host,
                cause = p.cause.label(),
                fix = %(self.fix)(p.cause),
                "executor misconfigured: {} ({})",
                p.cause.summary(),
                p.detail
            ),
            Some(Change::AlsoAppeared(p)) => warn!(
                executor = %self.executor,
                host = %self.host,
                cause = p.cause.label(),
                fix = %(self.fix)(p.cause),
                "executor misconfigured, also: {} ({})",
                p.cause.summary(),
                p.detail
            ),
            Some(Change::Cleared(gone)) => {
                for p in gone {
                    info!(executor = %self.executor, host = %self.host, cause = p.cause.label(), "executor set-up problem gone");
                }
            }
            None => {}
        }
    }

    /// True while a set-up problem is known.
    pub fn misconfigured(&self) -> bool {
        self.troubled.load(Ordering::Relaxed)
    }

    /// One line per problem now, for `/readyz`.
    pub fn describe(&self) -> Vec<String> {
        if !self.misconfigured() {
            return Vec::new();
        }
        let conditions = self
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conditions
            .problems()
            .iter()
            .map(|p| {
                format!(
                    "executor {} ({}): misconfigured: {} ({}). Fix: {}",
                    self.executor,
                    self.host,
                    p.cause.summary(),
                    p.detail,
                    (self.fix)(p.cause)
                )
            })
            .collect()
    }
}

/// The resource of a request path (`/api/v1/namespaces/x/pods/y` gives `pods`).
pub fn resource_of(path: &str) -> &str {
    let mut parts = path.split('/').skip_while(|p| *p != "namespaces").skip(2);
    parts.next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(area: Area, cause: Cause) -> Seen {
        Seen::Problem(Problem {
            area,
            cause,
            detail: "seen".into(),
        })
    }

    fn success(verb: Verb, resource: &str) -> Seen {
        Seen::Success {
            verb,
            resource: resource.into(),
        }
    }

    #[test]
    fn a_problem_is_said_once_until_an_answer_shows_it_gone() {
        let mut c = Conditions::default();
        let tls = || problem(Area::Connection, Cause::TlsUnknownIssuer);
        assert!(matches!(c.apply(tls()), Some(Change::Appeared(_))));
        assert_eq!(
            c.apply(tls()),
            None,
            "the same problem again is not said again"
        );
        assert_eq!(c.apply(Seen::Nothing), None);
        assert!(matches!(c.apply(Seen::Answered), Some(Change::Cleared(g)) if g.len() == 1));
        assert!(c.problems().is_empty());
        assert!(
            matches!(c.apply(tls()), Some(Change::Appeared(_))),
            "back: said again"
        );
    }

    #[test]
    fn an_answer_clears_only_what_it_shows_gone() {
        let mut c = Conditions::default();
        let leases = Area::Access {
            verb: Verb::Create,
            resource: "leases".into(),
        };
        c.apply(problem(leases.clone(), Cause::Forbidden));
        c.apply(problem(Area::RuntimeClass, Cause::RuntimeClassMissing));
        // A lease renewed says nothing of pods: the RuntimeClass problem stays.
        assert_eq!(c.apply(success(Verb::Get, "leases")), None);
        assert_eq!(c.apply(success(Verb::Create, "secrets")), None);
        assert_eq!(c.problems().len(), 2);
        c.apply(problem(Area::Namespace, Cause::NamespaceMissing));
        assert!(
            matches!(
                c.apply(problem(Area::Connection, Cause::Unauthorized)),
                Some(Change::AlsoAppeared(_))
            ),
            "a second problem while troubled is not a second ERROR"
        );
        c.apply(Seen::Answered);
        c.apply(success(Verb::List, "pods"));
        let cleared = c.apply(success(Verb::Create, "pods"));
        assert!(matches!(cleared, Some(Change::Cleared(g)) if g[0].area == Area::RuntimeClass));
        let cleared = c.apply(success(Verb::Create, "leases"));
        assert!(matches!(cleared, Some(Change::Cleared(g)) if g[0].area == leases));
    }

    #[test]
    fn answers_are_judged_by_status_and_refusal() {
        let judge = |status, e: Option<CallError>| match judge_answer(
            Verb::Create,
            "pods",
            status,
            e.as_ref(),
        ) {
            Seen::Problem(p) => Some((p.area, p.cause)),
            _ => None,
        };
        assert_eq!(
            judge(401, Some(CallError::Forbidden("Unauthorized".into()))),
            Some((Area::Connection, Cause::Unauthorized))
        );
        assert_eq!(
            judge(
                404,
                Some(CallError::NotFound("namespaces \"b\" not found".into()))
            ),
            Some((Area::Namespace, Cause::NamespaceMissing))
        );
        assert_eq!(
            judge(
                404,
                Some(CallError::NotFound("pods \"p\" not found".into()))
            ),
            None
        );
        assert_eq!(
            judge(403, Some(CallError::Forbidden("no".into()))).map(|p| p.1),
            Some(Cause::Forbidden)
        );
        assert_eq!(judge(403, Some(CallError::QuotaExceeded("q".into()))), None);
        assert_eq!(judge(201, None), None);
    }

    #[test]
    fn the_resource_is_read_from_the_path() {
        assert_eq!(resource_of("/api/v1/namespaces/b/pods/x"), "pods");
        assert_eq!(resource_of("/api/v1/namespaces/b/pods"), "pods");
        assert_eq!(
            resource_of("/apis/coordination.k8s.io/v1/namespaces/b/leases/l"),
            "leases"
        );
        assert_eq!(resource_of("/version"), "");
    }

    #[test]
    fn a_health_without_problems_describes_nothing_and_one_with_a_problem_names_the_fix() {
        let h = Health::new(
            "k8s",
            "https://api:6443",
            Box::new(|c| format!("fix {}", c.label())),
        );
        assert!(h.describe().is_empty());
        h.judge(problem(Area::Connection, Cause::UnknownHost));
        assert!(h.misconfigured());
        let lines = h.describe();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("executor k8s (https://api:6443)"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("fix unknown_host"), "{}", lines[0]);
        h.judge(Seen::Answered);
        assert!(!h.misconfigured());
    }
}
