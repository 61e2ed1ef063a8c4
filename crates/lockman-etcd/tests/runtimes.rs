//! An etcd manager is not tied to the runtime that connected it: it works
//! from another runtime while the first is idle or gone, and from threads
//! with no runtime (the blocking API); its etcd lease is kept alive while
//! the holder's runtime is blocked (the testkit's `runtimes` checks).

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{LockBackend, LockManager};
use lockman_etcd::{EtcdBackend, EtcdOptions};
use lockman_testkit::etcd_server::EtcdServer;
use lockman_testkit::runtimes;

/// Connects managers with a 2 s lease to `server`.
fn connect(server: &EtcdServer) -> impl runtimes::Connect + Send + use<> {
    let options = EtcdOptions::new([server.endpoint()]).default_lease(Duration::from_secs(2));
    move || {
        let options = options.clone();
        Box::pin(async move {
            Arc::new(EtcdBackend::connect(options).await.expect("connect").into_manager()) as Arc<dyn LockManager>
        })
    }
}

#[test]
fn works_from_another_runtime_while_the_connecting_one_is_idle() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::works_from_another_runtime_while_the_connecting_one_is_idle(connect(&server));
}

#[test]
fn works_after_the_connecting_runtime_is_dropped() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::works_after_the_connecting_runtime_is_dropped(connect(&server));
}

#[test]
fn works_under_handle_block_on_from_a_thread_that_does_not_drive_the_runtime() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::works_under_handle_block_on_from_a_thread_that_does_not_drive_the_runtime(connect(&server));
}

#[test]
fn works_under_handle_block_on_on_the_thread_that_drove_the_runtime() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::works_under_handle_block_on_on_the_thread_that_drove_the_runtime(connect(&server));
}

#[test]
fn works_from_an_executor_blocking_inside_the_runtime() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::works_from_an_executor_blocking_inside_the_runtime(connect(&server));
}

#[test]
fn works_from_a_thread_without_a_runtime() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::works_from_a_thread_without_a_runtime(connect(&server));
}

/// The key of a guard whose release task died with its runtime is deleted
/// (the manager's etcd lease alone would keep it while the manager lives).
#[test]
fn a_guard_dropped_as_its_runtime_shuts_down_is_released() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::a_guard_dropped_as_its_runtime_shuts_down_is_released(connect(&server), Duration::from_secs(2));
}

/// A grant whose release never runs — here a blocking release refused
/// inside a runtime, as a `release()` future dropped before it reached etcd
/// would be — still has its key deleted once the grant is dropped. Without
/// that, the key lives as long as the manager's etcd lease: the manager's
/// whole life.
#[test]
fn a_grant_dropped_unreleased_still_frees_the_lock() {
    let Some(server) = EtcdServer::start() else { return };
    let runtime = runtimes::current_thread();
    let locks = runtimes::connect_on(&runtime, &connect(&server));
    let blocking = lockman_core::blocking::BlockingLockManager::new(locks.clone());
    let guard = blocking.acquire("unreleased", lockman_core::AcquireOptions::new()).expect("acquire");
    runtime.block_on(async {
        guard.release().expect_err("a blocking release inside a runtime is refused, so it never runs");
        let again = lockman_core::AcquireOptions::new().timeout(Duration::from_secs(1));
        let guard = locks.acquire("unreleased", again).await.expect("the unreleased grant kept the lock");
        guard.release().await.expect("release");
    });
}

/// Blocked past the 2 s lease.
#[test]
fn the_lease_is_kept_alive_while_the_callers_runtime_is_blocked() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::the_lease_is_kept_while_the_callers_runtime_is_blocked(connect(&server), Duration::from_millis(3500));
}

/// Connected (and its etcd lease first kept alive) on a multi-thread
/// runtime that is then dropped: a lock taken afterwards from another
/// runtime is held past the manager's 2 s lease — its keep-alive and the
/// grant's watch do not die with the first runtime — and released.
#[test]
fn works_after_a_multi_thread_connecting_runtime_is_dropped() {
    let Some(server) = EtcdServer::start() else { return };
    let connecting = runtimes::multi_thread();
    let locks = runtimes::connect_on(&connecting, &connect(&server));
    runtimes::cycle_on(&connecting, &locks, "home-runtime");
    drop(connecting);
    let other = runtimes::current_thread();
    other.block_on(async {
        let guard = locks
            .acquire("home-runtime", lockman_core::AcquireOptions::new().timeout(Duration::from_secs(3)))
            .await
            .expect("acquire after the connecting runtime was dropped");
        // Past the 2 s lease: kept only if the keep-alive still runs.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(!guard.is_lost(), "the lock was lost: its etcd lease was not kept alive");
        guard.release().await.expect("release");
    });
    runtimes::cycle_on(&other, &locks, "home-runtime");
}
