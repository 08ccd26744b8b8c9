//! Build locks on the real broker: one holder per build across connections, released on
//! release, on drop and with the holder's connection; builds sharing a lock queue take turns
//! within a replica instead of refusing each other.

use std::sync::Arc;
use std::time::Duration;

use bcw_tests::harness::{AMQP_URL, Names, Rabbit};
use buildcluster_worker::broker::locks::{self, LockError, Locks, LocksControl, shard};
use lapin::{Connection, ConnectionProperties};

async fn replica(queue: &str) -> (Locks, LocksControl, Arc<Connection>) {
    let conn = Arc::new(
        Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("broker"),
    );
    let (locks, control) = Locks::new(queue);
    control.connected(locks::lock_pool(conn.clone(), 8));
    (locks, control, conn)
}

#[tokio::test]
async fn a_build_lock_has_one_holder_across_replicas_until_released_dropped_or_disconnected() {
    let rabbit = Rabbit::connect().await;
    let names = Names::unique("locks");
    let (a, _a_control, a_conn) = replica(&names.queue).await;
    let (b, _b_control, _b_conn) = replica(&names.queue).await;

    // Held by A: B is refused, after its few quick tries.
    let held = a.acquire(7).await.expect("A takes the lock");
    assert!(matches!(b.acquire(7).await, Err(LockError::Held)));
    // Released: B gets it, and A is refused while B holds it.
    held.release().await;
    let by_b = b.acquire(7).await.expect("B takes the released lock");
    assert!(!by_b.contended(), "nobody held it when B asked");
    assert!(matches!(a.acquire(7).await, Err(LockError::Held)));
    // Dropped without release (a cancelled task): released in the background.
    drop(by_b);
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match a.acquire(7).await {
                Ok(lock) => return lock,
                Err(LockError::Held) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("a dropped lock is released");
    // B asks while A holds it and gets it once A releases: B knows it waited for another
    // replica (which may have launched the build meanwhile).
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.acquire(7).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    again.release().await;
    let after_wait = waiting.await.unwrap().expect("granted after A released");
    assert!(after_wait.contended(), "B was refused first");
    after_wait.release().await;
    let again = a.acquire(7).await.expect("A again");
    // The holder's connection dies (a crashed replica): the broker frees the lock.
    let _ = a_conn.close(200, "replica gone".into()).await;
    drop(again);
    let after_crash = b
        .acquire(7)
        .await
        .expect("the lock died with its connection");
    after_crash.release().await;

    rabbit.cleanup(&names).await;
}

#[tokio::test]
async fn builds_sharing_a_lock_queue_take_turns_within_a_replica() {
    let rabbit = Rabbit::connect().await;
    let names = Names::unique("locks-shard");
    let (a, _control, _conn) = replica(&names.queue).await;
    let first = 11;
    let second = (first + 1..).find(|&b| shard(b) == shard(first)).unwrap();
    assert_eq!(a.queue_of(first), a.queue_of(second));

    let held = a.acquire(first).await.expect("first build locked");
    // The second build of the shard waits for the first instead of being refused.
    let waiter = tokio::spawn({
        let a = a.clone();
        async move {
            a.acquire(second)
                .await
                .map(|l| (l, tokio::time::Instant::now()))
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiter.is_finished(),
        "the second build waited for its turn"
    );
    let released_at = tokio::time::Instant::now();
    held.release().await;
    let (lock, granted_at) = waiter.await.unwrap().expect("granted after the release");
    assert!(granted_at >= released_at);
    // A build of another shard is not held up by either.
    let other = (first + 1..).find(|&b| shard(b) != shard(first)).unwrap();
    a.acquire(other)
        .await
        .expect("another shard")
        .release()
        .await;
    lock.release().await;

    rabbit.cleanup(&names).await;
}
