//! How a handler asks the sequencer: in memory when this replica is the sequencer (or the only
//! one, with `rabbitmq.buildLocks: false`), else as a batched question on the claims queue with
//! the answer on RabbitMQ's direct reply-to.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bcw_protocol::{Answer, LaunchState, Question};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::decider::Decider;
use super::sequencer::Core;

/// Longest a question waits for its answer (and for a connection to ask on).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer, and when the question was asked (a permitted create must be sent within S of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The sequencer's answer.
    pub answer: Answer<String>,
    /// When the question was asked.
    pub asked_at: Instant,
}

/// The sequencer could not be asked, or did not answer in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sequencer did not answer: {0}")]
pub struct Unanswered(pub String);

/// A question on its way, with where its answer goes.
pub(crate) struct Pending {
    pub(crate) question: Question<String>,
    pub(crate) reply: oneshot::Sender<Answer<String>>,
}

/// The way to the sequencer over the current connection.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) inbox: mpsc::UnboundedSender<Pending>,
    /// Decides here once this replica is the sequencer.
    pub(crate) core: Arc<Core>,
}

/// Asks the sequencer.
#[derive(Clone)]
pub struct Protocol {
    way: Way,
}

#[derive(Clone)]
enum Way {
    /// Through the claims queue or the local sequencer, over whichever connection is current.
    Shared(watch::Receiver<Option<Link>>),
    /// One replica, decisions in process only (nothing survives a restart).
    Local(Arc<Mutex<Decider>>),
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let way = match self.way {
            Way::Shared(_) => "shared",
            Way::Local(_) => "local",
        };
        f.debug_struct("Protocol").field("way", &way).finish()
    }
}

impl Protocol {
    /// Asks through the links the sequencer companion publishes.
    pub(crate) fn shared(links: watch::Receiver<Option<Link>>) -> Self {
        Protocol {
            way: Way::Shared(links),
        }
    }

    /// Decides in this process only: for a single replica (`rabbitmq.buildLocks: false`).
    /// `busy_for` is S + H per executor.
    pub fn local(busy_for: BTreeMap<String, Duration>) -> Self {
        Protocol {
            way: Way::Local(Arc::new(Mutex::new(Decider::new(rand::random(), busy_for)))),
        }
    }

    /// Asks one question.
    pub async fn ask(&self, question: Question<String>) -> Result<Asked, Unanswered> {
        let asked_at = Instant::now();
        let answer = match &self.way {
            Way::Local(decider) => {
                // A poisoned lock held a table a panic left half-updated: keep it (every
                // decision is one call on one entry).
                let mut decider = decider.lock().unwrap_or_else(PoisonError::into_inner);
                decider.decide(&question).answer
            }
            Way::Shared(links) => ask_shared(links.clone(), question, asked_at).await?,
        };
        Ok(Asked { answer, asked_at })
    }

    /// What the sequencer knows of a build's launch (`None`: it could not be asked).
    pub async fn state(&self, build: u64) -> Option<LaunchState> {
        match self.ask(Question::State { build }).await {
            Ok(Asked {
                answer: Answer::State { state },
                ..
            }) => Some(state),
            _ => None,
        }
    }
}

async fn ask_shared(
    mut links: watch::Receiver<Option<Link>>,
    question: Question<String>,
    asked_at: Instant,
) -> Result<Answer<String>, Unanswered> {
    let deadline = asked_at + ASK_TIMEOUT;
    let link = tokio::time::timeout_at(deadline, links.wait_for(Option::is_some))
        .await
        .map_err(|_| Unanswered("no broker connection".into()))?
        .map_err(|_| Unanswered("the worker is stopping".into()))?
        .clone()
        .ok_or_else(|| Unanswered("no broker connection".into()))?;
    let local = tokio::time::timeout_at(deadline, link.core.answer(&question));
    if let Some(answer) = local
        .await
        .map_err(|_| Unanswered(format!("not recorded within {ASK_TIMEOUT:?}")))?
    {
        return answer;
    }
    let (reply, answer) = oneshot::channel();
    link.inbox
        .send(Pending { question, reply })
        .map_err(|_| Unanswered("the connection closed".into()))?;
    tokio::time::timeout_at(deadline, answer)
        .await
        .map_err(|_| Unanswered(format!("no answer within {ASK_TIMEOUT:?}")))?
        .map_err(|_| Unanswered("the connection closed before the answer".into()))
}
