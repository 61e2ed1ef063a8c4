//! Plain exclusive locks are first come, first served across managers
//! (processes): a waiter that finds the lock busy joins the resource's queue
//! in Redis, so when the lock is released the longest waiter gets it —
//! whichever manager it is on — and not whoever hears the release first.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;

const BOUND: Duration = Duration::from_secs(5);
const MANAGERS: usize = 6;

async fn manager(server: &RedisServer) -> Arc<dyn LockManager> {
    Arc::new(RedisBackend::connect(RedisOptions::new(server.url())).await.expect("connect").into_manager())
}

/// Waiters on six managers, each queued after the one before, are granted
/// in that order — also the waiter on the releasing holder's own manager,
/// which hears the release first, waits for its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_several_managers_are_served_in_arrival_order() {
    let Some(server) = RedisServer::start() else { return };
    let mut managers = Vec::new();
    for _ in 0..MANAGERS {
        managers.push(manager(&server).await);
    }
    let holder = managers[0].acquire("fifo", AcquireOptions::new()).await.expect("acquire");
    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
    // The last waiter is on the holder's manager.
    let mut waiters = Vec::new();
    for (place, index) in (1..MANAGERS).chain([0]).enumerate() {
        let (locks, order_tx) = (managers[index].clone(), order_tx.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks.acquire("fifo", AcquireOptions::new().timeout(BOUND)).await.expect("acquire");
            order_tx.send(place).expect("send");
            guard.release().await.expect("release");
        }));
        server.until_queued("fifo", place + 1).await;
    }
    holder.release().await.expect("release");
    for waiter in waiters {
        tokio::time::timeout(BOUND, waiter).await.expect("a waiter hung").expect("join");
    }
    let order: Vec<usize> = std::iter::from_fn(|| order_rx.try_recv().ok()).collect();
    assert_eq!(order, (0..MANAGERS).collect::<Vec<_>>(), "waiters were not served in arrival order");
}

/// A waiter that times out has left the queue when its `acquire` returns
/// (not later, in the background): a process that exits on the timeout
/// must not hold back the next request for the rest of its queue lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_waiter_has_left_the_queue_when_acquire_returns() {
    let Some(server) = RedisServer::start() else { return };
    let (holder, waiter) = (manager(&server).await, manager(&server).await);
    let held = holder.acquire("busy", AcquireOptions::new()).await.expect("acquire");
    let timed_out = waiter.acquire("busy", AcquireOptions::new().timeout(Duration::from_millis(200))).await;
    assert!(matches!(timed_out, Err(lockman_core::LockError::Timeout { .. })), "{timed_out:?}");
    let queued = server.command(&["ZCARD", "lockman:{busy}:queue"]).expect("ZCARD");
    assert_eq!(queued, "0", "the timed-out waiter is still queued");
    held.release().await.expect("release");
    let next = holder.try_acquire("busy", AcquireOptions::new()).await.expect("try");
    assert!(next.is_some(), "a free lock was refused behind a waiter that gave up");
}
