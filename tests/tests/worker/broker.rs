//! The broker connection as the worker's transport: what it promises beyond lapin's.

use buildcluster_worker::broker::Connection;
use lapin::ConnectionProperties;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::sync::Arc;

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

/// Publishes from many tasks at once, on the runtime's two threads, each get their own confirm:
/// a `mandatory` publish nobody routes is told so, and only that one; a routed one and one that
/// asked for no route are told they are placed. (lapin alone hands a return to whichever
/// outstanding publish's confirm completes next, which failed this within a few hundred
/// publishes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_each_get_their_own_confirm() {
    use buildcluster_worker::broker::channels::confirm_channels;
    use buildcluster_worker::broker::{Outgoing, PublishError, Publisher};
    use futures::StreamExt;
    use lapin::options::BasicAckOptions;
    use std::collections::BTreeSet;

    const PUBLISHES: u32 = 3_000;
    // By index: 0 mandatory and unroutable, 1 mandatory and routed, 2 routed without the flag.
    let kind = |i: u32| i % 3;
    let queue = format!("bcw-test-pipelined-{}", std::process::id());
    let (connection, setup) = with_queues(vec![(&queue, FieldTable::default())]).await;
    let (publisher, control) = Publisher::new(None);
    control.connected(confirm_channels(connection.clone()));
    let publishes = (0..PUBLISHES).map(|i| {
        let (publisher, queue) = (publisher.clone(), queue.clone());
        tokio::spawn(async move {
            let unroutable = format!("{queue}-nobody");
            let body = i.to_string();
            let sent = publisher
                .publish(Outgoing {
                    exchange: "",
                    routing_key: if kind(i) == 0 { &unroutable } else { &queue },
                    body: body.as_bytes(),
                    properties: Default::default(),
                    mandatory: kind(i) != 2,
                })
                .await;
            (i, sent)
        })
    });
    let mut routed = BTreeSet::new();
    for joined in futures::future::join_all(publishes).await {
        let (i, sent) = joined.expect("the publish task");
        match (kind(i), sent) {
            (1 | 2, Ok(())) => routed.insert(i),
            (0, Err(PublishError::Unroutable(_))) => false,
            (k, other) => panic!("publish {i} of kind {k}: {other:?}"),
        };
    }
    let mut consumer = setup
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut arrived = BTreeSet::new();
    while arrived.len() < routed.len() {
        let delivery = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("delivery");
        let body = String::from_utf8(delivery.data.clone()).expect("utf-8");
        assert_eq!(
            *delivery.properties.delivery_mode(),
            Some(2),
            "publish {body} is persistent, whichever channel carried it"
        );
        arrived.insert(body.parse::<u32>().expect("an index"));
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    assert_eq!(
        arrived, routed,
        "the queue holds exactly the publishes told placed"
    );
    control.disconnected();
    connection.close("test").await.expect("close");
}

/// Publishes that need no route, from many tasks at once on the runtime's two threads, share the
/// connection's one pipelined channel and still each get their own confirm: every publish to a
/// queue that refuses everything (`x-overflow: reject-publish`, no room) is told it was nacked,
/// and every publish to a queue with room is told it was placed. A confirm given to the wrong
/// publish (tags and frames out of order on the channel) would fail either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_each_get_their_own_confirm() {
    use buildcluster_worker::broker::channels::confirm_channels;
    use buildcluster_worker::broker::{Outgoing, PublishError, Publisher};
    use lapin::types::AMQPValue;

    const PUBLISHES: u32 = 3_000;
    let open = format!("bcw-test-open-{}", std::process::id());
    let full = format!("bcw-test-full-{}", std::process::id());
    let mut refuses = FieldTable::default();
    refuses.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    refuses.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let (connection, setup) =
        with_queues(vec![(&open, FieldTable::default()), (&full, refuses)]).await;
    let (publisher, control) = Publisher::new(None);
    control.connected(confirm_channels(connection.clone()));
    let publishes = (0..PUBLISHES).map(|i| {
        let publisher = publisher.clone();
        let queue = if i % 2 == 0 {
            open.clone()
        } else {
            full.clone()
        };
        tokio::spawn(async move {
            let body = i.to_string();
            let sent = publisher
                .publish(Outgoing {
                    exchange: "",
                    routing_key: &queue,
                    body: body.as_bytes(),
                    properties: Default::default(),
                    mandatory: false,
                })
                .await;
            (i, sent)
        })
    });
    for joined in futures::future::join_all(publishes).await {
        let (i, sent) = joined.expect("the publish task");
        match (i % 2, sent) {
            (0, Ok(())) | (1, Err(PublishError::Nacked)) => {}
            (_, other) => panic!("publish {i} (to the full queue: {}): {other:?}", i % 2 == 1),
        }
    }
    assert_eq!(
        held(&setup, &open).await,
        PUBLISHES / 2,
        "every placed publish is there"
    );
    control.disconnected();
    connection.close("test").await.expect("close");
}

/// A connection, as the worker wraps it, and a channel on which `queues` were declared
/// exclusive to it (with their arguments).
async fn with_queues(queues: Vec<(&str, FieldTable)>) -> (Arc<Connection>, lapin::Channel) {
    let raw = lapin::Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (guest/guest)");
    let connection = Arc::new(Connection::new(raw));
    let setup = connection.create_channel().await.expect("channel");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    for (queue, args) in queues {
        setup
            .queue_declare(queue.into(), exclusive, args)
            .await
            .expect("queue");
    }
    (connection, setup)
}

/// A publish the broker refuses by closing the channel (to an exchange that does not exist)
/// fails alone: the next publish goes out on a channel opened again, and is confirmed.
#[tokio::test]
async fn a_publish_after_a_channel_error_goes_out_on_a_new_channel() {
    use buildcluster_worker::broker::channels::confirm_channels;
    use buildcluster_worker::broker::{Outgoing, PublishError, Publisher};

    let queue = format!("bcw-test-reopen-{}", std::process::id());
    let (connection, setup) = with_queues(vec![(&queue, FieldTable::default())]).await;
    let (publisher, control) = Publisher::new(None);
    control.connected(confirm_channels(connection.clone()));
    fn to<'a>(exchange: &'a str, routing_key: &'a str) -> Outgoing<'a> {
        Outgoing {
            exchange,
            routing_key,
            body: b"{}",
            properties: Default::default(),
            mandatory: false,
        }
    }
    let missing = publisher.publish(to("bcw-test-no-such-exchange", "")).await;
    assert!(
        matches!(missing, Err(PublishError::Broker(_))),
        "{missing:?}"
    );
    for _ in 0..3 {
        let placed = publisher.publish(to("", &queue)).await;
        assert!(placed.is_ok(), "{placed:?}");
    }
    assert_eq!(held(&setup, &queue).await, 3);
    control.disconnected();
    connection.close("test").await.expect("close");
}

/// Messages ready in `queue` (exclusive to `channel`'s connection).
async fn held(channel: &lapin::Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("passive declare");
    declared.message_count()
}
