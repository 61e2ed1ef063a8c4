//! A Redis manager is not tied to the runtime that connected it: it works
//! from another runtime while the first is idle or gone, and from threads
//! with no runtime (the blocking API).

use std::sync::Arc;
use std::time::Duration;

use lockman_core::blocking::BlockingLockManager;
use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;
use lockman_testkit::relay::{Direction, TcpRelay};

fn connect_on(runtime: &tokio::runtime::Runtime, server: &RedisServer) -> Arc<dyn LockManager> {
    let options = RedisOptions::new(server.url()).response_timeout(Duration::from_secs(2));
    runtime.block_on(async {
        Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager()) as Arc<dyn LockManager>
    })
}

fn cycle_on(runtime: &tokio::runtime::Runtime, locks: &Arc<dyn LockManager>, resource: &str) {
    runtime.block_on(async {
        let options = AcquireOptions::new().timeout(Duration::from_secs(3));
        let guard = tokio::time::timeout(Duration::from_secs(5), locks.acquire(resource, options))
            .await
            .expect("acquire hung")
            .expect("acquire from another runtime");
        guard.release().await.expect("release from another runtime");
    });
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Connected on a current-thread runtime that then sits idle (nobody
/// drives it), used from another runtime.
#[test]
fn works_from_another_runtime_while_the_connecting_one_is_idle() {
    let Some(server) = RedisServer::start() else { return };
    let connecting = current_thread();
    let locks = connect_on(&connecting, &server);
    let other = current_thread();
    cycle_on(&other, &locks, "idle-connector");
    // A waiter woken by a release published while the connecting runtime idles.
    other.block_on(async {
        let first = locks.acquire("idle-connector", AcquireOptions::new()).await.expect("first");
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                locks.acquire("idle-connector", AcquireOptions::new().timeout(Duration::from_secs(3))).await
            })
        };
        tokio::task::yield_now().await;
        first.release().await.expect("release");
        let second = waiter.await.expect("join").expect("the waiter is woken");
        second.release().await.expect("release");
    });
    drop(connecting);
}

/// Connected on a runtime that is then dropped.
#[test]
fn works_after_the_connecting_runtime_is_dropped() {
    let Some(server) = RedisServer::start() else { return };
    let connecting = current_thread();
    let locks = connect_on(&connecting, &server);
    drop(connecting);
    cycle_on(&current_thread(), &locks, "dropped-connector");
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

/// Connected on a multi-thread runtime (the connection lives there) that is
/// then dropped: the next commands reconnect on lockman's background runtime
/// instead of failing with "broken pipe".
#[test]
fn works_after_a_multi_thread_connecting_runtime_is_dropped() {
    let Some(server) = RedisServer::start() else { return };
    let connecting = multi_thread();
    let locks = connect_on(&connecting, &server);
    cycle_on(&connecting, &locks, "home-runtime");
    drop(connecting);
    let other = current_thread();
    cycle_on(&other, &locks, "home-runtime");
    cycle_on(&other, &locks, "home-runtime");
    drop(other);
    // Nor is the new home tied to the runtime that happened to reconnect.
    let blocking = BlockingLockManager::new(locks);
    let guard =
        blocking.acquire("home-runtime", AcquireOptions::new().timeout(Duration::from_secs(3))).expect("acquire");
    guard.release().expect("release");
}

/// Connected on a runtime that is then dropped, used through the blocking API.
#[test]
fn works_from_a_thread_without_a_runtime() {
    let Some(server) = RedisServer::start() else { return };
    let connecting = current_thread();
    let locks = connect_on(&connecting, &server);
    drop(connecting);
    let blocking = BlockingLockManager::new(locks);
    let guard = blocking.acquire("no-runtime", AcquireOptions::new().timeout(Duration::from_secs(3))).expect("acquire");
    guard.release().expect("release");
}

/// `connect` returns once the release subscriber is subscribed, so a waiter
/// that starts at once cannot miss the first release — even on a slow link
/// (every packet to Redis delayed), where the subscription lags the
/// command connection.
#[test]
fn connect_returns_once_releases_are_heard() {
    let Some(server) = RedisServer::start() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    runtime.block_on(async {
        let relay = TcpRelay::start(([127, 0, 0, 1], server.port()).into()).await.expect("relay");
        relay.set_delay(Direction::ToServer, Duration::from_millis(150));
        let options = RedisOptions::new(format!("redis://{}/0", relay.addr()))
            .connect_timeout(Duration::from_secs(3))
            .response_timeout(Duration::from_secs(3));
        let _locks = RedisBackend::connect(options).await.expect("connect").into_manager();
        let patterns = server.command(&["PUBSUB", "NUMPAT"]).expect("PUBSUB NUMPAT");
        assert_eq!(patterns.trim(), "1", "connect returned before its release subscription was in place");
    });
}

/// A guard taken on a current-thread runtime keeps its lease while that
/// runtime is stuck in synchronous work inside the critical section for
/// longer than the lease: renewal does not depend on the caller's runtime.
#[test]
fn the_lease_is_renewed_while_the_callers_runtime_is_blocked() {
    let Some(server) = RedisServer::start() else { return };
    let runtime = current_thread();
    let options = RedisOptions::new(server.url())
        .default_lease(Duration::from_millis(600))
        .response_timeout(Duration::from_secs(2));
    let locks: Arc<dyn LockManager> =
        runtime.block_on(async { Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager()) });
    runtime.block_on(async {
        let guard = locks.acquire("blocked-holder", AcquireOptions::new()).await.expect("acquire");
        // Synchronous work in the critical section, blocking this runtime's only thread.
        std::thread::sleep(Duration::from_millis(1800));
        assert!(!guard.is_lost(), "the lease ran out while the holder's runtime was blocked");
        let other = locks.try_acquire("blocked-holder", AcquireOptions::new()).await.expect("try_acquire");
        assert!(other.is_none(), "another holder got the lock while the first still held it");
        guard.release().await.expect("release");
    });
}
