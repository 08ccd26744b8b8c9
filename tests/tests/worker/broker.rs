//! The broker connection as the worker's transport: what it promises beyond lapin's.

use buildcluster_worker::broker::Connection;
use lapin::ConnectionProperties;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

use bcw_tests::harness::rabbit::AMQP_URL;

/// Channels whose owners let go of them (a session's parts stopped by cancellation, a pool
/// closed) are closed by the connection before itself. lapin would close each from a task of
/// its own, and such a task meeting the closing connection fails it: the broker sees no clean
/// close, and a `channel.close-ok` still due is an UNEXPECTED-FRAME hard error at ERROR.
#[tokio::test]
async fn a_connection_closes_the_channels_its_owners_dropped_before_itself() {
    for round in 0..20 {
        let raw = lapin::Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (guest/guest)");
        let connection = Connection::new(raw);
        let mut dropped = Vec::new();
        for i in 0..8 {
            let channel = connection.create_channel().await.expect("channel");
            // Some with a consumer: its cancel is another path to lapin's own close.
            let consumer = if i % 2 == 0 {
                let no_ack = BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                };
                let queue = "amq.rabbitmq.reply-to".into();
                let consume =
                    channel.basic_consume(queue, "".into(), no_ack, FieldTable::default());
                Some(consume.await.expect("consume"))
            } else {
                None
            };
            dropped.push((channel, consumer));
        }
        drop(dropped);
        let closed = connection.close("test").await;
        assert!(closed.is_ok(), "round {round}: {closed:?}");
    }
}
