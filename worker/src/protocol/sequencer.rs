//! The sequencer on the broker: every replica consumes `<queue>.claims` (single active
//! consumer); the one the broker makes active appends its epoch marker to `<queue>.ledger`,
//! reads the ledger back up to it, and from then on answers every question with the table of
//! `bcw-protocol`, appending what must be recorded (on the channel that holds its consumer, so
//! that a confirmed append proves it was still the active one) before it answers. Questions
//! and answers are grouped: whatever arrived while an append waited for its confirm is decided
//! and recorded together.
//!
//! On the same connection, the asking side: questions from this process go to the local table
//! once this replica is known to be the sequencer, else in batches to the claims queue, with
//! their answers on RabbitMQ's direct reply-to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bcw_protocol::wire::{Answers, LedgerEntry, Questions, Read, Replay};
use bcw_protocol::{Answer, Bounds, Decision, Millis, Question, Record, Table};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::client::{ASK_TIMEOUT, Link, Pending, Protocol};
use crate::broker::stream::StreamReader;
use crate::broker::{Companion, Running};
use crate::telemetry::metrics;

/// Questions taken into one decision round at most.
const ROUND: usize = 512;
/// Unacknowledged questions the sequencer holds at once.
const CLAIMS_PREFETCH: u16 = 512;
/// Longest wait for the ledger's confirm of an append.
const APPEND_WAIT: Duration = Duration::from_secs(10);
/// Longest a new sequencer reads the ledger before it gives up (and its connection with it).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
/// RabbitMQ's direct reply-to pseudo-queue.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The table, the executors' names, and the sequencer's clock.
#[derive(Debug)]
pub struct Decider {
    table: Table<u16>,
    names: Vec<String>,
    ids: HashMap<String, u16>,
    origin: Instant,
    busy_for: BTreeMap<String, Duration>,
}

impl Decider {
    /// An empty table of `epoch`; `busy_for` is S + H per executor of this configuration.
    pub fn new(epoch: u32, busy_for: BTreeMap<String, Duration>) -> Self {
        let default = busy_for.values().max().copied().unwrap_or_default();
        let retention = crate::broker::topology::LEDGER_RETENTION;
        Decider {
            table: Table::new(
                epoch,
                Bounds {
                    busy_for: HashMap::new(),
                    default_busy_for: millis(default),
                },
                millis(retention),
            ),
            names: Vec::new(),
            ids: HashMap::new(),
            origin: Instant::now(),
            busy_for,
        }
    }

    /// The sequencer's clock.
    fn now(&self) -> Millis {
        millis(self.origin.elapsed())
    }

    /// The table's epoch.
    fn epoch(&self) -> u32 {
        self.table.epoch()
    }

    /// Decides a question.
    pub fn decide(&mut self, question: &Question<String>) -> Decision<String> {
        let q = self.intern_question(question);
        let d = self.table.decide(&q, self.now());
        Decision {
            answer: self.extern_answer(d.answer),
            record: d.record.map(|r| self.extern_record(r)),
            fenced: d.fenced,
        }
    }

    /// Applies a record read back from the ledger.
    fn replay(&mut self, record: &Record<String>) {
        let r = match record {
            Record::Placed { build, exec } => Record::Placed {
                build: *build,
                exec: self.id(exec),
            },
            Record::Launched { build, exec } => Record::Launched {
                build: *build,
                exec: self.id(exec),
            },
            Record::Stopped { build } => Record::Stopped { build: *build },
        };
        let now = self.now();
        self.table.replay(&r, now);
    }

