//! The sequencer on the broker: every replica consumes `<queue>.claims` (single active
//! consumer); the one the broker makes active appends its epoch marker to `<queue>.ledger`,
//! reads the ledger back up to it, and from then on decides every question with the table of
//! `bcw-protocol`. What must be recorded is appended (on the channel that holds the consumer,
//! so that a confirmed append proves this replica was still the active one) before the answer
//! is given; whatever is decided while an append waits for its confirm goes into the next one.
//!
//! This replica's own handlers decide in the [`Core`] directly, under its lock, once it is the
//! sequencer: an answer that records nothing is given at once, one that does waits for the
//! append that covers it. Until then, and in every other replica, they ask through the claims
//! queue ([`super::asker`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bcw_protocol::wire::{Answers, LedgerEntry, Questions, Read, Replay};
use bcw_protocol::{Answer, Question, Record};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::info;

use super::asker::Asker;
use super::client::{Link, Protocol, Unanswered};
use super::decider::Decider;
use crate::broker::stream::StreamReader;
use crate::broker::{Companion, Connection, Running};
use crate::telemetry::metrics;

/// Questions decided before their answers wait for one append, at most.
const ROUND: usize = 512;
/// Unacknowledged questions the sequencer holds at once.
const CLAIMS_PREFETCH: u16 = 512;
/// Longest wait for the ledger's confirm of an append.
const APPEND_WAIT: Duration = Duration::from_secs(10);
/// Longest a new sequencer reads the ledger before it gives up (and its connection with it).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
/// How often an active sequencer appends even with nothing to record, so that its successor
/// can count the time it saw pass (docs/protocol.md, Time).
const LEDGER_TICK: Duration = Duration::from_secs(1);
/// Least time between the starts of two ledger appends under load. Decisions taken meanwhile
/// go into the next one, as records do behind a producer's linger: an append costs the broker
/// more than a build's other messages together, and under load this makes them a fraction.
pub const APPEND_GAP: Duration = Duration::from_millis(5);
/// Load, for [`APPEND_GAP`]: an append that covered this many decisions shows them coming
/// faster than the confirms. After a smaller one the next goes at once, since waiting would
/// only delay builds at rates where appends cost little anyway.
pub const BUSY_GROUP: u64 = 2;

/// Where the protocol lives on the broker.
#[derive(Debug, Clone)]
pub struct Names {
    /// `<queue>.claims`.
    pub claims: String,
    /// `<queue>.ledger`.
    pub ledger: String,
}

/// What a decision needs before its answer may be given.
#[derive(Debug)]
pub(crate) enum Decided {
    /// Nothing: give it now.
    Now(Answer<String>),
    /// The append that covers this ticket.
    After(Answer<String>, u64),
}

/// The sequencer's state on one connection, shared by its tasks and this replica's handlers.
pub(crate) struct Core {
    /// The table, once this replica is the active consumer and has read the ledger.
    decider: Mutex<Option<Decider>>,
    log: Mutex<Log>,
    /// The highest ticket an append covered; `None` once the session ended.
    appended: watch::Sender<Option<u64>>,
    wake: Notify,
}

/// What waits for the next append.
#[derive(Default)]
struct Log {
    records: Vec<Record<String>>,
    /// Tickets handed out (one per decision that must be covered by an append).
    issued: u64,
}

impl Core {
    fn new() -> Arc<Core> {
        Arc::new(Core {
            decider: Mutex::new(None),
            log: Mutex::default(),
            appended: watch::channel(Some(0)).0,
            wake: Notify::new(),
        })
    }

    /// Decides a question here, if this replica is the sequencer (`None`: ask it).
    pub(crate) fn decide(&self, question: &Question<String>) -> Option<Decided> {
        // A poisoned lock held a table a panic left between two decisions (each decision is
        // one call on one entry): keep it.
        let mut decider = self.decider.lock().unwrap_or_else(PoisonError::into_inner);
        let d = decider.as_mut()?.decide(question);
        metrics::protocol_answer(answer_label(&d.answer));
        if d.record.is_none() && !d.fenced {
            return Some(Decided::Now(d.answer));
        }
        // Recorded in decision order: both locks are held.
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.records.extend(d.record);
        log.issued += 1;
        let ticket = log.issued;
        drop(log);
        drop(decider);
        self.wake.notify_one();
        Some(Decided::After(d.answer, ticket))
    }

    /// Waits until an append covers `ticket`.
    pub(crate) async fn covered(&self, ticket: u64) -> Result<(), Unanswered> {
        let mut appended = self.appended.subscribe();
        let ended = || Unanswered("the sequencer's connection ended".into());
        let upto = *appended
            .wait_for(|upto| upto.is_none_or(|u| u >= ticket))
            .await
            .map_err(|_| ended())?;
        upto.map(|_| ()).ok_or_else(ended)
    }

