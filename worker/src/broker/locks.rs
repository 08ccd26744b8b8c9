//! Build locks: at most one replica at a time launches a given build.
//!
//! Two deliveries of one build (a producer's duplicate, a redelivery racing a retry copy) handled
//! at the same moment by two replicas whose breakers disagree could create the pod on two
//! different executors; the deterministic pod name only protects within one executor. A lock
//! per build closes that gap.
//!
//! A lock is an **exclusive consumer** on one of [`SHARDS`] lock queues `<queue>.locks.<k>`,
//! `k` a hash of the build id. RabbitMQ grants an exclusive consumer to one channel only (a
//! second answers 403 ACCESS_REFUSED) and drops it when that channel or its connection dies, so a
//! crashed replica never leaves a lock behind. Registering and cancelling a consumer is a message
//! to the queue's process; the earlier design (an exclusive queue per build, declared and
//! deleted) cost two metadata transactions per build and bounded a burst at about 700 builds/s on
//! the benchmark machine, where consumers take about 13,000 locks/s.
//!
//! A free lock is taken with one request: the exclusive consumer is asked for at once. A
//! refusal (or a missing queue) makes the broker close the channel, and lapin 4.12.3 never
//! reuses the number of a channel closed with an error (it keeps the error for that number:
//! `cargo run --release -p bcw-load --example refusal_leak` shows every channel after the
//! 2,047th refusal failing), so each refusal costs the connection one of its 2,047 channel
//! numbers. A try after a refusal therefore first looks at the queue's holders with a passive
//! declare (which costs nothing when the lock is held), and so does every try once a connection
//! has spent [`NUMBER_BUDGET`] numbers: from then on a lock costs two requests instead of one.
//! (A single replica never refuses itself; with several, a build meets a lock held by another
//! replica with probability about in-flight / [`SHARDS`].)
//!
//! Builds that share a shard exclude each other too: within a replica they queue on an
//! in-process gate per shard (so a replica never refuses itself), across replicas a refused
//! consumer is tried again over one to two and a half seconds before the build is reported as
//! [`LockError::Held`]. The lock queues are declared on first use over each connection, carry
//! no messages (`x-max-length` 0) and expire after an hour unused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::PoolError;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, Consumer, ErrorKind};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::channels::{ChannelPool, Mode};

/// Lock queues per work queue. Two builds in flight share one with probability about
/// in-flight / SHARDS; each idle classic queue costs the broker about 27 KiB.
pub const SHARDS: u64 = 1024;
/// How often a lock refused by another replica is asked for again before giving up.
const REFUSED_TRIES: u32 = 7;
/// How often a lock channel that fails to open is asked for again.
const CHANNEL_TRIES: u32 = 5;
/// First wait after a refusal; doubles per try (20, 40, ..., 640 ms, jittered to 50-100 %).
const REFUSED_DELAY: Duration = Duration::from_millis(20);
/// Channel numbers a connection may spend on refusals before every try looks first.
const NUMBER_BUDGET: usize = 1024;
/// Unused lock queues are deleted by the broker after this long.
const LOCK_QUEUE_EXPIRES_MS: i64 = 3_600_000;

/// Why a lock was not granted.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another replica is launching the build (or a build of the same shard) right now.
    #[error("another replica holds the build's lock")]
    Held,
    /// No broker connection, or the broker failed.
    #[error("build lock unavailable: {0}")]
    Unavailable(String),
}

/// The lock channels of one connection.
pub type LockPool = ChannelPool;

/// Builds the lock channel pool of a connection: a held lock keeps its channel, so the pool
/// holds as many channels as builds may be launched at once (`in_flight`, the prefetch).
pub fn lock_pool(connection: Arc<Connection>, in_flight: u16) -> LockPool {
    super::channels::pool_of(connection, Mode::Plain, usize::from(in_flight).max(8))
}

/// The shard of a build: a fixed mix of its id, the same in every replica and version.
pub fn shard(build: u64) -> u64 {
    // splitmix64's finaliser: consecutive ids spread over every shard.
    let mut z = build.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % SHARDS
}

/// The lock channels of one connection, and which lock queues were declared over it.
#[derive(Debug, Clone)]
pub struct Connected {
    pool: LockPool,
    declared: Arc<Vec<AtomicBool>>,
    /// Channel numbers spent: channels the broker closed (refusals, missing queues).
    spent: Arc<AtomicUsize>,
    /// Cancelled when this connection can open no more lock channels.
    exhausted: tokio_util::sync::CancellationToken,
}

/// Takes build locks over whichever connection is current.
#[derive(Debug, Clone)]
pub struct Locks {
    current: watch::Receiver<Option<Connected>>,
    prefix: String,
    gates: Arc<Vec<Arc<Mutex<()>>>>,
}

