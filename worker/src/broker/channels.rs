//! The publisher's confirm-mode channels on one connection ([`Channels`]), each from a deadpool
//! pool of one. A channel that closed (a broker error) is found at checkout and replaced.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use lapin::Channel;
use lapin::options::ConfirmSelectOptions;

use super::Connection;
use super::pipeline::Pipeline;

/// Channels per pool: the pipeline holds its one, and the routed pool's publishes go one at a
/// time ([`Channels`]).
const CONFIRM_CHANNELS: usize = 1;

/// Opens confirm-mode channels on one connection.
#[derive(Debug)]
pub struct ChannelManager {
    connection: Arc<Connection>,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = lapin::Error;

    async fn create(&self) -> Result<Channel, lapin::Error> {
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &Metrics) -> RecycleResult<lapin::Error> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel is closed"))
        }
    }
}

/// A pool of channels.
pub type ChannelPool = Pool<ChannelManager>;

/// The publishing channels of one connection: a [`Pipeline`] for messages that need no route,
/// and one channel that carries a single `mandatory` publish at a time. lapin (4.12.3)
/// hands a returned message to whichever pending confirm completes next, and completes the
/// confirms of a `multiple` ack in no set order: with several mandatory publishes outstanding on
/// one channel, a return can reach another publish than its own, so an unroutable copy would
/// count as placed and a placed one as unroutable.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Publishes with no `mandatory` flag (events), pipelined.
    pub pipelined: Pipeline,
    /// `mandatory` publishes, one at a time.
    pub routed: ChannelPool,
}

/// Builds the publishing channels of a connection.
pub fn confirm_channels(connection: Arc<Connection>) -> Channels {
    Channels {
        pipelined: Pipeline::start(confirm_pool(connection.clone())),
        routed: confirm_pool(connection),
    }
}

/// Builds a pool of confirm-mode channels of a connection.
fn confirm_pool(connection: Arc<Connection>) -> ChannelPool {
    Pool::builder(ChannelManager { connection })
        .max_size(CONFIRM_CHANNELS)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is set, so the pool builds")
}
