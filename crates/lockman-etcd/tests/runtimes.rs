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
fn connect(server: &EtcdServer) -> impl runtimes::Connect {
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
fn works_from_a_thread_without_a_runtime() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::works_from_a_thread_without_a_runtime(connect(&server));
}

/// Blocked past the 2 s lease.
#[test]
fn the_lease_is_kept_alive_while_the_callers_runtime_is_blocked() {
    let Some(server) = EtcdServer::start() else { return };
    runtimes::the_lease_is_kept_while_the_callers_runtime_is_blocked(connect(&server), Duration::from_millis(3500));
}
