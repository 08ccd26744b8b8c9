//! The pipelined publishing channel of one connection: one task owns a confirm-mode channel
//! and starts every publish that needs no route as soon as it is asked for, so the publishes of
//! many tasks share socket writes and the broker's `multiple` confirms instead of each waking
//! lapin's I/O thread for a write of its own.
//!
//! One task is what makes this safe: lapin (4.12.3) takes a publish's delivery tag and queues
//! its frames in the same first poll of `basic_publish`, so publishes polled by one task go out
//! in the order of their tags; publishes from several threads at once can cross, and then a
//! confirm would reach the wrong publish.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

use super::Connection;
use super::channels::open_confirm_channel;
use super::publisher::{Outgoing, PublishError};

/// Requests taken from the queue at once.
const BATCH: usize = 256;

/// The handle of a connection's pipeline; its task ends once every handle is dropped and the
/// publishes it started are written.
#[derive(Debug, Clone)]
pub struct Pipeline {
    tx: mpsc::UnboundedSender<Request>,
}

#[derive(Debug)]
struct Request {
    exchange: ShortString,
    routing_key: ShortString,
    body: Vec<u8>,
    properties: BasicProperties,
    written: oneshot::Sender<Result<PublisherConfirm, PublishError>>,
}

impl Pipeline {
    /// Starts the pipeline of `connection` (its channel opens at the first publish).
    pub fn start(connection: Arc<Connection>) -> Pipeline {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(connection, rx));
        Pipeline { tx }
    }

    /// Publishes `out` (whose `mandatory` is not set) and waits for its confirm.
    pub async fn publish(&self, out: Outgoing<'_>) -> Result<Confirmation, PublishError> {
        debug_assert!(!out.mandatory, "mandatory publishes go one at a time");
        let (written, confirm) = oneshot::channel();
        let request = Request {
            exchange: ShortString::from(out.exchange),
            routing_key: ShortString::from(out.routing_key),
            body: out.body.to_vec(),
            properties: out.properties.with_delivery_mode(2),
            written,
        };
        self.tx
            .send(request)
            .map_err(|_| PublishError::NotConnected)?;
        let confirm = confirm.await.map_err(|_| PublishError::NotConnected)??;
        Ok(confirm.await?)
    }
}

/// Starts each request's publish on the channel (reopened once closed), and hands each written
/// publish's confirm back to its asker.
async fn run(connection: Arc<Connection>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut channel: Option<Channel> = None;
    let mut writing = FuturesUnordered::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            taken = rx.recv_many(&mut batch, BATCH) => {
                if taken == 0 {
                    break;
                }
                for request in batch.drain(..) {
                    match usable(&connection, &mut channel).await {
                        Ok(channel) => writing.push(write(channel, request)),
                        Err(e) => {
                            let _ = request.written.send(Err(e));
                        }
                    }
                }
            }
            Some(()) = writing.next(), if !writing.is_empty() => {}
        }
    }
    while writing.next().await.is_some() {}
}

/// The pipeline's channel, opened again if it closed (a broker error closes a channel).
async fn usable(
    connection: &Connection,
    channel: &mut Option<Channel>,
) -> Result<Channel, PublishError> {
    if let Some(open) = channel.as_ref().filter(|c| c.status().connected()) {
        return Ok(open.clone());
    }
    let opened = open_confirm_channel(connection).await?;
    *channel = Some(opened.clone());
    Ok(opened)
}

async fn write(channel: Channel, request: Request) {
    let written = channel
        .basic_publish(
            request.exchange,
            request.routing_key,
            BasicPublishOptions::default(),
            &request.body,
            request.properties,
        )
        .await
        .map_err(PublishError::from);
    let _ = request.written.send(written);
}
