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
use lockman_testkit::runtimes;

/// Connects managers to `server` with `lease` as their default lease.
fn connect(server: &RedisServer, lease: Duration) -> impl runtimes::Connect + Send + use<> {
    let options = RedisOptions::new(server.url()).default_lease(lease).response_timeout(Duration::from_secs(2));
    move || {
        let options = options.clone();
        Box::pin(async move {
            Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager()) as Arc<dyn LockManager>
        })
    }
}

#[test]
fn works_from_another_runtime_while_the_connecting_one_is_idle() {
    let Some(server) = RedisServer::start() else { return };
    runtimes::works_from_another_runtime_while_the_connecting_one_is_idle(connect(&server, Duration::from_secs(30)));
}

#[test]
fn works_after_the_connecting_runtime_is_dropped() {
    let Some(server) = RedisServer::start() else { return };
    runtimes::works_after_the_connecting_runtime_is_dropped(connect(&server, Duration::from_secs(30)));
}

/// Connected on a multi-thread runtime (the connection lives there) that is
/// then dropped: the next commands reconnect on lockman's background runtime
/// instead of failing with "broken pipe".
#[test]
fn works_after_a_multi_thread_connecting_runtime_is_dropped() {
    let Some(server) = RedisServer::start() else { return };
    let connecting = runtimes::multi_thread();
    let locks = runtimes::connect_on(&connecting, &connect(&server, Duration::from_secs(30)));
    runtimes::cycle_on(&connecting, &locks, "home-runtime");
    drop(connecting);
    let other = runtimes::current_thread();
    runtimes::cycle_on(&other, &locks, "home-runtime");
    runtimes::cycle_on(&other, &locks, "home-runtime");
    drop(other);
    // Nor is the new home tied to the runtime that happened to reconnect.
    let blocking = BlockingLockManager::new(locks);
    let guard =
        blocking.acquire("home-runtime", AcquireOptions::new().timeout(Duration::from_secs(3))).expect("acquire");
    guard.release().expect("release");
}

#[test]
fn works_under_handle_block_on_from_a_thread_that_does_not_drive_the_runtime() {
    let Some(server) = RedisServer::start() else { return };
    runtimes::works_under_handle_block_on_from_a_thread_that_does_not_drive_the_runtime(connect(
        &server,
        Duration::from_secs(30),
    ));
}

/// The Redis clients connected to `server`, by CLIENT LIST (the list's own
/// connection included).
fn clients(server: &RedisServer) -> usize {
    server.command(&["CLIENT", "LIST"]).expect("CLIENT LIST").lines().filter(|line| line.contains("addr=")).count()
}

/// Waits (at most 5 s) until `server` has `n` clients.
fn wait_for_clients(server: &RedisServer, n: usize, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while clients(server) != n {
        assert!(std::time::Instant::now() < deadline, "{why}: {} clients, expected {n}", clients(server));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Cycles on `runtime` until `server` has `n` clients (a runtime's own
/// connection is made by a task on it, which runs while it is driven);
/// at most 5 s.
fn cycle_until_clients(
    server: &RedisServer,
    runtime: &tokio::runtime::Runtime,
    locks: &Arc<dyn LockManager>,
    n: usize,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while clients(server) != n {
        assert!(std::time::Instant::now() < deadline, "{} clients after 5 s of cycles, expected {n}", clients(server));
        runtimes::cycle_on(runtime, locks, "own-connection");
    }
}

/// A current-thread runtime's commands go over a connection of its own,
/// homed on that runtime (no hop to lockman's background thread and back
/// per command): made while connecting on such a runtime, or by the first
/// commands of another; reused by every command; closed when the runtime
/// is dropped.
#[test]
fn a_current_thread_runtime_gets_its_own_connection_while_it_lives() {
    let Some(server) = RedisServer::start() else { return };
    let connecting = runtimes::current_thread();
    let locks = runtimes::connect_on(&connecting, &connect(&server, Duration::from_secs(30)));
    // The shared connection, the release subscriber, this runtime's own.
    let base = clients(&server);
    for _ in 0..5 {
        runtimes::cycle_on(&connecting, &locks, "own-connection");
    }
    assert_eq!(clients(&server), base, "the connecting runtime had no connection of its own, or opened another");
    let other = runtimes::current_thread();
    cycle_until_clients(&server, &other, &locks, base + 1);
    for _ in 0..5 {
        runtimes::cycle_on(&other, &locks, "own-connection");
    }
    assert_eq!(clients(&server), base + 1, "commands from one runtime opened more than one connection");
    drop(other);
    wait_for_clients(&server, base, "the dropped runtime's connection stayed open");
    drop(connecting);
    wait_for_clients(&server, base - 1, "the connecting runtime's own connection stayed open after it was dropped");
    // The manager still works, from a new runtime.
    runtimes::cycle_on(&runtimes::current_thread(), &locks, "own-connection");
}

#[test]
fn works_under_handle_block_on_on_the_thread_that_drove_the_runtime() {
    let Some(server) = RedisServer::start() else { return };
    runtimes::works_under_handle_block_on_on_the_thread_that_drove_the_runtime(connect(
        &server,
        Duration::from_secs(30),
    ));
}

#[test]
fn a_guard_dropped_as_its_runtime_shuts_down_is_released() {
    let Some(server) = RedisServer::start() else { return };
    let lease = Duration::from_millis(600);
    runtimes::a_guard_dropped_as_its_runtime_shuts_down_is_released(connect(&server, lease), lease);
}

#[test]
fn works_from_an_executor_blocking_inside_the_runtime() {
    let Some(server) = RedisServer::start() else { return };
    runtimes::works_from_an_executor_blocking_inside_the_runtime(connect(&server, Duration::from_secs(30)));
}

#[test]
fn works_from_a_thread_without_a_runtime() {
    let Some(server) = RedisServer::start() else { return };
    runtimes::works_from_a_thread_without_a_runtime(connect(&server, Duration::from_secs(30)));
}

/// Blocked for three 600 ms leases.
#[test]
fn the_lease_is_renewed_while_the_callers_runtime_is_blocked() {
    let Some(server) = RedisServer::start() else { return };
    let connect = connect(&server, Duration::from_millis(600));
    runtimes::the_lease_is_kept_while_the_callers_runtime_is_blocked(connect, Duration::from_millis(1800));
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
