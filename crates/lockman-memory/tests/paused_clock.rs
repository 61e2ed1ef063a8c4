//! Leases, flag TTLs and the times shown follow tokio's clock, so tests with
//! a paused clock run a 10 s lease out in no real time.

use std::time::Duration;

use lockman_core::{AcquireOptions, FlagOptions, LockError, LockManager, StatusManager};
use lockman_memory::{MemoryLockManager, MemoryStatusManager};

/// Real time, however far the paused clock moves.
fn real_time_since(start: std::time::Instant) -> Duration {
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_lease_runs_out_on_a_paused_clock_in_no_real_time() {
    let real = std::time::Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let locks = MemoryLockManager::default();
    let sleeper = locks.acquire("r", AcquireOptions::new().lease(Duration::from_secs(10))).await.expect("acquire");

    // Nobody else asks: the lease still runs out at its end, on the clock.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!sleeper.is_lost(), "lost before its lease ran out");
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sleeper.is_lost(), "a 10 s lease still held after 11 virtual seconds");

    // A waiter is handed the lock at the lease's end.
    let second = locks.acquire("r", AcquireOptions::new().lease(Duration::from_secs(10))).await.expect("acquire");
    let taker = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_secs(60)))
        .await
        .expect("the lease never ran out");
    assert!(second.is_lost());
    let waited = virtual_start.elapsed();
    assert!(waited >= Duration::from_secs(21) && waited < Duration::from_secs(22), "{waited:?} virtual");
    taker.release().await.expect("release");
    assert!(sleeper.release().await.is_err(), "a lost guard released cleanly");

    let real = real_time_since(real);
    assert!(real < Duration::from_millis(100), "21 virtual seconds took {real:?} of real time");
}

#[tokio::test(start_paused = true)]
async fn a_renewed_lease_is_kept_on_a_paused_clock() {
    let real = std::time::Instant::now();
    let locks = lockman_core::LockBackend::into_manager(lockman_memory::MemoryBackend::with_default_lease(
        Duration::from_secs(3),
    ));
    let guard = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!guard.is_lost(), "the watchdog did not renew on the paused clock");
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none());
    guard.release().await.expect("release");
    assert!(real.elapsed() < Duration::from_millis(100), "{:?} of real time", real.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_flag_ttl_runs_out_on_a_paused_clock() {
    let real = std::time::Instant::now();
    let status = MemoryStatusManager::default();
    status.set(".FCRunning", FlagOptions::new().ttl(Duration::from_secs(5))).await.expect("set");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let flag = status.get(".FCRunning").await.expect("get").expect("cleared before its TTL");
    let left = flag.expires_at.and_then(|at| at.duration_since(std::time::SystemTime::now()).ok());
    assert!(left.is_some_and(|left| left <= Duration::from_secs(1)), "shown to expire in {left:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!status.is_set(".FCRunning").await.expect("get"), "a 5 s TTL still set after 6 virtual seconds");
    assert!(status.list().await.expect("list").is_empty());
    assert!(real.elapsed() < Duration::from_millis(100), "{:?} of real time", real.elapsed());
}

#[tokio::test(start_paused = true)]
async fn times_in_a_timeout_follow_the_paused_clock() {
    let locks = MemoryLockManager::default();
    let _held = locks.acquire("r", AcquireOptions::new().holder("poller")).await.expect("acquire");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let err = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(50)))
        .await
        .expect_err("granted a held lock");
    let LockError::Timeout { holder: Some(holder), .. } = &err else {
        panic!("not a timeout naming the holder: {err}")
    };
    let held = holder.age();
    assert!(held >= Duration::from_millis(5050) && held < Duration::from_secs(6), "held for {held:?}: {err}");
}
