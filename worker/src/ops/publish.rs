//! Confirmed, mandatory publishing for the operator commands: a message counts as sent only
//! when the broker confirmed it and a queue took it.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::broker::PublishError;

/// A confirm-mode channel.
#[derive(Debug)]
pub struct Confirmed {
    channel: Channel,
}

impl Confirmed {
    /// Opens a channel on `connection` in confirm mode.
    pub async fn open(connection: &Connection) -> Result<Confirmed, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Confirmed { channel })
    }

    /// Publishes persistent and mandatory, and waits for the broker's confirm. An unroutable
    /// message (no queue bound for the key) is an error, as is a missing exchange (which also
    /// closes the channel: open another one to go on).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await?;
        match confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable(
                returned.reply_text.as_str().to_string(),
            )),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    /// Closes the channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}
