//! Reading the dead-letter queue without losing anything.
//!
//! Messages are taken one by one with `basic.get` and manual acks, and held unacknowledged on
//! one channel: the broker never hands out the same message twice to it, so a browse cannot
//! loop, and it stops at the number of messages the queue held when it began (or `limit`).
//! Only what a command removes is acknowledged; closing the channel returns every other message
//! to the queue. Messages are never returned with `nack`: on a quorum queue an explicit return
//! counts as a failed delivery, and a delivery limit would drop them.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ErrorKind};

use super::letter::DeadLetter;

/// One message held by a browse.
#[derive(Debug)]
pub struct Held {
    /// What it says.
    pub letter: DeadLetter,
    /// The message itself.
    pub delivery: Delivery,
}

/// Why a browse could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// The queue does not exist.
    #[error("queue {0:?} does not exist")]
    Missing(String),
    /// Anything else.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

/// The messages of a queue, held until [`Browse::release`].
#[derive(Debug)]
pub struct Browse {
    channel: Channel,
    /// What was read, oldest first.
    pub held: Vec<Held>,
    /// How many messages the queue held when the browse began.
    pub in_queue: u32,
}

impl Browse {
    /// Reads up to `limit` messages of `queue` (at most as many as it held at the start).
    pub async fn open(
        connection: &Connection,
        queue: &str,
        limit: usize,
    ) -> Result<Browse, BrowseError> {
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await;
        let in_queue = match declared {
            Ok(q) => q.message_count(),
            Err(e) if is_not_found(&e) => return Err(BrowseError::Missing(queue.to_string())),
            Err(e) => return Err(e.into()),
        };
        let wanted = limit.min(usize::try_from(in_queue).unwrap_or(usize::MAX));
        let mut held = Vec::with_capacity(wanted);
        while held.len() < wanted {
            let got = channel
                .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
                .await?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let letter = DeadLetter::read(held.len() + 1, &delivery.properties, &delivery.data);
            held.push(Held { letter, delivery });
        }
        Ok(Browse {
            channel,
            held,
            in_queue,
        })
    }

    /// Removes the `i`-th held message from the queue for good.
    pub async fn remove(&self, i: usize) -> Result<(), lapin::Error> {
        self.held[i]
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
    }

    /// Ends the browse: every message not removed goes back to the queue.
    pub async fn release(self) {
        let _ = self.channel.close(200, "browsed".into()).await;
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
