//! Shared and permit grants across real OS processes on one private
//! `redis-server`: readers really overlap, writers overlap nobody, a
//! semaphore of 3 never has more than 3 holders across 8 processes (and does
//! reach 3) — the checks of [`lockman_testkit::mode_processes`] — and a
//! reader or waiter that is killed or paused does not pin the resource.
//!
//! The children are this test binary re-run by the testkit's `Proc`, acting
//! out their role in the `child` test.
#![cfg(unix)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockBackend, LockManager, LockMode};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::mode_processes::{BOUND, Proc};
use lockman_testkit::redis_server::RedisServer;

async fn manager(url: String, lease: Duration) -> Arc<dyn LockManager> {
    let options = RedisOptions::new(url).default_lease(lease);
    Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager())
}

lockman_testkit::mode_process_tests!(connect = manager, server = RedisServer::start(), url = url);

/// A reader killed with SIGKILL does not keep a writer out past its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_reader_does_not_pin_the_resource() {
    let Some(server) = RedisServer::start() else { return };
    let mut reader = Proc::hold(&server.url(), "r", LockMode::Shared, Duration::from_millis(600));
    reader.said("held", BOUND);
    let locks = manager(server.url(), Duration::from_secs(5)).await;
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "a writer beside a reader");
    reader.kill();
    let killed = Instant::now();
    let writer = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("the dead reader pins r");
    eprintln!("writer in {:?} after the reader (600 ms lease) was killed", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(2), "took {:?}", killed.elapsed());
    writer.release().await.expect("release");
}

/// A reader paused (SIGSTOP) past its lease stops counting: a writer gets
/// in, and once resumed the reader is told its grant was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_paused_past_its_lease_is_lost_and_does_not_pin() {
    let Some(server) = RedisServer::start() else { return };
    let mut reader = Proc::hold(&server.url(), "r", LockMode::Shared, Duration::from_millis(600));
    reader.said("held", BOUND);
    let locks = manager(server.url(), Duration::from_secs(5)).await;
    reader.pause();
    let paused = Instant::now();
    let writer = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("the paused reader pins r");
    assert!(paused.elapsed() < Duration::from_secs(2), "took {:?}", paused.elapsed());
    reader.resume();
    let reason = tokio::task::spawn_blocking(move || {
        let said = reader.said("lost", BOUND);
        reader.close_stdin();
        said
    })
    .await
    .expect("join");
    assert!(reason.contains("lease expired") || reason.contains("no longer"), "the reader was told: {reason}");
    let info = locks.state("r").await.expect("state").info().cloned().expect("held");
    assert_eq!((info.mode, info.fencing_token), (LockMode::Exclusive, writer.fencing_token()));
    writer.release().await.expect("the resumed reader touched the writer's grant");
}

/// A waiter killed while queued holds up the waiters behind it only until
/// its queue lease (3 s) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_waiter_is_skipped() {
    let Some(server) = RedisServer::start() else { return };
    let locks = manager(server.url(), Duration::from_secs(5)).await;
    let reader = locks.acquire("r", AcquireOptions::new().shared()).await.expect("reader");
    let mut waiter = Proc::wait(&server.url(), "r", LockMode::Exclusive);
    waiter.said("waiting", BOUND);
    server.until_queued("r", 1).await;
    waiter.kill();
    let other = manager(server.url(), Duration::from_secs(5)).await;
    let next = tokio::spawn(async move { other.acquire("r", AcquireOptions::new().timeout(BOUND)).await });
    server.until_queued("r", 2).await;
    let released = Instant::now();
    reader.release().await.expect("release");
    let writer = next.await.expect("join").expect("held up by a dead waiter");
    eprintln!("the waiter behind a dead one got in {:?} after the release", released.elapsed());
    assert!(released.elapsed() < Duration::from_secs(8), "took {:?}", released.elapsed());
    writer.release().await.expect("release");
    server.until_queued("r", 0).await;
}
