//! The publisher's pool of confirm-mode channels on one connection (deadpool). A channel that
//! closed (a broker error) is found at checkout and replaced.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use lapin::Channel;
use lapin::options::ConfirmSelectOptions;

use super::Connection;

/// Confirm-mode channels per connection. A channel is held only while a publish is written
/// (confirms are awaited without it), so one carries every publish; RabbitMQ answers a busy
/// channel's publishes with few `multiple` confirms, while spreading them over eight channels cost
/// it about a quarter more CPU per build (load-tests/README.md).
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

/// Builds the pool of confirm-mode channels of a connection.
pub fn confirm_pool(connection: Arc<Connection>) -> ChannelPool {
    Pool::builder(ChannelManager { connection })
        .max_size(CONFIRM_CHANNELS)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is set, so the pool builds")
}
