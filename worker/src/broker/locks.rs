//! Build locks: at most one replica at a time launches a given build.
//!
//! Two deliveries of one build (a producer's duplicate, a redelivery racing a retry copy) handled
//! at the same moment by two replicas whose breakers disagree could create the pod on two
//! different executors; the deterministic pod name only protects within one executor. A lock
//! per build closes that gap: an exclusive queue `<queue>.lock.<buildId>`, which RabbitMQ grants
//! to one connection only (a second declare answers 405 RESOURCE_LOCKED) and deletes by itself
//! when its connection dies, so a crashed replica never leaves a lock behind.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ErrorKind};
use tokio::sync::watch;

/// Why a lock was not granted.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another replica is launching the build right now.
    #[error("another replica holds the build's lock")]
    Held,
    /// No broker connection, or the broker failed.
    #[error("build lock unavailable: {0}")]
    Unavailable(String),
}

/// The lock channels of one connection.
pub type LockPool = super::channels::ChannelPool;

/// Builds the lock channel pool of a connection.
pub fn lock_pool(connection: std::sync::Arc<Connection>) -> LockPool {
    super::channels::pool(connection, super::channels::Mode::Plain)
}

/// Takes build locks over whichever connection is current.
#[derive(Debug, Clone)]
pub struct Locks {
    current: watch::Receiver<Option<LockPool>>,
    prefix: String,
}

/// The side of [`Locks`] the connection supervisor drives.
#[derive(Debug)]
pub struct LocksControl {
    tx: watch::Sender<Option<LockPool>>,
}

impl LocksControl {
    /// A new connection is up.
    pub fn connected(&self, pool: LockPool) {
        let _ = self.tx.send(Some(pool));
    }

    /// The connection is gone (its locks went with it).
    pub fn disconnected(&self) {
        if let Some(pool) = self.tx.send_replace(None) {
            pool.close();
        }
    }
}

impl Locks {
    /// Locks named `<queue>.lock.<buildId>`.
    pub fn new(queue: &str) -> (Locks, LocksControl) {
        let (tx, rx) = watch::channel(None);
        (
            Locks {
                current: rx,
                prefix: format!("{queue}.lock."),
            },
            LocksControl { tx },
        )
    }

    /// Takes the lock of a build, or says who has it.
    pub async fn acquire(&self, build: u64) -> Result<BuildLock, LockError> {
        let pool = self
            .current
            .borrow()
            .clone()
            .ok_or_else(|| LockError::Unavailable("not connected".into()))?;
        let name = format!("{}{build}", self.prefix);
        let channel = pool
            .get()
            .await
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        let mut args = FieldTable::default();
        // Exclusive queues are classic queues; say so in case a policy sets another default.
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("classic".into()),
        );
        let declared = channel
            .queue_declare(
                ShortString::from(name.as_str()),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        match declared {
            Ok(_) => Ok(BuildLock {
                pool: pool.clone(),
                name,
                held: true,
            }),
            Err(e) => match e.kind() {
                ErrorKind::ProtocolError(amqp)
                    if matches!(
                        amqp.kind(),
                        AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
                    ) =>
                {
                    Err(LockError::Held)
                }
                _ => Err(LockError::Unavailable(e.to_string())),
            },
        }
    }
}

/// A held build lock; release it once the launch is settled.
#[derive(Debug)]
pub struct BuildLock {
    pool: LockPool,
    name: String,
    held: bool,
}

impl BuildLock {
    /// Deletes the lock queue. (If this fails, the lock dies with the connection.)
    pub async fn release(mut self) {
        self.held = false;
        if let Ok(channel) = self.pool.get().await {
            let _ = channel
                .queue_delete(
                    ShortString::from(self.name.as_str()),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        if self.held {
            // Dropped without release (a cancelled task): release in the background.
            let pool = self.pool.clone();
            let name = std::mem::take(&mut self.name);
            tokio::spawn(async move {
                if let Ok(channel) = pool.get().await {
                    let _ = channel
                        .queue_delete(
                            ShortString::from(name.as_str()),
                            QueueDeleteOptions::default(),
                        )
                        .await;
                }
            });
        }
    }
}