    fn id(&mut self, name: &str) -> u16 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u16::try_from(self.names.len()).unwrap_or(u16::MAX);
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        if let Some(busy) = self.busy_for.get(name) {
            self.table.set_busy_for(id, millis(*busy));
        }
        id
    }

    fn name(&self, id: u16) -> String {
        self.names.get(usize::from(id)).cloned().unwrap_or_default()
    }

    fn intern_question(&mut self, q: &Question<String>) -> Question<u16> {
        match q {
            Question::Claim {
                build,
                prefs,
                failed,
            } => Question::Claim {
                build: *build,
                prefs: prefs.iter().map(|p| self.id(p)).collect(),
                failed: failed.as_ref().map(|(e, v)| (self.id(e), *v)),
            },
            Question::Vacate {
                build,
                exec,
                version,
                prefs,
            } => Question::Vacate {
                build: *build,
                exec: self.id(exec),
                version: *version,
                prefs: prefs.iter().map(|p| self.id(p)).collect(),
            },
            Question::Launched {
                build,
                exec,
                version,
            } => Question::Launched {
                build: *build,
                exec: self.id(exec),
                version: *version,
            },
            Question::Stop { build } => Question::Stop { build: *build },
            Question::State { build } => Question::State { build: *build },
        }
    }

    fn extern_answer(&self, a: Answer<u16>) -> Answer<String> {
        match a {
            Answer::Go { exec, version } => Answer::Go {
                exec: self.name(exec),
                version,
            },
            Answer::Look { exec, version } => Answer::Look {
                exec: self.name(exec),
                version,
            },
            Answer::Wait { exec, wait } => Answer::Wait {
                exec: self.name(exec),
                wait,
            },
            Answer::Launched { exec } => Answer::Launched {
                exec: self.name(exec),
            },
            Answer::StopNoted { at, busy_for } => Answer::StopNoted {
                at: at.map(|e| self.name(e)),
                busy_for,
            },
            Answer::Nowhere => Answer::Nowhere,
            Answer::Stopped => Answer::Stopped,
            Answer::Noted => Answer::Noted,
            Answer::State { state } => Answer::State { state },
        }
    }

    fn extern_record(&self, r: Record<u16>) -> Record<String> {
        match r {
            Record::Placed { build, exec } => Record::Placed {
                build,
                exec: self.name(exec),
            },
            Record::Launched { build, exec } => Record::Launched {
                build,
                exec: self.name(exec),
            },
            Record::Stopped { build } => Record::Stopped { build },
        }
    }
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where the protocol lives on the broker.
#[derive(Debug, Clone)]
pub struct Names {
    /// `<queue>.claims`.
    pub claims: String,
    /// `<queue>.ledger`.
    pub ledger: String,
}

/// The protocol's companion on every broker connection.
pub struct Service {
    names: Names,
    busy_for: BTreeMap<String, Duration>,
    links: watch::Sender<Option<Link>>,
}

impl Service {
    /// The companion, and the handle handlers ask through. `busy_for` is S + H per executor.
    pub fn new(names: Names, busy_for: BTreeMap<String, Duration>) -> (Arc<Service>, Protocol) {
        let (links, rx) = watch::channel(None);
        let service = Arc::new(Service {
            names,
            busy_for,
            links,
        });
        (service, Protocol::shared(rx))
    }
}

impl Companion for Service {
    fn attach(&self, connection: Arc<Connection>) -> BoxFuture<'static, Result<Running, String>> {
        let names = self.names.clone();
        let busy_for = self.busy_for.clone();
        let links = self.links.clone();
        async move {
            let session = Session::open(connection, names, busy_for, links).await?;
            Ok(session.run().boxed())
        }
        .boxed()
    }
}

/// The protocol on one connection.
struct Session {
    sequencer: Sequencer,
    asker: Asker,
    replies: Consumer,
    waiting: Arc<std::sync::Mutex<HashMap<String, Waiting>>>,
    /// Clears the link when the session ends.
    _link: LinkGuard,
}

