//! The real RabbitMQ of the machine, from a test's point of view.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::sync::Notify;

/// The broker every test uses.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10";

/// Names of one test's broker objects.
#[derive(Debug, Clone)]
pub struct Names {
    /// Producers' exchange.
    pub exchange: String,
    /// The pool's queue.
    pub queue: String,
    /// Events exchange.
    pub events: String,
}

impl Names {
    /// Fresh names for a test: `bcwt-<tag>-<random>`.
    pub fn unique(tag: &str) -> Names {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let base = format!("bcwt-{tag}-{id}");
        Names {
            exchange: format!("{base}.build"),
            queue: base.clone(),
            events: format!("{base}.events"),
        }
    }

    /// `<queue>.dead`.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

/// A connection for a test.
#[derive(Debug)]
pub struct Rabbit {
    conn: Connection,
    channel: Channel,
}

impl Rabbit {
    /// Connects to the local broker.
    pub async fn connect() -> Rabbit {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (guest/guest)");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Rabbit { conn, channel }
    }

    /// A fresh channel on the test's connection (for set-ups the helpers here do not cover).
    pub async fn channel(&self) -> Channel {
        self.conn.create_channel().await.expect("channel")
    }

    /// Declares the producers' and the events exchanges (topic, durable), as the worker does.
    pub async fn declare_exchanges(&self, names: &Names) {
        for ex in [&names.exchange, &names.events] {
            self.channel
                .exchange_declare(
                    ShortString::from(ex.as_str()),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("exchange declare");
        }
    }

    /// Publishes a JSON body as a producer does (persistent, `application/json`), confirmed.
    pub async fn publish_json(&self, exchange: &str, routing_key: &str, body: &Value) {
        self.publish_bytes(
            exchange,
            routing_key,
            &serde_json::to_vec(body).unwrap(),
            BasicProperties::default(),
        )
        .await;
    }

    /// Publishes raw bytes with properties, confirmed.
    pub async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        let props = props
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish");
        assert!(
            confirm.await.expect("confirm").is_ack(),
            "broker refused a publish"
        );
    }

    /// Ready messages in a queue (`None` when it does not exist).
    pub async fn depth(&self, queue: &str) -> Option<u32> {
        Some(self.look(queue).await?.message_count())
    }

    /// Consumers of a queue (`None` when it does not exist).
    pub async fn consumers(&self, queue: &str) -> Option<u32> {
        Some(self.look(queue).await?.consumer_count())
    }

    /// A passive declare of a queue (`None` when it does not exist).
    async fn look(&self, queue: &str) -> Option<lapin::Queue> {
        let ch = self.conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "ok".into()).await;
        Some(q)
    }

    /// Takes every message of a queue (acking them): `(headers, body)`.
    pub async fn drain(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let mut out = Vec::new();
        let ch = self.conn.create_channel().await.expect("channel");
        while let Ok(Some(msg)) = ch
            .basic_get(ShortString::from(queue), BasicGetOptions::default())
            .await
        {
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            out.push((msg.delivery.properties.clone(), msg.delivery.data.clone()));
        }
        let _ = ch.close(200, "ok".into()).await;
        out
    }

    /// Deletes everything a test's worker may have declared.
    pub async fn cleanup(&self, names: &Names) {
        let ch = self.conn.create_channel().await.expect("channel");
        let mut queues = vec![
            names.queue.clone(),
            names.dead(),
            format!("{}.claims", names.queue),
            format!("{}.ledger", names.queue),
        ];
        queues.extend((1..=10).map(|n| format!("{}.retry.{n}", names.queue)));
        for q in queues {
            let _ = ch
                .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
                .await;
        }
        for ex in [&names.exchange, &names.events] {
            let _ = ch
                .exchange_delete(
                    ShortString::from(ex.as_str()),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = ch.close(200, "ok".into()).await;
    }

    /// Starts collecting every event published to the events exchange.
    pub async fn tap(&self, names: &Names) -> EventTap {
        let ch = self.conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        ch.queue_bind(
            q.name().clone(),
            ShortString::from(names.events.as_str()),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("tap bind");
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("tap consume");
        let events = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let (e, n) = (events.clone(), notify.clone());
        tokio::spawn(async move {
            let _keep = ch;
            while let Some(Ok(d)) = consumer.next().await {
                let raw: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                let ev = Event {
                    ty: d.routing_key.as_str().to_string(),
                    id: raw["id"].as_str().unwrap_or_default().to_string(),
                    message_id: d
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|m| m.as_str().to_string()),
                    content_type: d
                        .properties
                        .content_type()
                        .as_ref()
                        .map(|m| m.as_str().to_string()),
                    data: raw["data"].clone(),
                    raw,
                    body: d.data,
                    properties: d.properties,
                };
                e.lock().unwrap().push(ev);
                n.notify_waiters();
            }
        });
        EventTap { events, notify }
    }
}

/// One event seen on the events exchange.
#[derive(Debug, Clone)]
pub struct Event {
    /// Routing key = type suffix (`build.launched`).
    pub ty: String,
    /// CloudEvent id.
    pub id: String,
    /// AMQP message id.
    pub message_id: Option<String>,
    /// AMQP content type.
    pub content_type: Option<String>,
    /// `data`.
    pub data: Value,
    /// The whole event.
    pub raw: Value,
    /// The body as received.
    pub body: Vec<u8>,
    /// The AMQP properties (headers, content type, ...).
    pub properties: BasicProperties,
}

impl Event {
    /// `data.buildId`.
    pub fn build_id(&self) -> u64 {
        self.data["buildId"].as_u64().unwrap_or_default()
    }
}

/// Events collected so far.
#[derive(Debug, Clone)]
pub struct EventTap {
    events: Arc<Mutex<Vec<Event>>>,
    notify: Arc<Notify>,
}

impl EventTap {
    /// Every event so far.
    pub fn all(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Events of one type.
    pub fn of(&self, ty: &str) -> Vec<Event> {
        self.all().into_iter().filter(|e| e.ty == ty).collect()
    }

    /// Waits until `done` holds for the events so far; panics after `timeout`.
    pub async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            {
                let all = self.all();
                if done(&all) {
                    return all;
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let all = self.all();
                let mut counts = std::collections::BTreeMap::new();
                for e in &all {
                    *counts.entry(e.ty.clone()).or_insert(0) += 1;
                }
                panic!("timed out after {timeout:?} waiting for {what}; events so far: {counts:?}");
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Waits for `n` events of type `ty`.
    pub async fn wait_count(&self, ty: &str, n: usize, timeout: Duration) -> Vec<Event> {
        self.wait(timeout, &format!("{n} {ty} events"), |all| {
            all.iter().filter(|e| e.ty == ty).count() >= n
        })
        .await;
        self.of(ty)
    }
}
