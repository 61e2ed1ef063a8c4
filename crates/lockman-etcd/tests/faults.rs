//! Faults against a private etcd: a holder process killed, the server
//! paused (`SIGSTOP`) while a lock is held, while one is requested and
//! while one is released, and the server down while keys should be deleted.

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

/// A release sent while the server is paused fails — and the lock is still
/// freed once the server answers again, although the holder's manager (and
/// so the etcd lease its key is bound to) lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_failing_while_the_server_is_paused_still_frees_the_lock() {
    let Some(server) = start().await else { return };
    let (holder, other) = (manager(&server.endpoint()).await, manager(&server.endpoint()).await);
    let guard = holder.acquire("r", AcquireOptions::new()).await.expect("acquire");
    let token = guard.fencing_token().get();
    server.pause();
    let released = guard.release().await;
    server.resume();
    let err = released.expect_err("released while the server was paused");
    assert!(matches!(err, lockman_core::LockError::Backend { .. }), "{err}");
    // Well within the holder manager's etcd lease, which it keeps alive.
    let next = other
        .acquire("r", AcquireOptions::new().timeout(LEASE))
        .await
        .expect("the key of the failed release kept the lock");
    assert!(next.fencing_token().get() > token);
    next.release().await.expect("release");
}

/// Keys that cannot be deleted while the server is down — the waiting key
/// of a waiter that gives up then, and the holder's key if its lease ends
/// meanwhile — are deleted once the server is back, so they do not block
/// later waiters while their managers (and so the etcd leases the keys are
/// bound to) live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_left_while_the_server_is_down_do_not_block_later_waiters() {
    let Some(mut server) = start().await else { return };
    let (holder, waiter, later) =
        (manager(&server.endpoint()).await, manager(&server.endpoint()).await, manager(&server.endpoint()).await);
    let guard = holder.acquire("r", AcquireOptions::new()).await.expect("acquire");
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire("r", AcquireOptions::new().timeout(Duration::from_millis(300))).await }
    });
    // Wait for the waiter's key itself (a raw read).
    let mut raw = etcd_client::Client::connect([server.endpoint()], None).await.expect("raw client");
    let queued = async {
        loop {
            let options = etcd_client::GetOptions::new().with_prefix().with_count_only();
            if raw.get("lockman/lock/r/", Some(options)).await.is_ok_and(|r| r.count() >= 2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(BOUND, queued).await.expect("the waiter never queued");
    tokio::task::block_in_place(|| server.kill());
    let gave_up = tokio::time::timeout(BOUND, waiting).await.expect("the waiter hung").expect("task");
    tokio::task::block_in_place(|| server.restart());
    assert!(gave_up.is_err(), "granted while the holder held it");
    // The outage may have outlasted the holder's lease: lost or released.
    if let Err(e) = guard.release().await {
        assert!(e.is_lost(), "{e}");
    }
    let next = later
        .acquire("r", AcquireOptions::new().timeout(LEASE))
        .await
        .expect("a key left while the server was down blocked a later waiter");
    next.release().await.expect("release");
    drop(waiter);
}

/// A grant's watch breaks when the server restarts; a force-release after
/// that still reaches the holder at once — not only at its lease's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_after_a_server_restart_reaches_the_holder() {
    let Some(mut server) = start().await else { return };
    let (holder, admin) = (manager(&server.endpoint()).await, manager(&server.endpoint()).await);
    // An explicit lease: nothing renews it, only the watch can tell.
    let lease = Duration::from_secs(15);
    let guard = holder.acquire("r", AcquireOptions::new().lease(lease)).await.expect("acquire");
    tokio::task::block_in_place(|| server.restart());
    let forced = tokio::time::timeout(BOUND, admin.force_release("r", "operator test")).await.expect("force hung");
    assert!(forced.expect("force_release").is_some(), "nothing held");
    let reason = tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the holder was not told of the force-release (its watch ended with the old server)");
    assert!(reason.to_string().contains("operator test"), "{reason}");
}

/// A lock request written but unanswered (its connection reset) is sent
/// again with the same key, so it keeps its place in the queue: a waiter
/// that queued after it is not served first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_sent_again_keeps_its_place_in_the_queue() {
    use lockman_testkit::relay::{Direction, TcpRelay};
    let Some(server) = start().await else { return };
    let relay = TcpRelay::start(([127, 0, 0, 1], server.port()).into()).await.expect("relay");
    let relayed = format!("http://127.0.0.1:{}", relay.port());
    let (holder, later) = (manager(&server.endpoint()).await, manager(&server.endpoint()).await);
    let waiter = manager(&relayed).await;
    waiter.acquire("warm", AcquireOptions::new()).await.expect("warm up").release().await.expect("release");
    let raw = etcd_client::Client::connect([server.endpoint()], None).await.expect("raw client");
    let keys = |count: i64| {
        let mut raw = raw.clone();
        async move {
            loop {
                let options = etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
                let response = raw.get("lockman/lock/r/", Some(options)).await.expect("read the queue");
                if response.count() >= count {
                    return response.kvs().iter().map(|kv| kv.create_revision()).collect::<Vec<_>>();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let guard = holder.acquire("r", AcquireOptions::new()).await.expect("acquire");
    // The waiter's request reaches etcd; its answer is held.
    relay.stall(Direction::ToClient);
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire("r", AcquireOptions::new().timeout(BOUND)).await }
    });
    let queued = tokio::time::timeout(BOUND, keys(2)).await.expect("the waiter's request never arrived");
    let later_waiting = tokio::spawn({
        let later = later.clone();
        async move { later.acquire("r", AcquireOptions::new().timeout(BOUND)).await }
    });
    tokio::time::timeout(BOUND, keys(3)).await.expect("the later waiter never queued");
    // The answer is lost with the connection: the waiter asks again.
    relay.cut();
    relay.resume(Direction::ToClient);
    guard.release().await.expect("release");
    let mut later_waiting = later_waiting;
    let served = tokio::time::timeout(BOUND, async {
        tokio::select! {
            first = waiting => first.expect("task").expect("waiter"),
            later = &mut later_waiting => panic!(
                "the later waiter was served first (token {:?}): the waiter lost its place",
                later.expect("task").map(|guard| guard.fencing_token())
            ),
        }
    });
    let first = served.await.expect("nobody was served");
    assert_eq!(first.fencing_token().get(), u64::try_from(queued[1]).expect("revision"), "the waiter lost its place");
    assert!(!later_waiting.is_finished(), "the later waiter was served while the first held the lock");
    let first_token = first.fencing_token();
    first.release().await.expect("release");
    let second = tokio::time::timeout(BOUND, later_waiting).await.expect("hung").expect("task").expect("later");
    assert!(second.fencing_token() > first_token);
    second.release().await.expect("release");
}
