//! Pools of channels on one connection (deadpool): the confirm-mode channels of the publisher
//! and the plain channels of the build locks. A channel that closed (a refused lock, a broker
//! error) is found at checkout and replaced.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};

/// Confirm-mode channels per connection: a channel is held only while a publish is written
/// (confirms are awaited without it), so a few suffice.
const CONFIRM_CHANNELS: usize = 8;

/// What the channels of a pool are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Publisher confirms on (`confirm.select`).
    Confirm,
    /// Plain channels.
    Plain,
}

/// Opens channels of one mode on one connection.
#[derive(Debug)]
pub struct ChannelManager {
    connection: Arc<Connection>,
    mode: Mode,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = lapin::Error;

    async fn create(&self) -> Result<Channel, lapin::Error> {
        let channel = self.connection.create_channel().await?;
        if self.mode == Mode::Confirm {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
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

/// Builds the pool of confirm-mode channels of a connection.
pub fn confirm_pool(connection: Arc<Connection>) -> ChannelPool {
    pool_of(connection, Mode::Confirm, CONFIRM_CHANNELS)
}

/// Builds a pool of at most `size` channels of `mode` on a connection.
pub fn pool_of(connection: Arc<Connection>, mode: Mode, size: usize) -> ChannelPool {
    Pool::builder(ChannelManager { connection, mode })
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is set, so the pool builds")
}