/// The side of [`Locks`] the connection supervisor drives.
#[derive(Debug)]
pub struct LocksControl {
    tx: watch::Sender<Option<Connected>>,
}

impl LocksControl {
    /// A new connection is up. The returned token is cancelled when the connection can open no
    /// more lock channels: lapin 4.12 keeps the slot of every channel the broker closed with an
    /// error (a refused lock), so a connection that saw about 2,000 refusals must be replaced.
    pub fn connected(&self, pool: LockPool) -> tokio_util::sync::CancellationToken {
        let declared = Arc::new((0..SHARDS).map(|_| AtomicBool::new(false)).collect());
        let exhausted = tokio_util::sync::CancellationToken::new();
        let _ = self.tx.send(Some(Connected {
            pool,
            declared,
            spent: Arc::new(AtomicUsize::new(0)),
            exhausted: exhausted.clone(),
        }));
        exhausted
    }

    /// The connection is gone (its locks went with it).
    pub fn disconnected(&self) {
        if let Some(c) = self.tx.send_replace(None) {
            c.pool.close();
        }
    }
}

enum Attempt {
    Granted(Consumer, Box<LockChannel>),
    /// Held by another replica.
    Refused,
    /// The lock queue does not exist (expired since it was declared).
    Missing,
    /// The connection can open no more channels.
    Exhausted(String),
    /// The channel failed for another reason: try another one.
    Broken(String),
}

/// A lock channel checked out of its pool.
type LockChannel = deadpool::managed::Object<super::channels::ChannelManager>;

impl Locks {
    /// Locks on the queues `<queue>.locks.<k>`.
    pub fn new(queue: &str) -> (Locks, LocksControl) {
        let (tx, rx) = watch::channel(None);
        (
            Locks {
                current: rx,
                prefix: format!("{queue}.locks."),
                gates: Arc::new((0..SHARDS).map(|_| Arc::new(Mutex::new(()))).collect()),
            },
            LocksControl { tx },
        )
    }

    /// The lock queue of a build.
    pub fn queue_of(&self, build: u64) -> String {
        format!("{}{}", self.prefix, shard(build))
    }