struct LinkGuard(watch::Sender<Option<Link>>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

/// Askers of one remote batch, waiting for its answers.
struct Waiting {
    since: Instant,
    replies: Vec<oneshot::Sender<Answer<String>>>,
}

impl Session {
    async fn open(
        connection: Arc<Connection>,
        names: Names,
        busy_for: BTreeMap<String, Duration>,
        links: watch::Sender<Option<Link>>,
    ) -> Result<Session, String> {
        let fail = |what: &str, e: lapin::Error| format!("launch protocol: {what}: {e}");
        let rpc = connection
            .create_channel()
            .await
            .map_err(|e| fail("rpc channel", e))?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let replies = rpc
            .basic_consume(REPLY_TO.into(), "".into(), no_ack, FieldTable::default())
            .await
            .map_err(|e| fail("reply consumer", e))?;
        let claims = connection
            .create_channel()
            .await
            .map_err(|e| fail("claims channel", e))?;
        claims
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| fail("claims confirms", e))?;
        claims
            .basic_qos(CLAIMS_PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| fail("claims qos", e))?;
        let consumer = claims
            .basic_consume(
                names.claims.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| fail("claims consumer", e))?;
        let (local_tx, local_rx) = mpsc::channel(1024);
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let active = Arc::new(AtomicBool::new(false));
        let waiting = Arc::default();
        let asker = Asker {
            rpc,
            claims: names.claims.clone(),
            inbox: inbox_rx,
            local: local_tx,
            active: active.clone(),
            waiting: Arc::clone(&waiting),
            next: AtomicU64::new(0),
        };
        // Whoever is active learns it from this (an empty batch, answered by nobody).
        asker
            .publish(&Questions { questions: vec![] }, None)
            .await?;
        links.send_replace(Some(Link { inbox }));
        Ok(Session {
            sequencer: Sequencer {
                connection,
                claims,
                consumer,
                ledger: names.ledger,
                busy_for,
                decider: None,
                local: local_rx,
                active,
            },
            asker,
            replies,
            waiting,
            _link: LinkGuard(links),
        })
    }

    /// Runs until something on the connection ends; returns why.
    async fn run(self) -> String {
        let Session {
            sequencer,
            asker,
            replies,
            waiting,
            _link,
        } = self;
        tokio::select! {
            why = sequencer.run() => why,
            why = asker.run() => why,
            why = read_replies(replies, waiting) => why,
        }
    }
}

/// Questions of one round, with where their answers go.
#[derive(Default)]
struct Round {
    remote: Vec<Delivery>,
    local: Vec<Pending>,
}

impl Round {
    fn len(&self) -> usize {
        self.remote.len() + self.local.len()
    }
}

/// The sequencer's side of a session.
struct Sequencer {
    connection: Arc<Connection>,
    claims: Channel,
    consumer: Consumer,
    ledger: String,
    busy_for: BTreeMap<String, Duration>,
    /// The table, once this replica is the active consumer and has read the ledger.
    decider: Option<Decider>,
    local: mpsc::Receiver<Vec<Pending>>,
    active: Arc<AtomicBool>,
}

impl Sequencer {
    async fn run(mut self) -> String {
        loop {
            let mut round = Round::default();
            tokio::select! {
                next = self.consumer.next() => match next {
                    Some(Ok(d)) => round.remote.push(d),
                    Some(Err(e)) => return format!("launch protocol: claims consumer: {e}"),
                    None => return "launch protocol: claims consumer cancelled".into(),
                },
                Some(batch) = self.local.recv() => round.local.extend(batch),
            }
            self.gather(&mut round);
            if let Err(why) = self.decide_round(round).await {
                return why;
            }
        }
    }

    /// Takes in whatever else is ready now (group commit).
    fn gather(&mut self, round: &mut Round) {
        while round.len() < ROUND
            && let Some(Some(Ok(d))) = self.consumer.next().now_or_never()
        {
            round.remote.push(d);
        }
        while round.len() < ROUND
            && let Ok(batch) = self.local.try_recv()
        {
            round.local.extend(batch);
        }
    }

