//! Faults against a private etcd: a holder process killed, the server
//! paused (`SIGSTOP`) while a lock is held and while one is requested.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, LockBackend, LockManager};
use lockman_etcd::{EtcdBackend, EtcdOptions};
use lockman_testkit::etcd_server::EtcdServer;
use lockman_testkit::processes::{HoldingChild, say_held_and_wait_for_stdin};

const CHILD_ENV: &str = "LOCKMAN_ETCD_HOLDER_CHILD";
const BOUND: Duration = Duration::from_secs(20);
/// The default lease of every manager here (and so its etcd lease's TTL).
const LEASE: Duration = Duration::from_secs(2);

async fn manager(endpoint: &str) -> Arc<dyn LockManager> {
    let options = EtcdOptions::new([endpoint]).default_lease(LEASE).response_timeout(Duration::from_secs(1));
    Arc::new(EtcdBackend::connect(options).await.expect("connect").into_manager())
}

async fn start() -> Option<EtcdServer> {
    tokio::task::spawn_blocking(EtcdServer::start).await.expect("start etcd")
}

#[test]
fn child() {
    let Ok(endpoint) = std::env::var(CHILD_ENV) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let locks = manager(&endpoint).await;
        let guard = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("child acquire");
        say_held_and_wait_for_stdin(guard.fencing_token());
        guard.release().await.expect("child release");
    });
    std::process::exit(0);
}

/// A holder killed with SIGKILL keeps nobody waiting longer than its
/// manager's etcd lease: the waiter gets the lock, with a higher token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_process_frees_the_lock_within_its_lease() {
    let Some(server) = start().await else { return };
    let child = HoldingChild::spawn("child", CHILD_ENV, &server.endpoint(), BOUND);
    let child_token: u64 = child.token().parse().expect("a token");
    let locks = manager(&server.endpoint()).await;
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "the child holds it");
    drop(child); // SIGKILL
    let killed = tokio::time::Instant::now();
    let guard = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("the lock never came free");
    let waited = killed.elapsed();
    // etcd checks lease expiry every 500 ms, and may round a lease up.
    assert!(waited < LEASE + Duration::from_secs(2), "a killed holder kept the lock {waited:?}");
    assert!(guard.fencing_token().get() > child_token);
    guard.release().await.expect("release");
}

/// With the server paused past the lease, the holder is told it lost the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_lock_with_server_paused_past_the_lease_is_lost() {
    let Some(server) = start().await else { return };
    let locks = manager(&server.endpoint()).await;
    let guard = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    server.pause();
    let reason = tokio::time::timeout(LEASE * 3, guard.lost()).await;
    server.resume();
    let reason = reason.expect("the holder was never told its lease ran out");
    assert!(guard.is_lost(), "{reason}");
    assert!(guard.release().await.expect_err("released a lost lock").is_lost());
}

/// With the server paused, `acquire` fails with a `Backend` error within
/// the caller's timeout — also for a manager's first lock (no etcd lease yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_gives_backend_error_within_the_timeout() {
    let Some(server) = start().await else { return };
    let warm = manager(&server.endpoint()).await;
    warm.acquire("warm", AcquireOptions::new()).await.expect("acquire").release().await.expect("release");
    let fresh = manager(&server.endpoint()).await;
    server.pause();
    for locks in [&warm, &fresh] {
        let started = tokio::time::Instant::now();
        let timeout = Duration::from_millis(300);
        let outcome = locks.acquire("r", AcquireOptions::new().timeout(timeout)).await;
        let took = started.elapsed();
        let err = outcome.expect_err("granted while the server was paused");
        assert!(matches!(err, lockman_core::LockError::Backend { .. }), "{err}");
        assert!(took < timeout + Duration::from_millis(200), "took {took:?}");
    }
    server.resume();
}
