//! An etcd manager is not tied to the runtime that connected it: it works
//! from another runtime while the first is idle or gone, and from threads
//! with no runtime (the blocking API).

use std::sync::Arc;
use std::time::Duration;

use lockman_core::blocking::BlockingLockManager;
use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_etcd::{EtcdBackend, EtcdOptions};
use lockman_testkit::etcd_server::EtcdServer;

fn connect_on(runtime: &tokio::runtime::Runtime, server: &EtcdServer) -> Arc<dyn LockManager> {
    let options = EtcdOptions::new([server.endpoint()]).default_lease(Duration::from_secs(2));
    runtime.block_on(async {
        Arc::new(EtcdBackend::connect(options).await.expect("connect").into_manager()) as Arc<dyn LockManager>
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

/// Connected on a current-thread runtime that then sits idle, used from another.
#[test]
fn works_from_another_runtime_while_the_connecting_one_is_idle() {
    let Some(server) = EtcdServer::start() else { return };
    let connecting = current_thread();
    let locks = connect_on(&connecting, &server);
    let other = current_thread();
    cycle_on(&other, &locks, "idle-connector");
    // A waiter on the other runtime is woken when the holder releases.
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
    let Some(server) = EtcdServer::start() else { return };
    let connecting = current_thread();
    let locks = connect_on(&connecting, &server);
    drop(connecting);
    cycle_on(&current_thread(), &locks, "dropped-connector");
}

/// Connected on a runtime that is then dropped, used through the blocking API.
#[test]
fn works_from_a_thread_without_a_runtime() {
    let Some(server) = EtcdServer::start() else { return };
    let connecting = current_thread();
    let locks = connect_on(&connecting, &server);
    drop(connecting);
    let blocking = BlockingLockManager::new(locks);
    let guard = blocking.acquire("no-runtime", AcquireOptions::new().timeout(Duration::from_secs(3))).expect("acquire");
    guard.release().expect("release");
}

/// A guard taken on a current-thread runtime keeps its etcd lease while that
/// runtime is stuck in synchronous work for longer than the lease: the
/// keep-alive does not depend on the caller's runtime.
#[test]
fn the_lease_is_kept_alive_while_the_callers_runtime_is_blocked() {
    let Some(server) = EtcdServer::start() else { return };
    let runtime = current_thread();
    let locks = connect_on(&runtime, &server);
    runtime.block_on(async {
        let guard = locks.acquire("blocked-holder", AcquireOptions::new()).await.expect("acquire");
        // Synchronous work in the critical section, past the 2 s lease.
        std::thread::sleep(Duration::from_millis(3500));
        assert!(!guard.is_lost(), "the lease ran out while the holder's runtime was blocked");
        let other = locks.try_acquire("blocked-holder", AcquireOptions::new()).await.expect("try_acquire");
        assert!(other.is_none(), "another holder got the lock while the first still held it");
        guard.release().await.expect("release");
    });
}