    async fn decide_round(&mut self, round: Round) -> Result<(), String> {
        if self.decider.is_none() {
            self.decider = Some(self.activate().await?);
        }
        let decider = self.decider.as_mut().expect("activated above");
        let epoch = decider.epoch();
        let mut records = Vec::new();
        let mut fenced = false;
        let mut decide = |q: &Question<String>| {
            let d = decider.decide(q);
            fenced |= d.fenced;
            records.extend(d.record);
            metrics::protocol_answer(answer_label(&d.answer));
            d.answer
        };
        let remote: Vec<(Delivery, Option<Answers>)> = round
            .remote
            .into_iter()
            .map(|d| {
                let answers = serde_json::from_slice::<Questions>(&d.data)
                    .ok()
                    .map(|qs| Answers {
                        answers: qs.questions.iter().map(&mut decide).collect(),
                    });
                (d, answers)
            })
            .collect();
        let local: Vec<(Pending, Answer<String>)> = round
            .local
            .into_iter()
            .map(|p| {
                let a = decide(&p.question);
                (p, a)
            })
            .collect();
        if fenced || !records.is_empty() {
            self.append(&LedgerEntry::Records { epoch, records })
                .await?;
        }
        self.answer(remote, local).await
    }

    /// Answers a decided round and acknowledges its questions.
    async fn answer(
        &self,
        remote: Vec<(Delivery, Option<Answers>)>,
        local: Vec<(Pending, Answer<String>)>,
    ) -> Result<(), String> {
        for (pending, answer) in local {
            let _ = pending.reply.send(answer);
        }
        let Some(last) = remote.last().map(|(d, _)| d.acker.clone()) else {
            return Ok(());
        };
        for (d, answers) in &remote {
            let (Some(answers), Some(to)) = (answers, d.properties.reply_to()) else {
                continue;
            };
            let mut props = BasicProperties::default();
            if let Some(id) = d.properties.correlation_id() {
                props = props.with_correlation_id(id.clone());
            }
            let body = serde_json::to_vec(answers).expect("answers serialise");
            // Not awaited: a lost answer is asked again.
            self.claims
                .basic_publish(
                    "".into(),
                    to.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .map_err(|e| format!("launch protocol: answering: {e}"))?;
        }
        last.ack(BasicAckOptions { multiple: true })
            .await
            .map(|_| ())
            .map_err(|e| format!("launch protocol: acknowledging questions: {e}"))
    }

    /// Appends to the ledger on the claims channel and waits for the broker's confirm.
    async fn append(&self, entry: &LedgerEntry<String>) -> Result<(), String> {
        let body = entry.encode();
        let confirm = self
            .claims
            .basic_publish(
                "".into(),
                self.ledger.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| format!("launch protocol: ledger append: {e}"))?;
        match tokio::time::timeout(APPEND_WAIT, confirm).await {
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(other)) => Err(format!("launch protocol: ledger append refused: {other:?}")),
            Ok(Err(e)) => Err(format!("launch protocol: ledger append: {e}")),
            Err(_) => Err("launch protocol: the ledger append was not confirmed in time".into()),
        }
    }

