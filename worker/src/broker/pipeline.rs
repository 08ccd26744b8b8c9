//! The pipelined publishing channel of one connection: one task owns a confirm-mode channel
//! and starts every publish that needs no route as soon as it is asked for, so the publishes of
//! many tasks share socket writes and the broker's `multiple` confirms instead of each waking
//! lapin's I/O thread for a write of its own.
//!
//! One task is what makes this safe: lapin (4.12.3) takes a publish's delivery tag and queues
//! its frames in the same first poll of `basic_publish`, so publishes polled by one task go out
//! in the order of their tags; publishes from several threads at once can cross, and then a
//! confirm would reach the wrong publish.

use deadpool::managed::Object;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

use super::channels::{ChannelManager, ChannelPool};
use super::publisher::{Outgoing, PublishError};

/// Requests taken from the queue at once.
const BATCH: usize = 256;

/// The handle of a connection's pipeline; its task ends once every handle is dropped and the
/// publishes it started are written.
#[derive(Debug, Clone)]
pub struct Pipeline {
    tx: mpsc::UnboundedSender<Request>,
    pool: ChannelPool,
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
    /// Starts a pipeline on the channel of `pool` (checked out at the first publish).
    pub fn start(pool: ChannelPool) -> Pipeline {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool.clone(), rx));
        Pipeline { tx, pool }
    }

    /// The connection is gone: no channel is checked out any more.
    pub fn close(&self) {
        self.pool.close();
    }

    /// Publishes `out` (whose `mandatory` is not set) and waits for its confirm.
    pub async fn publish(&self, out: Outgoing<'_>) -> Result<Confirmation, PublishError> {
        debug_assert!(!out.mandatory, "mandatory publishes go one at a time");
        let (written, confirm) = oneshot::channel();
        let request = Request {
            exchange: ShortString::from(out.exchange),
            routing_key: ShortString::from(out.routing_key),
            body: out.body.to_vec(),
            properties: out.properties,
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
async fn run(pool: ChannelPool, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut held = None;
    let mut writing = FuturesUnordered::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            taken = rx.recv_many(&mut batch, BATCH) => {
                if taken == 0 {
                    break;
                }
                for request in batch.drain(..) {
                    match usable(&pool, &mut held).await {
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

/// The pipeline's channel, given back and checked out again once closed (a broker error closes
/// a channel; the pool's recycling replaces it).
async fn usable(
    pool: &ChannelPool,
    held: &mut Option<Object<ChannelManager>>,
) -> Result<Channel, PublishError> {
    if let Some(open) = held.as_ref().filter(|c| c.status().connected()) {
        return Ok(Channel::clone(open));
    }
    *held = None;
    let channel = pool
        .get()
        .await
        .map_err(|e| PublishError::Pool(e.to_string()))?;
    Ok(Channel::clone(held.insert(channel)))
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
