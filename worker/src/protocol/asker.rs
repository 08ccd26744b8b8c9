//! Asking a sequencer in another replica: questions go in batches to `<queue>.claims`, answers
//! come back on RabbitMQ's direct reply-to and are handed to their askers by correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bcw_protocol::Answer;
use bcw_protocol::wire::{Answers, Questions};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;

use super::client::{ASK_TIMEOUT, Pending};
use crate::broker::Connection;

/// Questions sent in one batch, at most.
const BATCH: usize = 512;
/// RabbitMQ's direct reply-to pseudo-queue: no queue per replica to declare or clean up.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Askers of one remote batch, waiting for its answers.
struct Waiting {
    since: Instant,
    replies: Vec<oneshot::Sender<Answer<String>>>,
}

type WaitingMap = Arc<Mutex<HashMap<String, Waiting>>>;

/// The asking side of a session: sends what the handlers put in its inbox.
pub(crate) struct Asker {
    rpc: Channel,
    claims: String,
    inbox: mpsc::UnboundedReceiver<Pending>,
    waiting: WaitingMap,
    next: AtomicU64,
}

/// The receiving side: answers on the direct reply-to.
pub(crate) struct Replies {
    consumer: Consumer,
    waiting: WaitingMap,
}

impl Asker {
    /// Opens the channel questions go out on and the reply consumer on it (direct reply-to
    /// needs both on one channel); returns the inbox handlers put their questions in.
    pub(crate) async fn open(
        connection: &Connection,
        claims: &str,
    ) -> Result<(Asker, Replies, mpsc::UnboundedSender<Pending>), String> {
        let fail = |what: &str, e: lapin::Error| format!("launch protocol: {what}: {e}");
        let rpc = connection
            .create_channel()
            .await
            .map_err(|e| fail("rpc channel", e))?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = rpc
            .basic_consume(REPLY_TO.into(), "".into(), no_ack, FieldTable::default())
            .await
            .map_err(|e| fail("reply consumer", e))?;
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let waiting = WaitingMap::default();
        let asker = Asker {
            rpc,
            claims: claims.to_string(),
            inbox: inbox_rx,
            waiting: Arc::clone(&waiting),
            next: AtomicU64::new(0),
        };
        Ok((asker, Replies { consumer, waiting }, inbox))
    }

    /// An empty batch, answered by nobody: whichever replica is active learns it is, and reads
    /// the ledger before the first real question arrives.
    pub(crate) async fn ping(&self) -> Result<(), String> {
        self.publish(&Questions { questions: vec![] }, None).await
    }

    /// Sends batches until the inbox closes or the channel fails; returns why.
    pub(crate) async fn run(mut self) -> String {
        while let Some(first) = self.inbox.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH
                && let Ok(p) = self.inbox.try_recv()
            {
                batch.push(p);
            }
            if let Err(why) = self.ask(batch).await {
                return why;
            }
        }
        "launch protocol: the inbox closed".into()
    }

    async fn ask(&self, batch: Vec<Pending>) -> Result<(), String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let (questions, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.question, p.reply)).unzip();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            // Askers give up after ASK_TIMEOUT: forget what they waited for.
            waiting.retain(|_, w| w.since.elapsed() < ASK_TIMEOUT);
            let since = Instant::now();
            waiting.insert(id.clone(), Waiting { since, replies });
        }
        self.publish(&Questions { questions }, Some(&id)).await
    }

    /// Publishes a batch of questions (transient, expiring with the askers' patience).
    async fn publish(&self, questions: &Questions, id: Option<&str>) -> Result<(), String> {
        let body = serde_json::to_vec(questions).expect("questions serialise");
        let mut props = BasicProperties::default()
            .with_expiration(ShortString::from(ASK_TIMEOUT.as_millis().to_string()));
        if let Some(id) = id {
            props = props
                .with_reply_to(ShortString::from(REPLY_TO))
                .with_correlation_id(ShortString::from(id));
        }
        self.rpc
            .basic_publish(
                "".into(),
                self.claims.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("launch protocol: asking: {e}"))
    }
}

impl Replies {
    /// Hands the answers to their askers until the consumer ends; returns why.
    pub(crate) async fn run(mut self) -> String {
        while let Some(next) = self.consumer.next().await {
            let d = match next {
                Ok(d) => d,
                Err(e) => return format!("launch protocol: answers: {e}"),
            };
            let Some(id) = d.properties.correlation_id() else {
                continue;
            };
            let w = self
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id.as_str());
            let (Some(w), Ok(answers)) = (w, serde_json::from_slice::<Answers>(&d.data)) else {
                continue;
            };
            if answers.answers.len() != w.replies.len() {
                warn!("an answer batch does not match its questions; its askers will ask again");
                continue;
            }
            for (reply, answer) in w.replies.into_iter().zip(answers.answers) {
                // The asker may have given up: nothing to do.
                let _ = reply.send(answer);
            }
        }
        "launch protocol: the answer consumer was cancelled".into()
    }
}