    /// This replica's consumer is the active one: mark a new epoch and read the ledger up to it.
    async fn activate(&mut self) -> Result<Decider, String> {
        let started = Instant::now();
        let mut decider = Decider::new(rand::random(), self.busy_for.clone());
        let marker = uuid::Uuid::new_v4().simple().to_string();
        self.append(&LedgerEntry::Marker {
            epoch: decider.epoch(),
            marker: marker.clone(),
        })
        .await?;
        let retention = crate::broker::topology::LEDGER_RETENTION.as_secs() as i64;
        let from = jiff::Timestamp::now().as_second() - retention;
        let mut reader = StreamReader::open(&self.connection, &self.ledger, from)
            .await
            .map_err(|e| format!("launch protocol: reading the ledger: {e}"))?;
        let mut replay = Replay::default();
        let read = tokio::time::timeout(CATCH_UP_LIMIT, async {
            while let Some(d) = reader.next().await {
                let d = d.map_err(|e| format!("launch protocol: reading the ledger: {e}"))?;
                match replay.read(&d.data, &marker) {
                    Read::Caught => return Ok(()),
                    Read::Apply(records) => records.iter().for_each(|r| decider.replay(r)),
                    Read::Skip => {}
                }
            }
            Err("launch protocol: the ledger reader was cancelled".to_string())
        })
        .await;
        reader.close().await;
        read.map_err(|_| "launch protocol: the ledger was not read in time".to_string())??;
        self.active.store(true, Ordering::SeqCst);
        metrics::protocol_sequencer(true);
        info!(
            epoch = decider.epoch(),
            records = replay.accepted,
            void = replay.void,
            builds = decider.table.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "this replica is the sequencer: the ledger is read"
        );
        Ok(decider)
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        if self.active.swap(false, Ordering::SeqCst) {
            metrics::protocol_sequencer(false);
        }
    }
}

fn answer_label(a: &Answer<String>) -> &'static str {
    match a {
        Answer::Go { .. } => "go",
        Answer::Look { .. } => "look",
        Answer::Wait { .. } => "wait",
        Answer::Nowhere => "nowhere",
        Answer::Launched { .. } => "launched",
        Answer::Stopped => "stopped",
        Answer::Noted => "noted",
        Answer::StopNoted { .. } => "stop_noted",
        Answer::State { .. } => "state",
    }
}

/// The asking side of a session.
struct Asker {
    rpc: Channel,
    claims: String,
    inbox: mpsc::UnboundedReceiver<Pending>,
    local: mpsc::Sender<Vec<Pending>>,
    active: Arc<AtomicBool>,
    waiting: Arc<std::sync::Mutex<HashMap<String, Waiting>>>,
    next: AtomicU64,
}

impl Asker {
    async fn run(mut self) -> String {
        while let Some(first) = self.inbox.recv().await {
            let mut batch = vec![first];
            while batch.len() < ROUND
                && let Ok(p) = self.inbox.try_recv()
            {
                batch.push(p);
            }
            let sent = if self.active.load(Ordering::SeqCst) {
                self.local
                    .send(batch)
                    .await
                    .map_err(|_| "launch protocol: the sequencer stopped".to_string())
            } else {
                self.ask_remote(batch).await
            };
            if let Err(why) = sent {
                return why;
            }
        }
        "launch protocol: the inbox closed".into()
    }

    async fn ask_remote(&self, batch: Vec<Pending>) -> Result<(), String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let (questions, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.question, p.reply)).unzip();
        {
            let mut waiting = self
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Askers give up after ASK_TIMEOUT: forget what they waited for.
            waiting.retain(|_, w| w.since.elapsed() < ASK_TIMEOUT);
            waiting.insert(
                id.clone(),
                Waiting {
                    since: Instant::now(),
                    replies,
                },
            );
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

/// Hands the answers on the direct reply-to to their askers.
async fn read_replies(
    mut replies: Consumer,
    waiting: Arc<std::sync::Mutex<HashMap<String, Waiting>>>,
) -> String {
    while let Some(next) = replies.next().await {
        let d = match next {
            Ok(d) => d,
            Err(e) => return format!("launch protocol: answers: {e}"),
        };
        let Some(id) = d.properties.correlation_id() else {
            continue;
        };
        let w = waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id.as_str());
        let (Some(w), Ok(answers)) = (w, serde_json::from_slice::<Answers>(&d.data)) else {
            continue;
        };
        if answers.answers.len() != w.replies.len() {
            warn!("an answer batch does not match its questions; its askers will ask again");
            continue;
        }
        for (reply, answer) in w.replies.into_iter().zip(answers.answers) {
            let _ = reply.send(answer);
        }
    }
    "launch protocol: the answer consumer was cancelled".into()
}
