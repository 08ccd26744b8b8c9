//! A broker connection that closes its own channels before itself.
//!
//! lapin closes a channel whose last handle is dropped (or whose consumer was cancelled) from a
//! task of its own. When that task runs after the connection started closing, its close fails,
//! and lapin turns the failure into a connection error: the replies still due on other channels
//! are forgotten, the next `channel.close-ok` is an UNEXPECTED-FRAME hard error, and shutdown
//! logs it at ERROR. So every channel opened here is kept until [`Connection::close`], which
//! closes those still open itself and only then the connection.

use std::sync::{Mutex, PoisonError};

use futures::future::join_all;
use lapin::Channel;

use super::bounded_wait;

/// One broker connection and the channels opened on it.
pub struct Connection {
    inner: lapin::Connection,
    channels: Mutex<Vec<Channel>>,
}

impl Connection {
    /// Wraps a connection that has no channels yet.
    pub fn new(inner: lapin::Connection) -> Connection {
        Connection {
            inner,
            channels: Mutex::new(Vec::new()),
        }
    }

    /// Opens a channel; it stays open until its owner closes it, the broker does, or the
    /// connection closes.
    pub async fn create_channel(&self) -> lapin::Result<Channel> {
        let channel = self.inner.create_channel().await?;
        let mut open = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        // Channels closed since the last open (a reader done, a broker error) are let go.
        open.retain(|c| c.status().connected());
        open.push(channel.clone());
        Ok(channel)
    }

    /// Closes the channels still open (unsettled deliveries go back to their queues), then the
    /// connection, each step bounded by the broker's answer. The connection's close answers
    /// whether the broker saw a clean close; the supervisor goes on either way.
    pub async fn close(&self, reason: &str) -> lapin::Result<()> {
        let open =
            std::mem::take(&mut *self.channels.lock().unwrap_or_else(PoisonError::into_inner));
        let closing = open
            .iter()
            .filter(|c| c.status().connected())
            .map(|c| c.close(200, reason.into()));
        bounded_wait("channel close", join_all(closing)).await;
        bounded_wait("connection close", self.inner.close(200, reason.into()))
            .await
            .unwrap_or_else(|| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("status", self.inner.status())
            .finish_non_exhaustive()
    }
}
