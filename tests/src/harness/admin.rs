//! The broker layout a Screwdriver administrator provisions for buildcluster-queue-worker
//! (docs/interface.md §5.2), declared for one test with unique names.
//!
//! For a cluster queue `X` on the topic exchange `build`: `X` dead-letters to `Xdlr`, which
//! holds a message for its TTL and dead-letters it back to `X` (the nack delay loop);
//! `XRetry` / `XRetrydlr` form the same loop for verify messages. Every queue is bound to the
//! exchange with its own name as routing key. The guide's delays are 5 s and 60 s; tests use
//! [`AdminTopology::LOOP_DELAY`] so a round trip takes a fraction of a second. It declares only
//! what the administrator would; the worker under test must declare nothing.

use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::rabbit::{Names, Rabbit};

/// The administrator's queues of one test (the exchange is the test's [`Names::exchange`]).
#[derive(Debug, Clone)]
pub struct AdminTopology {
    /// Producers' topic exchange (`build` in the guide).
    pub exchange: String,
    /// The cluster queue `X`.
    pub queue: String,
    /// `Xdlr`: the main queue's delay loop.
    pub dlr: String,
    /// `XRetry`: the verify queue (the worker's `retryQueue`).
    pub retry: String,
    /// `XRetrydlr`: the verify queue's delay loop.
    pub retry_dlr: String,
}

impl AdminTopology {
    /// TTL of both delay loops in tests (the guide: 5 s for `Xdlr`, 60 s for `XRetrydlr`).
    pub const LOOP_DELAY: Duration = Duration::from_millis(300);
    /// The guide's TTL of `X` and `XRetry`: 8 hours.
    const QUEUE_TTL_MS: i32 = 28_800_000;

    /// The layout for a test's names: `X` is [`Names::queue`].
    pub fn for_names(names: &Names) -> AdminTopology {
        AdminTopology {
            exchange: names.exchange.clone(),
            queue: names.queue.clone(),
            dlr: format!("{}dlr", names.queue),
            retry: format!("{}Retry", names.queue),
            retry_dlr: format!("{}Retrydlr", names.queue),
        }
    }

    /// `X.dead`: the worker dead-letters there only when an administrator created it.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// Declares the four queues and their bindings as the guide's definitions do. The exchange
    /// must exist already ([`Rabbit::declare_exchanges`]).
    pub async fn declare(&self, rabbit: &Rabbit) {
        let loop_ms = i32::try_from(Self::LOOP_DELAY.as_millis()).expect("small TTL");
        let queues = [
            (&self.queue, &self.dlr, Some(Self::QUEUE_TTL_MS), true),
            (&self.dlr, &self.queue, Some(loop_ms), false),
            (&self.retry, &self.retry_dlr, Some(Self::QUEUE_TTL_MS), true),
            (&self.retry_dlr, &self.retry, Some(loop_ms), false),
        ];
        let ch = rabbit.channel().await;
        for (name, dead_letter_to, ttl, priority) in queues {
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(self.exchange.as_str())),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(dead_letter_to.as_str())),
            );
            if let Some(ms) = ttl {
                args.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
            }
            if priority {
                args.insert("x-max-priority".into(), AMQPValue::LongInt(2));
            }
            ch.queue_declare(
                ShortString::from(name.as_str()),
                QueueDeclareOptions::durable(),
                args,
            )
            .await
            .expect("admin queue declare");
            ch.queue_bind(
                ShortString::from(name.as_str()),
                ShortString::from(self.exchange.as_str()),
                ShortString::from(name.as_str()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("admin queue bind");
        }
        let _ = ch.close(200, "ok".into()).await;
    }

    /// Also declares `X.dead`, as an administrator who wants a parking queue would.
    pub async fn declare_dead_queue(&self, rabbit: &Rabbit) {
        let ch = rabbit.channel().await;
        ch.queue_declare(
            ShortString::from(self.dead().as_str()),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("dead queue declare");
        let _ = ch.close(200, "ok".into()).await;
    }

    /// Deletes the four queues and `X.dead` (the exchanges go with [`Rabbit::cleanup`]).
    pub async fn cleanup(&self, rabbit: &Rabbit) {
        let ch = rabbit.channel().await;
        for q in [
            &self.queue,
            &self.dlr,
            &self.retry,
            &self.retry_dlr,
            &self.dead(),
        ] {
            let _ = ch
                .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch.close(200, "ok".into()).await;
    }
}
