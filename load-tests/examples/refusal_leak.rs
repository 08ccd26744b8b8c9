//! Whether a refused exclusive consumer costs its connection a channel number for good.
//!
//! One connection holds an exclusive consumer on a queue; another asks for it 2,500 times, each
//! on a fresh channel. With lapin 4.12.3 every refusal leaves its error attached to the channel
//! number, so once the 2,047 numbers have been used every new channel fails to open. The build
//! locks (`worker/src/broker/locks.rs`) budget for this.
//!
//! `cargo run --release -p bcw-load --example refusal_leak` against the local RabbitMQ.

use bcw_tests::harness::{AMQP_URL, Names};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let holder = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let other = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let queue = ShortString::from(Names::unique("refusal").queue);
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        no_ack: true,
        ..Default::default()
    };
    let channel = holder.create_channel().await?;
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _held = channel
        .basic_consume(
            queue.clone(),
            ShortString::from("holder"),
            exclusive,
            FieldTable::default(),
        )
        .await?;
    let (mut refused, mut unopened) = (0u32, 0u32);
    let mut first_unopened = None;
    for i in 0..2_500u32 {
        let Ok(channel) = other.create_channel().await else {
            unopened += 1;
            first_unopened.get_or_insert(i);
            continue;
        };
        let asked = channel
            .basic_consume(
                queue.clone(),
                ShortString::from(""),
                exclusive,
                FieldTable::default(),
            )
            .await;
        if asked.is_err() {
            refused += 1;
        }
    }
    println!(
        "{refused} refusals; {unopened} channels failed to open, the first after {} refusals",
        first_unopened.map_or("no".to_string(), |i| i.to_string())
    );
    Ok(())
}