    /// Takes the lock of a build, or says that another replica has it.
    pub async fn acquire(&self, build: u64) -> Result<BuildLock, LockError> {
        let Connected {
            pool,
            declared,
            spent,
            exhausted,
        } = self
            .current
            .borrow()
            .clone()
            .ok_or_else(|| LockError::Unavailable("not connected".into()))?;
        let k = shard(build);
        // Builds of one shard take turns within this replica instead of refusing each other.
        let gate = self.gates[k as usize].clone().lock_owned().await;
        let name = format!("{}{k}", self.prefix);
        // Declared once per connection before its first use (a consume on a missing queue
        // would cost the channel); a queue that expired since is declared again on NOT_FOUND.
        let mut declared_now = false;
        if !declared[k as usize].load(Ordering::Relaxed) {
            declare(&pool, &name).await?;
            declared[k as usize].store(true, Ordering::Relaxed);
            declared_now = true;
        }
        let mut delay = REFUSED_DELAY;
        let mut refused = 0;
        let mut broken = 0;
        loop {
            // Ask at once while the lock is likely free and numbers are plentiful.
            let look_first = refused > 0 || spent.load(Ordering::Relaxed) >= NUMBER_BUDGET;
            let attempt = try_once(&pool, &name, look_first).await;
            if matches!(
                attempt,
                Attempt::Refused | Attempt::Missing | Attempt::Broken(_)
            ) {
                spent.fetch_add(1, Ordering::Relaxed);
            }
            match attempt {
                Attempt::Granted(consumer, channel) => {
                    return Ok(BuildLock {
                        consumer: Some(consumer),
                        channel: Some(*channel),
                        contended: refused > 0,
                        _gate: gate,
                    });
                }
                Attempt::Missing if !declared_now => {
                    declared_now = true;
                    declare(&pool, &name).await?;
                }
                Attempt::Missing => {
                    return Err(LockError::Unavailable(format!(
                        "lock queue {name} vanished right after it was declared"
                    )));
                }
                Attempt::Exhausted(e) => {
                    exhausted.cancel();
                    return Err(LockError::Unavailable(e));
                }
                Attempt::Broken(e) => {
                    broken += 1;
                    if broken >= CHANNEL_TRIES {
                        return Err(LockError::Unavailable(e));
                    }
                    tokio::time::sleep(super::jitter(REFUSED_DELAY)).await;
                }
                Attempt::Refused => {
                    refused += 1;
                    if refused >= REFUSED_TRIES {
                        return Err(LockError::Held);
                    }
                    tokio::time::sleep(super::jitter(delay)).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// One try on a fresh channel: with `look_first`, a passive look at the lock queue's holders
/// (which does not cost the channel) before the exclusive consumer is asked for (a refusal
/// does: see the module's notes). A channel the broker just closed can make the next channel's
/// opening fail with that closure's error: that is [`Attempt::Broken`], and tried again.
async fn try_once(pool: &LockPool, queue: &str, look_first: bool) -> Attempt {
    let channel = match pool.get().await {
        Ok(channel) => channel,
        Err(PoolError::Backend(e)) if matches!(e.kind(), ErrorKind::ChannelsLimitReached) => {
            return Attempt::Exhausted(e.to_string());
        }
        Err(e) => return Attempt::Broken(e.to_string()),
    };
    let holders = if look_first {
        holders(&channel, queue).await
    } else {
        Ok(0)
    };
    match holders {
        Ok(0) => match consume(&channel, queue).await {
            Ok(consumer) => Attempt::Granted(consumer, Box::new(channel)),
            Err(attempt) => attempt,
        },
        Ok(_) => Attempt::Refused,
        Err(attempt) => attempt,
    }
}

/// Asks for the exclusive consumer; a refusal or a missing queue closes the channel (the pool
/// replaces it at the next checkout).
async fn consume(channel: &lapin::Channel, queue: &str) -> Result<Consumer, Attempt> {
    let tag = format!("lock-{}", uuid::Uuid::new_v4().simple());
    channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(tag.as_str()),
            BasicConsumeOptions {
                exclusive: true,
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::ProtocolError(amqp)
                if matches!(
                    amqp.kind(),
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                ) =>
            {
                Attempt::Refused
            }
            _ => missing_or_broken(&e),
        })
}

/// A missing queue, or a broken channel.
fn missing_or_broken(e: &lapin::Error) -> Attempt {
    match e.kind() {
        ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
        {
            Attempt::Missing
        }
        _ => Attempt::Broken(e.to_string()),
    }
}

/// How many consumers (holders) a lock queue has, by a passive declare.
async fn holders(channel: &lapin::Channel, queue: &str) -> Result<u32, Attempt> {
    match channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(q) => Ok(q.consumer_count()),
        Err(e) => Err(missing_or_broken(&e)),
    }
}

/// Declares a lock queue (idempotent; every replica declares it with the same arguments).
async fn declare(pool: &LockPool, queue: &str) -> Result<(), LockError> {
    let channel = pool
        .get()
        .await
        .map_err(|e| LockError::Unavailable(e.to_string()))?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(LOCK_QUEUE_EXPIRES_MS),
    );
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .map(|_| ())
        .map_err(|e| LockError::Unavailable(format!("cannot declare lock queue {queue}: {e}")))
}

/// A held build lock; release it once the launch is settled (dropping it releases it too).
#[derive(Debug)]
pub struct BuildLock {
    consumer: Option<Consumer>,
    contended: bool,
    channel: Option<LockChannel>,
    _gate: OwnedMutexGuard<()>,
}

impl BuildLock {
    /// Another replica held the lock first: it may have launched this very build meanwhile (or
    /// a build sharing the lock queue), so the launch must look at every candidate executor
    /// before it creates anything.
    pub fn contended(&self) -> bool {
        self.contended
    }

    /// Cancels the exclusive consumer and waits for the broker's answer, so the next holder is
    /// granted at once. (If this fails, or the broker does not answer within a few seconds, the
    /// channel is discarded and the lock dies with it: a held lock also holds its shard's gate.)
    pub async fn release(mut self) {
        if let (Some(consumer), Some(channel)) = (self.consumer.take(), self.channel.take()) {
            let cancelled = tokio::time::timeout(
                super::CLOSE_WAIT,
                channel.basic_cancel(consumer.tag(), Default::default()),
            )
            .await;
            drop(consumer);
            if !matches!(cancelled, Ok(Ok(()))) {
                // A channel in an unknown state must not serve another lock.
                let _ = deadpool::managed::Object::take(channel);
            }
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        // Dropped without release (a cancelled task): lapin cancels a dropped consumer in the
        // background; the channel goes back to the pool after that request is queued.
        drop(self.consumer.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread_consecutive_ids() {
        assert_eq!(shard(12345), shard(12345));
        let mut counts = vec![0u32; SHARDS as usize];
        for id in 0..(SHARDS * 64) {
            counts[shard(id) as usize] += 1;
        }
        // 64 per shard expected; a fair hash keeps every shard within a factor of two.
        assert!(
            counts.iter().all(|&c| (32..=128).contains(&c)),
            "{counts:?}"
        );
    }
}
