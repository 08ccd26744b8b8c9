//! Reading a RabbitMQ stream from a point in time, acknowledging as it goes (a stream consumer
//! needs acknowledgements for credit; they acknowledge nothing else).

use futures::StreamExt;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::Connection;

/// Deliveries in flight at once while reading.
const PREFETCH: u16 = 500;

/// A consumer of a stream with its own channel.
pub struct StreamReader {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    unacked: u16,
    last: Option<Acker>,
}

impl StreamReader {
    /// Consumes `stream` from `from` (seconds since the epoch; the broker starts at the first
    /// chunk at or before it).
    pub async fn open(connection: &Connection, stream: &str, from: i64) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::Timestamp(from.max(0) as u64),
        );
        let consumer = channel
            .basic_consume(
                ShortString::from(stream),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        Ok(StreamReader {
            channel,
            consumer,
            unacked: 0,
            last: None,
        })
    }

    /// The next message; `None` when the consumer was cancelled.
    pub async fn next(&mut self) -> Option<lapin::Result<Delivery>> {
        let delivery = match self.consumer.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        self.unacked += 1;
        self.last = Some(delivery.acker.clone());
        if self.unacked >= PREFETCH / 2
            && let Err(e) = self.flush().await
        {
            return Some(Err(e));
        }
        Some(Ok(delivery))
    }

    /// Acknowledges everything delivered so far.
    pub async fn flush(&mut self) -> lapin::Result<()> {
        if let Some(last) = self.last.take() {
            self.unacked = 0;
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }

    /// Closes the reader's channel (bounded: a broker that stopped answering does not hold it).
    pub async fn close(self) {
        super::bounded_wait(
            "stream channel close",
            self.channel.close(200, "read".into()),
        )
        .await;
    }
}