    /// Decides and waits for the record: the answer as a handler of this replica gets it.
    pub(crate) async fn answer(
        &self,
        question: &Question<String>,
    ) -> Option<Result<Answer<String>, Unanswered>> {
        Some(match self.decide(question)? {
            Decided::Now(a) => Ok(a),
            Decided::After(a, ticket) => self.covered(ticket).await.map(|()| a),
        })
    }

    fn is_active(&self) -> bool {
        self.decider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
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
            let session = open(connection, names, busy_for, links).await?;
            Ok(session.boxed())
        }
        .boxed()
    }
}

/// Clears the link when the session ends.
struct LinkGuard(watch::Sender<Option<Link>>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

/// Opens the protocol's channels on a connection; the future runs until one of its parts ends.
async fn open(
    connection: Arc<Connection>,
    names: Names,
    busy_for: BTreeMap<String, Duration>,
    links: watch::Sender<Option<Link>>,
) -> Result<impl Future<Output = String>, String> {
    let (claims, consumer) = claims_channel(&connection, &names.claims).await?;
    let core = Core::new();
    let (asker, replies, inbox) = Asker::open(&connection, &names.claims).await?;
    // Whoever is active learns it from this (an empty batch, answered by nobody).
    asker.ping().await?;
    links.send_replace(Some(Link {
        inbox,
        core: core.clone(),
    }));
    let guard = LinkGuard(links);
    let sequencer = Sequencer {
        connection,
        claims: claims.clone(),
        consumer,
        ledger: names.ledger.clone(),
        busy_for,
        core: core.clone(),
        active: AtomicBool::new(false),
    };
    let appender = append_loop(core.clone(), claims, names.ledger);
    Ok(async move {
        let _guard = guard;
        let why = tokio::select! {
            why = sequencer.run() => why,
            why = appender => why,
            why = asker.run() => why,
            why = replies.run() => why,
        };
        // Whoever waits for an append will not get one.
        core.appended.send_replace(None);
        why
    })
}

async fn claims_channel(
    connection: &Connection,
    claims: &str,
) -> Result<(Channel, Consumer), String> {
    let fail = |what: &str, e: lapin::Error| format!("launch protocol: {what}: {e}");
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| fail("claims channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| fail("claims confirms", e))?;
    channel
        .basic_qos(CLAIMS_PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| fail("claims qos", e))?;
    let consumer = channel
        .basic_consume(
            claims.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("claims consumer", e))?;
    Ok((channel, consumer))
}

/// Appends to the ledger on `channel` and waits for the broker's confirm.
async fn append(
    channel: &Channel,
    ledger: &str,
    entry: &LedgerEntry<String>,
) -> Result<(), String> {
    let body = entry.encode();
    let confirm = channel
        .basic_publish(
            "".into(),
            ledger.into(),
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

/// Appends what the decisions recorded, a group at a time: everything decided while one append
/// waits for its confirm (and, after a [`BUSY_GROUP`], for [`APPEND_GAP`] since it started)
/// goes into the next. With nothing to record for [`LEDGER_TICK`], it appends its clock alone.
async fn append_loop(core: Arc<Core>, channel: Channel, ledger: String) -> String {
    let mut covered = 0;
    loop {
        let woken = tokio::time::timeout(LEDGER_TICK, core.wake.notified())
            .await
            .is_ok();
        let (entry, upto) = {
            let decider = core.decider.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(decider) = decider.as_ref() else {
                continue;
            };
            let mut log = core.log.lock().unwrap_or_else(PoisonError::into_inner);
            if woken && Some(log.issued) == *core.appended.borrow() {
                continue;
            }
            // Read after every decision this append covers: none was taken later than `at`.
            let entry = LedgerEntry::Records {
                epoch: decider.epoch(),
                records: std::mem::take(&mut log.records),
                at: Some(decider.now()),
            };
            (entry, log.issued)
        };
        let next = Instant::now() + APPEND_GAP;
        if let Err(why) = append(&channel, &ledger, &entry).await {
            return why;
        }
        core.appended.send_replace(Some(upto));
        if upto - covered >= BUSY_GROUP {
            tokio::time::sleep_until(next).await;
        }
        covered = upto;
    }
}

/// The consumer side of the sequencer on one connection.
struct Sequencer {
    connection: Arc<Connection>,
    claims: Channel,
    consumer: Consumer,
    ledger: String,
    busy_for: BTreeMap<String, Duration>,
    core: Arc<Core>,
    active: AtomicBool,
}

impl Sequencer {
    async fn run(mut self) -> String {
        loop {
            let first = match self.consumer.next().await {
                Some(Ok(d)) => d,
                Some(Err(e)) => return format!("launch protocol: claims consumer: {e}"),
                None => return "launch protocol: claims consumer cancelled".into(),
            };
            let mut round = vec![first];
            while round.len() < ROUND
                && let Some(Some(Ok(d))) = self.consumer.next().now_or_never()
            {
                round.push(d);
            }
            if let Err(why) = self.answer_round(round).await {
                return why;
            }
        }
    }

    /// Decides a round of other replicas' questions, waits for their record, answers them.
    async fn answer_round(&mut self, round: Vec<Delivery>) -> Result<(), String> {
        if !self.core.is_active() {
            self.activate().await?;
        }
        let mut upto = 0;
        let mut answered = Vec::with_capacity(round.len());
        for d in &round {
            let answers = serde_json::from_slice::<Questions>(&d.data).ok().map(|qs| {
                let answers = qs.questions.iter().map(|q| {
                    match self.core.decide(q).expect("this replica is active") {
                        Decided::Now(a) => a,
                        Decided::After(a, ticket) => {
                            upto = upto.max(ticket);
                            a
                        }
                    }
                });
                Answers {
                    answers: answers.collect(),
                }
            });
            answered.push(answers);
        }
        if upto > 0 {
            self.core
                .covered(upto)
                .await
                .map_err(|e| format!("launch protocol: {e}"))?;
        }
        self.reply(&round, answered).await
    }

    /// Answers a decided round and acknowledges its questions.
    async fn reply(
        &self,
        round: &[Delivery],
        answered: Vec<Option<Answers>>,
    ) -> Result<(), String> {
        for (d, answers) in round.iter().zip(answered) {
            let (Some(answers), Some(to)) = (answers, d.properties.reply_to()) else {
                continue;
            };
            let mut props = BasicProperties::default();
            if let Some(id) = d.properties.correlation_id() {
                props = props.with_correlation_id(id.clone());
            }
            let body = serde_json::to_vec(&answers).expect("answers serialise");
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
        let Some(last) = round.last() else {
            return Ok(());
        };
        last.acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .map(|_| ())
            .map_err(|e| format!("launch protocol: acknowledging questions: {e}"))
    }

    /// This replica's consumer is the active one: mark a new epoch and read the ledger up to it.
    async fn activate(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut decider = Decider::new(rand::random(), self.busy_for.clone());
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let entry = LedgerEntry::Marker {
            epoch: decider.epoch(),
            marker: marker.clone(),
        };
        append(&self.claims, &self.ledger, &entry).await?;
        let replay = self.read_ledger(&marker, &mut decider).await?;
        info!(
            epoch = decider.epoch(),
            records = replay.accepted,
            void = replay.void,
            builds = decider.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "this replica is the sequencer: the ledger is read"
        );
        *self
            .core
            .decider
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(decider);
        self.active.store(true, Ordering::SeqCst);
        metrics::protocol_sequencer(true);
        Ok(())
    }

    /// Reads the ledger of the retention window up to `marker` into `decider`.
    async fn read_ledger(&self, marker: &str, decider: &mut Decider) -> Result<Replay, String> {
        let retention = crate::broker::topology::LEDGER_RETENTION.as_secs() as i64;
        let from = jiff::Timestamp::now().as_second() - retention;
        let mut reader = StreamReader::open(&self.connection, &self.ledger, from)
            .await
            .map_err(|e| format!("launch protocol: reading the ledger: {e}"))?;
        let mut replay = Replay::default();
        let read = tokio::time::timeout(CATCH_UP_LIMIT, async {
            while let Some(d) = reader.next().await {
                let d = d.map_err(|e| format!("launch protocol: reading the ledger: {e}"))?;
                match replay.read(&d.data, marker) {
                    Read::Caught => {
                        decider.caught_up(replay.clock());
                        return Ok(());
                    }
                    Read::Apply(records) => {
                        let at = replay.clock();
                        records.iter().for_each(|r| decider.replay(r, at));
                    }
                    Read::Skip => {}
                }
            }
            Err("launch protocol: the ledger reader was cancelled".to_string())
        })
        .await;
        reader.close().await;
        read.map_err(|_| "launch protocol: the ledger was not read in time".to_string())??;
        Ok(replay)
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        if self.active.swap(false, Ordering::SeqCst) {
            metrics::protocol_sequencer(false);
        }
        // No decision may be taken on a table whose connection is gone.
        *self
            .core
            .decider
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
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
