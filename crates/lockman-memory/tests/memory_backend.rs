//! Behaviour specific to the in-process backend: bounded memory, eviction,
//! and use without any async runtime.

use std::sync::Arc;
use std::time::Duration;

use lockman_core::blocking::BlockingLockManager;
use lockman_core::{AcquireOptions, FlagOptions, LockEventKind, LockManager, StatusManager};
use lockman_memory::{MemoryLockManager, MemoryStatusManager};

#[tokio::test]
async fn a_million_distinct_names_leave_the_map_empty() {
    let locks = MemoryLockManager::default();
    let mut name = String::new();
    for i in 0..1_000_000u32 {
        name.clear();
        use std::fmt::Write;
        write!(name, "resource-{i}").expect("write to String");
        let guard = locks.acquire(&name, AcquireOptions::new()).await.expect("acquire");
        if i % 250_000 == 0 {
            assert_eq!(locks.backend().tracked_resources(), 1);
        }
        drop(guard);
    }
    assert_eq!(locks.backend().tracked_resources(), 0, "released resources stay in the map");
}

#[tokio::test]
async fn waiters_that_give_up_leave_nothing_behind() {
    let locks = Arc::new(MemoryLockManager::default());
    let holder = locks.acquire("r", AcquireOptions::new()).await.expect("acquire");
    let mut waiters = Vec::new();
    for _ in 0..100 {
        let locks = locks.clone();
        waiters.push(tokio::spawn(async move { locks.acquire("r", AcquireOptions::new()).await.map(drop) }));
    }
    for _ in 0..100 {
        let err = locks
            .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(1)))
            .await
            .expect_err("granted a held lock");
        assert!(err.is_timeout());
    }
    while locks.backend().waiting() < 100 {
        tokio::task::yield_now().await;
    }
    for waiter in &waiters {
        waiter.abort();
    }
    for waiter in waiters {
        let _ = waiter.await;
    }
    assert_eq!(locks.backend().waiting(), 0, "cancelled waiters stay queued");
    drop(holder);
    assert_eq!(locks.backend().tracked_resources(), 0);
}

#[tokio::test]
async fn an_evicted_holder_gets_exactly_one_lost_event() {
    let locks = MemoryLockManager::default();
    let mut events = locks.events();
    let sleeper = locks
        .acquire("r", AcquireOptions::new().lease(Duration::from_millis(30)).holder("sleeper"))
        .await
        .expect("acquire");
    let taker = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_secs(5)))
        .await
        .expect("the lease never expired");
    // Every later path that notices the loss must not report it again.
    assert!(sleeper.is_lost());
    assert!(sleeper.release().await.is_err());
    taker.release().await.expect("release");
    let mut lost = 0;
    while let Some(event) = events.try_recv() {
        if event.kind == LockEventKind::Lost {
            assert_eq!(event.holder.as_ref().map(|h| h.name()), Some("sleeper"));
            lost += 1;
        }
    }
    assert_eq!(lost, 1);
}

/// Plain threads, no runtime anywhere in the caller: acquire, contend, drop.
#[test]
fn works_without_any_async_runtime() {
    let locks = BlockingLockManager::new(Arc::new(MemoryLockManager::default()));
    let guard = locks.lock("r").expect("acquire");
    let other = locks.clone();
    let waited = std::thread::spawn(move || {
        other.acquire("r", AcquireOptions::new().timeout(Duration::from_millis(30))).map(drop)
    })
    .join()
    .expect("thread panicked");
    assert!(waited.expect_err("granted a held lock").is_timeout());
    drop(guard);
    let other = locks.clone();
    let again = std::thread::spawn(move || other.try_acquire("r", AcquireOptions::new()).map(|g| g.is_some()))
        .join()
        .expect("thread panicked");
    assert!(again.expect("try"), "a guard dropped outside a runtime did not release");
}

#[tokio::test]
async fn the_blocking_api_refuses_to_stall_a_runtime() {
    let locks = BlockingLockManager::new(Arc::new(MemoryLockManager::default()));
    let err = locks.lock("r").expect_err("blocked inside a runtime");
    assert!(err.to_string().contains("async runtime"), "{err}");
}

#[tokio::test]
async fn expired_flags_do_not_accumulate() {
    let status = MemoryStatusManager::default();
    for i in 0..10_000 {
        status.set(&format!("flag-{i}"), FlagOptions::new().ttl(Duration::from_nanos(1))).await.expect("set");
    }
    assert!(status.stored_flags() < 200, "{} expired flags kept", status.stored_flags());
    assert!(status.list().await.expect("list").is_empty());
}
