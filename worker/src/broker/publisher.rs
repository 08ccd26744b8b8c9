//! Confirmed publishing on the channels of the current connection ([`Channels`]), behind a
//! handle that outlives reconnects.
//!
//! A publish that needs no route goes through the connection's pipeline, which starts it at once
//! on one channel whatever else is outstanding there; a `mandatory` publish holds a channel of
//! its own until its confirm ([`Channels`]).
//! A message is only reported as sent once the broker confirmed it (and, when `mandatory`,
//! routed it).

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};

pub use super::channels::Channels;

use super::channels::ChannelPool;
use tokio::sync::watch;

use crate::config::EventsFormat;
use crate::events::cdevents::{self, OutgoingCdEvent};
use crate::events::{CONTENT_TYPE, OutgoingEvent};
use crate::telemetry::metrics;

/// How long a publish waits for a connection before giving up.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Why a publish did not get a positive confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection (reconnecting, or shutting down).
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker refused the message (nack).
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// `mandatory` publish that no queue took.
    #[error("the message was returned unroutable: {0}")]
    Unroutable(String),
    /// The channel or connection failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// No channel could be checked out.
    #[error("no publishing channel available: {0}")]
    Pool(String),
}

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Exchange (`""` = the default exchange, routing to the queue named by the key).
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Body.
    pub body: &'a [u8],
    /// Properties (headers, content type, ...). Delivery mode 2 is forced.
    pub properties: BasicProperties,
    /// Fail when no queue takes the message.
    pub mandatory: bool,
}

/// Publishes with confirms over whichever connection is current.
#[derive(Debug, Clone)]
pub struct Publisher {
    current: watch::Receiver<Option<Channels>>,
    events_exchange: Option<String>,
    format: EventsFormat,
}

/// The side of the publisher the connection supervisor drives.
#[derive(Debug)]
pub struct PublisherControl {
    tx: watch::Sender<Option<Channels>>,
}

impl PublisherControl {
    /// A new connection is up: publish through it.
    pub fn connected(&self, channels: Channels) {
        let _ = self.tx.send(Some(channels));
    }

    /// The connection is gone.
    pub fn disconnected(&self) {
        if let Some(channels) = self.tx.send_replace(None) {
            channels.pipelined.close();
            channels.routed.close();
        }
    }
}

impl Publisher {
    /// A publisher and its control. `events_exchange` is `None` when events are disabled.
    pub fn new(events_exchange: Option<String>) -> (Publisher, PublisherControl) {
        let (tx, rx) = watch::channel(None);
        (
            Publisher {
                current: rx,
                events_exchange,
                format: EventsFormat::default(),
            },
            PublisherControl { tx },
        )
    }

    /// Publishes events in this format (`events.format`; CloudEvents unless told).
    pub fn with_format(mut self, format: EventsFormat) -> Self {
        self.format = format;
        self
    }

    /// True when events are published at all.
    pub fn events_enabled(&self) -> bool {
        self.events_exchange.is_some()
    }

    async fn channels(&self) -> Result<Channels, PublishError> {
        let mut rx = self.current.clone();
        let channels = tokio::time::timeout(CONNECT_WAIT, rx.wait_for(Option::is_some))
            .await
            .map_err(|_| PublishError::NotConnected)?
            .map_err(|_| PublishError::NotConnected)?;
        channels.clone().ok_or(PublishError::NotConnected)
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, out: Outgoing<'_>) -> Result<(), PublishError> {
        let channels = self.channels().await?;
        // Persistent whichever channel carries it.
        let out = Outgoing {
            properties: out.properties.with_delivery_mode(2),
            ..out
        };
        let confirmation = if out.mandatory {
            publish_routed(&channels.routed, out).await?
        } else {
            channels.pipelined.publish(out).await?
        };
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable(
                returned.reply_text.as_str().to_string(),
            )),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    /// Publishes a lifecycle event (persistent, `application/cloudevents+json`, `message_id` =
    /// event id, routing key = type suffix), and its CDEvents form when `events.format` asks
    /// for it. A no-op when events are disabled.
    pub async fn publish_event(&self, event: &OutgoingEvent) -> Result<(), PublishError> {
        let Some(exchange) = &self.events_exchange else {
            return Ok(());
        };
        if self.format.all_cloudevents() {
            self.publish_cloudevent(exchange, event).await?;
        }
        if self.format.cdevents()
            && let Some(cd) = event.build.as_ref().and_then(cdevents::render)
        {
            self.publish(Outgoing {
                exchange,
                routing_key: cd.ty.as_str(),
                body: &cd.body,
                properties: cdevent_properties(&cd),
                mandatory: false,
            })
            .await?;
            metrics::event_published(cd.ty.as_str());
        }
        Ok(())
    }

    async fn publish_cloudevent(
        &self,
        exchange: &str,
        event: &OutgoingEvent,
    ) -> Result<(), PublishError> {
        self.publish(Outgoing {
            exchange,
            routing_key: event.ty.suffix(),
            body: &event.body,
            properties: BasicProperties::default()
                .with_content_type(ShortString::from(CONTENT_TYPE))
                .with_message_id(ShortString::from(event.id.as_str()))
                .with_headers(FieldTable::default()),
            mandatory: false,
        })
        .await?;
        metrics::event_published(event.ty.suffix());
        Ok(())
    }
}

/// Publishes a `mandatory` message on the routed channel, held until its confirm so that a
/// return on the channel is its own ([`Channels`]).
async fn publish_routed(
    pool: &ChannelPool,
    out: Outgoing<'_>,
) -> Result<Confirmation, PublishError> {
    let channel = pool
        .get()
        .await
        .map_err(|e| PublishError::Pool(e.to_string()))?;
    let confirm = channel
        .basic_publish(
            ShortString::from(out.exchange),
            ShortString::from(out.routing_key),
            BasicPublishOptions {
                mandatory: out.mandatory,
                ..Default::default()
            },
            out.body,
            out.properties,
        )
        .await?;
    Ok(confirm.await?)
}

/// A CDEvent in CloudEvents binary mode: the CDEvent is the body, the CloudEvents attributes
/// are `cloudEvents:*` headers (the AMQP binding's application properties).
fn cdevent_properties(cd: &OutgoingCdEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("cloudEvents:specversion", "1.0"),
        ("cloudEvents:id", cd.id.as_str()),
        ("cloudEvents:source", cd.source.as_str()),
        ("cloudEvents:type", cd.ty.as_str()),
        ("cloudEvents:subject", cd.subject.as_str()),
        ("cloudEvents:time", cd.time.as_str()),
    ] {
        headers.insert(
            ShortString::from(key),
            lapin::types::AMQPValue::LongString(value.into()),
        );
    }
    BasicProperties::default()
        .with_content_type(ShortString::from(cdevents::CONTENT_TYPE))
        .with_message_id(ShortString::from(cd.id.as_str()))
        .with_headers(headers)
}
