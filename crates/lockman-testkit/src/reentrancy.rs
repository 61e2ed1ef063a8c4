//! Reentrancy: the same holder may re-enter; anonymous callers may not.

use std::time::Duration;

use lockman_core::blocking::BlockingLockManager;
use lockman_core::{AcquireOptions, LockState};

use crate::Harness;
use crate::exclusion::patient;

fn as_holder(holder: &str) -> AcquireOptions {
    patient().holder(holder)
}

/// A holder re-enters a lock it holds, at once.
pub async fn same_holder_reenters(h: &dyn Harness) {
    let locks = h.locks();
    let outer = locks.acquire("r", as_holder("job-1")).await.expect("acquire");
    let inner = locks
        .acquire("r", AcquireOptions::new().no_wait().holder("job-1"))
        .await
        .expect("the holder could not re-enter its own lock");
    assert_eq!(inner.info().hold_count, 2);
    inner.release().await.expect("release inner");
    outer.release().await.expect("release outer");
}

/// The lock stays held until the last reentrant guard is released.
pub async fn reentrant_release_needs_every_guard(h: &dyn Harness) {
    let locks = h.locks();
    let first = locks.acquire("r", as_holder("job-1")).await.expect("acquire");
    let second = locks.acquire("r", as_holder("job-1")).await.expect("re-enter");
    first.release().await.expect("release first");
    assert!(
        locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(),
        "released after the first of two guards"
    );
    match locks.state("r").await.expect("state") {
        LockState::Held(info) => assert_eq!(info.hold_count, 1),
        other => panic!("expected held once, got {other:?}"),
    }
    second.release().await.expect("release second");
    assert_eq!(locks.state("r").await.expect("state"), LockState::Available);
}

/// Async callers without a holder id do not re-enter.
pub async fn no_holder_is_not_reentrant(h: &dyn Harness) {
    let locks = h.locks();
    let _first = locks.acquire("r", patient()).await.expect("acquire");
    let err = locks
        .acquire("r", AcquireOptions::new().timeout(Duration::from_millis(30)))
        .await
        .expect_err("an anonymous caller re-entered");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
}

/// Two named holders exclude each other.
pub async fn different_holders_exclude(h: &dyn Harness) {
    let locks = h.locks();
    let _first = locks.acquire("r", as_holder("job-1")).await.expect("acquire");
    let other = locks.try_acquire("r", AcquireOptions::new().holder("job-2")).await.expect("try");
    assert!(other.is_none(), "a different holder got a held lock");
}

/// Blocking callers default to their thread as holder: a thread re-enters,
/// another thread is excluded.
pub async fn blocking_callers_reenter_per_thread(h: &dyn Harness) {
    let locks = BlockingLockManager::new(h.locks());
    let outcome = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let outer = locks.lock("r").expect("acquire");
            let inner =
                locks.acquire("r", AcquireOptions::new().no_wait()).expect("a thread could not re-enter its own lock");
            let elsewhere = {
                let locks = locks.clone();
                std::thread::spawn(move || locks.try_acquire("r", AcquireOptions::new()).map(|g| g.is_some()))
                    .join()
                    .expect("thread panicked")
            };
            drop(inner);
            outer.release().expect("release");
            elsewhere
        })
        .join()
        .expect("thread panicked")
    })
    .await
    .expect("join");
    assert!(!outcome.expect("try from another thread"), "another thread got a held lock");
}

/// Concurrent first acquisitions by one holder neither deadlock nor create
/// two grants: one grants, the others re-enter it.
pub async fn concurrent_first_acquisitions_by_one_holder(h: &dyn Harness) {
    let locks = h.locks();
    let attempts: Vec<_> = (0..4)
        .map(|_| {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire("r", as_holder("job-1")).await })
        })
        .collect();
    let mut guards = Vec::new();
    for attempt in attempts {
        guards.push(attempt.await.expect("task panicked").expect("acquire"));
    }
    let token = guards[0].fencing_token();
    assert!(guards.iter().all(|g| g.fencing_token() == token), "one holder got two grants");
    assert_eq!(guards[0].info().hold_count, 4);
    for guard in guards {
        guard.release().await.expect("release");
    }
    assert_eq!(locks.state("r").await.expect("state"), LockState::Available);
}
