//! Confirmed publishing: a deadpool pool of confirm-mode channels per connection, behind a
//! handle that outlives reconnects.
//!
//! A channel is checked out only to write the frame; the confirm is awaited after the channel
//! went back to the pool, so many tasks pipeline their publishes on few channels. A message is
//! only reported as sent once the broker confirmed it (and, when `mandatory`, routed it).

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection};
use tokio::sync::watch;

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

/// The confirm-mode channel pool of one connection.
pub type ChannelPool = super::channels::ChannelPool;

/// Builds the confirm-mode channel pool of a connection.
pub fn channel_pool(connection: std::sync::Arc<Connection>) -> ChannelPool {
    super::channels::pool(connection, super::channels::Mode::Confirm)
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
    current: watch::Receiver<Option<ChannelPool>>,
    events_exchange: Option<String>,
}

/// The side of the publisher the connection supervisor drives.
#[derive(Debug)]
pub struct PublisherControl {
    tx: watch::Sender<Option<ChannelPool>>,
}

impl PublisherControl {
    /// A new connection is up: publish through it.
    pub fn connected(&self, pool: ChannelPool) {
        let _ = self.tx.send(Some(pool));
    }

    /// The connection is gone.
    pub fn disconnected(&self) {
        if let Some(pool) = self.tx.send_replace(None) {
            pool.close();
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
            },
            PublisherControl { tx },
        )
    }

    /// True when events are published at all.
    pub fn events_enabled(&self) -> bool {
        self.events_exchange.is_some()
    }

    async fn pool(&self) -> Result<ChannelPool, PublishError> {
        let mut rx = self.current.clone();
        let pool = tokio::time::timeout(CONNECT_WAIT, rx.wait_for(Option::is_some))
            .await
            .map_err(|_| PublishError::NotConnected)?
            .map_err(|_| PublishError::NotConnected)?;
        pool.clone().ok_or(PublishError::NotConnected)
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, out: Outgoing<'_>) -> Result<(), PublishError> {
        let pool = self.pool().await?;
        let confirm = {
            let channel = pool
                .get()
                .await
                .map_err(|e| PublishError::Pool(e.to_string()))?;
            channel
                .basic_publish(
                    ShortString::from(out.exchange),
                    ShortString::from(out.routing_key),
                    BasicPublishOptions {
                        mandatory: out.mandatory,
                        ..Default::default()
                    },
                    out.body,
                    out.properties.with_delivery_mode(2),
                )
                .await?
            // The channel returns to the pool here; the confirm is awaited without holding it.
        };
        match confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable(
                returned.reply_text.as_str().to_string(),
            )),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    /// Publishes a lifecycle event (persistent, `application/cloudevents+json`, `message_id` =
    /// event id, routing key = type suffix). A no-op when events are disabled.
    pub async fn publish_event(&self, event: &OutgoingEvent) -> Result<(), PublishError> {
        let Some(exchange) = &self.events_exchange else {
            return Ok(());
        };
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
