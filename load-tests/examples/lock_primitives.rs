//! What one build lock costs the broker, old design against new, back to back:
//! an exclusive queue per build (declare + delete) against the worker's own [`Locks`]
//! (an exclusive consumer on one of the shard queues, consume + cancel).
//!
//! `cargo run --release -p bcw-load --example lock_primitives [tasks] [locks-per-task]`
//! against the local RabbitMQ; prints locks per second for each.

use std::sync::Arc;

use bcw_tests::harness::{AMQP_URL, Names, Rabbit};
use buildcluster_worker::broker::locks::{self, Locks};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = args.next().map_or(Ok(64), |s| s.parse())?;
    let per_task: u64 = args.next().map_or(Ok(200), |s| s.parse())?;
    let conn = Arc::new(Connection::connect(AMQP_URL, ConnectionProperties::default()).await?);
    let names = Names::unique("lockprim");
    let total = tasks * per_task;

    // Old: an exclusive queue per build, declared and deleted.
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let conn = conn.clone();
        let prefix = format!("{}.lock.", names.queue);
        handles.push(tokio::spawn(async move {
            let channel = conn.create_channel().await?;
            for i in 0..per_task {
                let name = ShortString::from(format!("{prefix}{}", t * per_task + i));
                let exclusive = QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(name.clone(), exclusive, FieldTable::default())
                    .await?;
                channel
                    .queue_delete(name, QueueDeleteOptions::default())
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let old = total as f64 / started.elapsed().as_secs_f64();

    // New: the worker's locks. The first pass declares every shard queue on first use, as a
    // fresh deployment does; the second is the steady state.
    let (locks, control) = Locks::new(&names.queue);
    control.connected(locks::lock_pool(conn.clone(), u16::try_from(tasks)?));
    let mut rates = Vec::new();
    for _pass in 0..2 {
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let locks = locks.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per_task {
                    locks.acquire(t * per_task + i).await?.release().await;
                }
                anyhow::Ok(())
            }));
        }
        for h in handles {
            h.await??;
        }
        rates.push(total as f64 / started.elapsed().as_secs_f64());
    }
    let (cold, new) = (rates[0], rates[1]);

    println!("{total} locks by {tasks} tasks on one connection");
    println!("exclusive queue per build (declare + delete): {old:>8.0} locks/s");
    println!(
        "exclusive consumer on a shard queue, cold:    {cold:>8.0} locks/s (declares every shard)"
    );
    println!(
        "exclusive consumer on a shard queue:          {new:>8.0} locks/s ({:.1} x)",
        new / old
    );
    Rabbit::connect().await.cleanup(&names).await;
    Ok(())
}
